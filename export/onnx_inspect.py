"""``describe_onnx(folder)``: what an ONNX export folder holds, for ``vnmini info``.

Reads the graph's structure only (no weights loaded, no session built): inputs
and outputs with their symbolic shapes, the quantized op types present, layer
and KV-cache sizes, file sizes, the export metadata and the verification
summary when ``verify.json`` is there. Weights stored outside ``model.onnx``
are checked cheaply: every external tensor's ``offset + length`` must lie
within its data file, so a truncated ``model.onnx.data`` fails with one line.

    describe_onnx("out/onnx-int4")   # {"kind": "ONNX decoder", "quant": "int4", ...}
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError


def _shape(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_external_data(folder: Path, graph) -> int:
    """Check every initializer stored outside the graph file fits in its data file; returns their count."""
    sizes: dict[str, int] = {}
    n = 0
    for t in graph.initializer:
        if t.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        f = folder / loc
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts or not f.is_file():
            raise VnminiError(f"{folder}: tensor {t.name} is stored in {loc or '?'!r}, which is not a file in the "
                              "folder; re-export it.")  # fmt: skip
        size = sizes.setdefault(loc, f.stat().st_size)
        try:  # no recorded length: the reader takes the rest of the file, so only the offset must fit
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        except ValueError as e:
            raise VnminiError(f"{folder}: tensor {t.name} has a bad external-data offset/length; re-export it.") from e
        if end > size:
            raise VnminiError(f"{f}: truncated (tensor {t.name} ends at byte {end}, the file has {size}); "
                              "re-export the ONNX folder.")  # fmt: skip
        n += 1
    return n


def describe_onnx(folder: str | Path) -> dict[str, Any]:
    """A flat dict of what ``folder`` (with ``model.onnx``) holds."""
    import onnx

    from vnmini.export.onnx_export import read_meta

    folder = Path(folder)
    model_file = folder / "model.onnx"
    if not model_file.is_file():
        raise VnminiError(f"{folder}: no model.onnx; export one with `vnmini export onnx CKPT -o {folder}`.")
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise VnminiError(f"{model_file}: not a readable ONNX file ({type(e).__name__}); re-export it.") from e
    g = model.graph
    check_external_data(folder, g)
    elem = {v: k for k, v in onnx.TensorProto.DataType.items()}
    inputs = {i.name: i for i in g.input}
    past = [n for n in inputs if n.startswith("past_key_values.")]
    ops = Counter(n.op_type for n in g.node)
    quant_ops = {k: v for k, v in ops.items() if k in ("MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear",
                                                        "QLinearMatMul", "GroupQueryAttention")}
    files = [f for f in folder.iterdir() if f.is_file() and f.name.startswith("model.onnx")]
    meta = read_meta(folder)
    d: dict[str, Any] = {
        "path": str(folder),
        "kind": "ONNX decoder" + (" with KV cache" if past else " (no KV cache inputs)"),
        "engine": meta.get("engine", "unknown (not exported by vnmini)"),
        "dtype": meta.get("dtype")
        or (elem.get(inputs[past[0]].type.tensor_type.elem_type, "?").lower() if past else "?"),
        "quant": meta.get("quant", "?"),
        "block_size": meta.get("block_size"),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "layers": len(past) // 2,
        "kv_heads": _shape(inputs[past[0]])[1] if past else None,
        "head_dim": _shape(inputs[past[0]])[3] if past else None,
        "inputs": ", ".join([f"{n}{_shape(i)}" for n, i in inputs.items() if n not in past]
                            + ([f"past_key_values.{{0..{len(past) // 2 - 1}}}.key|value{_shape(inputs[past[0]])}"]
                               if past else [])),
        "outputs": ", ".join(o.name for o in g.output[:3])
        + (f", … ({len(g.output)} in all)" if len(g.output) > 3 else ""),
        "nodes": len(g.node),
        "quantized_ops": ", ".join(f"{k}×{v}" for k, v in sorted(quant_ops.items())) or "none",
        "initializer_params": sum(math.prod(t.dims) for t in g.initializer),
        "size_mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
        "external_data": any(f.name.endswith(".data") for f in files),
        "tokenizer": (folder / "tokenizer.json").is_file(),
        "config.json": (folder / "config.json").is_file(),
    }
    vf = folder / "verify.json"
    if vf.is_file():
        try:
            d["verify"] = json.loads(vf.read_text(encoding="utf-8")).get("summary", "?")
        except json.JSONDecodeError:
            d["verify"] = "verify.json unreadable"
    return {k: v for k, v in d.items() if v is not None}
