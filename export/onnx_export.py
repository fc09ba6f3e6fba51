"""ONNX export: a vnmini checkpoint -> a self-contained ONNX Runtime folder with a KV cache.

One decoder graph serves prefill and decode. Its inputs and outputs carry the
names Optimum and ONNX Runtime GenAI use, so their loaders (and ours,
:class:`vnmini.runtime.onnx_backend.ONNXGenerator`) can drive it:

    input_ids [b, s] int64, attention_mask [b, p+s] int64, position_ids [b, s] int64,
    past_key_values.{i}.key|value [b, kv_heads, p, head_dim]
      -> logits [b, s, vocab], present.{i}.key|value [b, kv_heads, p+s, head_dim]

The first step feeds past tensors of length 0. The output folder also holds
``config.json``, ``generation_config.json``, the tokenizer files and
``onnx_export.json`` (what was exported, how), so it opens on its own. It has
what Optimum's ``ORTModelForCausalLM.from_pretrained(folder)`` looks for
(``model.onnx``, a llama ``config.json``, ``position_ids``, ``.key``/``.value``
past names, past shaped [b, kv_heads, 0, head_dim] on the first step) — read
from optimum-onnx 0.1.0's source; that release does not import next to
transformers 5.23, so it was not run here.

    from vnmini.export import to_onnx
    to_onnx("runs/tiny/final", "out/onnx-int8", quant="int8")     # + verify report
    vnmini export onnx runs/tiny/final -o out/onnx-int4 --quant int4 --block-size 32

Tracing: we use the TorchScript exporter (``dynamo=False``) with dynamic axes;
here it matched torch to ~1e-7 on the cached path where the dynamo exporter did
not. The wrapper always passes an attention mask and derives the past length
from the past tensors' shapes, so the traced graph is shape-generic (the
model's "causal"/None mask shortcuts depend on Python ints and are never hit).
Quantization is ONNX Runtime's own (:mod:`vnmini.export.onnx_quant`); parity
and quality are checked by :mod:`vnmini.export.onnx_verify`.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vnmini.atomic import atomic_dir, write_json
from vnmini.errors import VnminiError
from vnmini.export.result import ExportResult
from vnmini.outputs import check_output

EXPORT_META = "onnx_export.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Protobuf's hard limit is 2 GiB; stay clear of it (graph structure counts too).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DTYPES = ("fp32", "fp16")
QUANTS = ("none", "int8", "int4")
ENGINES = ("torch", "genai")
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "vnmini.json")


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names in Optimum's order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


class _ExplicitPastCache:
    """The model's cache protocol over explicit past tensors: concatenate, record presents.

    ``past_length`` is read from a tensor shape, so under tracing it is a graph
    value (Shape -> Gather), not a constant baked from the example inputs.
    """

    def __init__(self, past: list[torch.Tensor]) -> None:
        self.past = past
        self.present: list[torch.Tensor] = []
        self.past_length = past[0].shape[2]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_all = torch.cat([self.past[2 * layer_idx], k], dim=2)
        v_all = torch.cat([self.past[2 * layer_idx + 1], v], dim=2)
        self.present += [k_all, v_all]
        return k_all, v_all


class OnnxDecoder(nn.Module):
    """``forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``.

    Runs the model's own forward; only the mask is built here (shape-generic:
    causal, plus padding from ``attention_mask``), so nothing depends on Python
    ints at trace time.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if model.config.extra.get("sliding_window"):
            raise VnminiError("ONNX export of sliding-window attention is not supported; export a Llama-style model.")
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = _ExplicitPastCache(list(past))
        q_len = input_ids.shape[1]
        total = attention_mask.shape[1]  # = past + q_len
        # Query i sits at absolute slot (total - q_len + i); it sees slots <= itself that are not padding.
        q_pos = torch.arange(q_len, device=input_ids.device)[:, None] + (total - q_len)
        k_pos = torch.arange(total, device=input_ids.device)[None, :]
        mask = (k_pos <= q_pos)[None, None] & attention_mask[:, None, None, :].bool()
        # A fully padded query row would softmax over nothing (NaN); let it see itself, like build_mask.
        mask = mask | (k_pos == q_pos)[None, None]
        logits = self.model(input_ids, cache=cache, position_ids=position_ids, mask=mask)
        return (logits, *cache.present)


def example_inputs(cfg, batch: int = 2, seq: int = 3, past: int = 4, dtype=torch.float32, seed: int = 0):
    """Inputs for tracing (non-trivial past so every axis is exercised)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()
    kv = [torch.randn(batch, cfg.num_key_value_heads, past, cfg.head_dim, generator=g).to(dtype)
          for _ in range(2 * cfg.num_hidden_layers)]
    return (ids, mask, pos, *kv)


def export_graph(model: nn.Module, path: Path, opset: int = 17) -> Path:
    """Trace ``model`` (a :class:`LlamaForCausalLM`) to ``path``, in a folder of its own (big models
    spill weights into loose files beside it; :func:`save_model` gathers them)."""
    cfg = model.config
    names_in, names_out = io_names(cfg.num_hidden_layers)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    for n in names_in[3:]:
        axes[n] = {0: "batch_size", 2: "past_sequence_length"}
    for n in names_out[1:]:
        axes[n] = {0: "batch_size", 2: "past_sequence_length + sequence_length"}
    wrapper = OnnxDecoder(model.eval())
    dtype = next(model.parameters()).dtype
    args = example_inputs(cfg, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-int shape use; the parity check is what decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def save_model(src: Path, dst: Path, external_data: bool | None = None) -> Path:
    """(Re)write an ONNX file; weights go to ``<name>.data`` when ``external_data`` (None: when over 2 GB)."""
    import onnx

    from vnmini.export.onnx_quant import save_proto

    return save_proto(onnx.load(str(src), load_external_data=True), dst, external_data)


def _check_args(dtype: str, quant: str, block_size: int, engine: str) -> None:
    if dtype not in DTYPES:
        raise VnminiError(f"--dtype {dtype!r} is unknown; choose one of {', '.join(DTYPES)}.")
    if quant not in QUANTS:
        raise VnminiError(f"--quant {quant!r} is unknown; choose one of {', '.join(QUANTS)}.")
    if engine not in ENGINES:
        raise VnminiError(f"--engine {engine!r} is unknown; choose torch or genai.")
    if quant != "none" and dtype == "fp16":
        raise VnminiError("--quant int8/int4 start from fp32 weights; use --dtype fp32 with --quant.")
    if block_size < 16 or block_size & (block_size - 1):
        raise VnminiError(f"--block-size {block_size} must be a power of two >= 16 (e.g. 32, 64, 128).")


def to_onnx(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: str = "fp32",
    quant: str = "none",
    block_size: int = 32,
    verify: bool = True,
    force: bool = False,
    opset: int = 17,
    external_data: bool | None = None,
    engine: str = "torch",
    verify_text: str | Path | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to the folder ``out_dir``; returns an :class:`ExportResult`.

    ``dtype`` fp32|fp16 (fp16 is for GPU execution providers), ``quant``
    none|int8 (``quantize_dynamic``)|int4 (``MatMulNBitsQuantizer``, weight-only,
    ``block_size`` per block). ``external_data`` None = only when over 2 GB.
    ``verify`` writes ``verify.json``/``verify.md`` beside the model (parity
    for fp32, top-1/KL/bits-per-byte for the others; ``verify_text`` is the
    held-out text for bits per byte). ``engine="genai"`` runs ONNX Runtime
    GenAI's builder instead of our exporter (needs ``onnxruntime-genai``).
    """
    from vnmini.checkpoint import load_checkpoint

    _check_args(dtype, quant, block_size, engine)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.exists():
        raise VnminiError(f"{checkpoint}: no such checkpoint folder; "
                          "pass a folder with config.json and model.safetensors.")
    if not (checkpoint / "config.json").is_file():
        raise VnminiError(f"{checkpoint}: no config.json; pass a vnmini/Hugging Face Llama checkpoint folder.")
    check_output(out_dir, "onnx", force)
    if engine == "genai":
        return _to_onnx_genai(checkpoint, out_dir, dtype, quant, block_size, verify, verify_text)
    ckpt = load_checkpoint(checkpoint, dtype=torch.float32)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        model_path = tmp / MODEL_FILE
        raw = tmp / "fp32" / MODEL_FILE
        export_graph(ckpt.model, raw, opset=opset)
        from vnmini.export import onnx_quant

        if quant == "int8":
            onnx_quant.quantize_int8(raw, model_path, external_data=external_data)
        elif quant == "int4":
            onnx_quant.quantize_int4(raw, model_path, block_size=block_size, external_data=external_data)
        elif dtype == "fp16":
            onnx_quant.convert_fp16(raw, model_path, external_data=external_data)
        else:
            save_model(raw, model_path, external_data)
        shutil.rmtree(tmp / "fp32")
        for name in COPY_FILES:
            if (checkpoint / name).is_file():
                shutil.copyfile(checkpoint / name, tmp / name)
        meta: dict[str, Any] = {
            "format": "vnmini-onnx-decoder", "engine": "torch", "dtype": dtype, "quant": quant,
            "block_size": block_size if quant == "int4" else None, "opset": opset,
            "source": str(checkpoint.resolve()), "num_layers": ckpt.config.num_hidden_layers,
            "num_key_value_heads": ckpt.config.num_key_value_heads, "head_dim": ckpt.config.head_dim,
            "vocab_size": ckpt.config.vocab_size, "external_data": (tmp / DATA_FILE).exists(),
            "export_seconds": round(time.perf_counter() - t0, 2),
            "inputs": io_names(ckpt.config.num_hidden_layers)[0],
            "outputs": io_names(ckpt.config.num_hidden_layers)[1],
        }
        write_json(tmp / EXPORT_META, meta)
        report = None
        if verify:
            from vnmini.export.onnx_verify import verify_onnx, write_report

            report = verify_onnx(tmp, ckpt, text=verify_text)
            write_report(tmp, report)
            if not report["passed"]:
                raise VnminiError(f"{out_dir}: ONNX verification failed ({report['summary']}); nothing was written.")
    return onnx_result(out_dir, quant if quant != "none" else dtype, report)


def onnx_result(folder: Path, quant: str, report: dict[str, Any] | None) -> ExportResult:
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(MODEL_FILE))
    paths = [folder / "verify.md", folder / "verify.json"] if report is not None else []
    return ExportResult(path=folder, format="onnx", quant=quant, size_bytes=size, verify=report, report_paths=paths)


def _to_onnx_genai(checkpoint: Path, out_dir: Path, dtype: str, quant: str, block_size: int,
                   verify: bool, verify_text: str | Path | None) -> ExportResult:
    """ONNX Runtime GenAI's builder: fused GroupQueryAttention graph + genai_config.json."""
    import subprocess
    import sys

    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        raise VnminiError("--engine genai needs ONNX Runtime GenAI; "
                          "`pip install onnxruntime-genai` or use --engine torch.") from e
    precision = {"none": dtype, "int8": "int8", "int4": "int4"}[quant]
    with atomic_dir(out_dir) as tmp:
        cache = tmp / ".cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(tmp),
               "-p", precision, "-e", "cpu", "-c", str(cache), "--extra_options", f"int4_block_size={block_size}"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired as e:
            raise VnminiError(f"onnxruntime_genai builder on {checkpoint} ran over an hour; stopped it.") from e
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise VnminiError(f"onnxruntime_genai builder failed on {checkpoint}: {tail[0]}")
        shutil.rmtree(cache, ignore_errors=True)
        for name in COPY_FILES:
            if (checkpoint / name).is_file() and not (tmp / name).exists():
                shutil.copyfile(checkpoint / name, tmp / name)
        write_json(tmp / EXPORT_META, {"format": "onnxruntime-genai", "engine": "genai", "dtype": dtype,
                                       "quant": quant, "block_size": block_size if quant == "int4" else None,
                                       "source": str(checkpoint.resolve())})
        report = None
        if verify:  # our backend drives GenAI's graph too (same I/O names), so the same proof applies
            from vnmini.export.onnx_verify import verify_onnx, write_report

            report = verify_onnx(tmp, checkpoint, text=verify_text)
            write_report(tmp, report)
            if not report["passed"]:
                raise VnminiError(f"{out_dir}: ONNX verification failed ({report['summary']}); nothing was written.")
    return onnx_result(out_dir, quant if quant != "none" else dtype, report)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``onnx_export.json`` of an export folder ({} if absent, e.g. an Optimum folder)."""
    f = Path(folder) / EXPORT_META
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VnminiError(f"{f}: invalid JSON ({e.msg}); re-export with `vnmini export onnx --force`.") from e
