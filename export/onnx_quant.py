"""Quantize / convert an exported fp32 decoder graph with ONNX Runtime's own tools.

- int8: ``onnxruntime.quantization.quantize_dynamic`` on the weight MatMuls only
  (``MatMulConstBOnly``: the activation x activation MatMuls of attention stay
  float — quantizing them costs accuracy and buys nothing at these sizes).
  Weights int8 per output channel, activations quantized per call
  (DynamicQuantizeLinear + MatMulInteger).
- int4: ``MatMulNBitsQuantizer`` (weight-only, ``block_size`` weights share a
  scale/zero point) -> ``MatMulNBits`` nodes; ``accuracy_level=4`` lets the
  CPU kernel compute with int8 activations, the fast path on x86/ARM.
- fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  inputs/outputs made fp16 too (the KV cache halves), for GPU execution
  providers. Rotary angles (Cos/Sin and what feeds them), the RMSNorm
  statistics and the softmax stay fp32: positions × frequencies over ~2048
  have no fp16 precision left.

    quantize_int8("fp32/model.onnx", "int8/model.onnx")
    quantize_int4("fp32/model.onnx", "int4/model.onnx", block_size=32)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx

from vnmini.errors import VnminiError


def save_proto(model: onnx.ModelProto, dst: Path, external_data: bool | None) -> Path:
    """Write ``model`` to ``dst``; weights go to ``<name>.data`` when ``external_data`` (None: when over 2 GB)."""
    from vnmini.export.onnx_export import EXTERNAL_DATA_THRESHOLD

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    use_ext = size > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    (dst.parent / (dst.name + ".data")).unlink(missing_ok=True)
    if use_ext:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
    return dst


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizers log advice and per-node chatter on the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True,
                  external_data: bool | None = None) -> Path:
    """Dynamic int8 quantization of the weight MatMuls (``quantize_dynamic``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    tmp = dst.parent / ".int8-scratch.onnx"
    try:
        with _quiet():
            quantize_dynamic(src, tmp, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             weight_type=QuantType.QInt8, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
        return save_proto(onnx.load(str(tmp), load_external_data=True), dst, external_data)
    finally:
        for f in dst.parent.glob(".int8-scratch.onnx*"):
            f.unlink()


def quantize_int4(src: str | Path, dst: str | Path, block_size: int = 32, symmetric: bool = False,
                  accuracy_level: int | None = 4, external_data: bool | None = None) -> Path:
    """Weight-only int4 (``MatMulNBits``), ``block_size`` weights per scale."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=True)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=symmetric,
                             accuracy_level=accuracy_level)
    with _quiet():
        q.process()
    out = q.model.model
    if not any(n.op_type == "MatMulNBits" for n in out.graph.node):
        raise VnminiError(f"{src}: no MatMul could be quantized to int4 (block size {block_size}); "
                          "try a smaller --block-size.")
    return save_proto(out, dst, external_data)


def _fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that must stay fp32: everything upstream of Cos/Sin (rotary angles)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    keep: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    while stack:
        n = stack.pop()
        if n.name in keep:
            continue
        keep.add(n.name)
        stack += [producer[i] for i in n.input if i in producer]
    return sorted(keep)


def convert_fp16(src: str | Path, dst: str | Path, external_data: bool | None = None) -> Path:
    """fp16 weights, activations, KV cache and logits (for CUDA/DirectML providers)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=True)
    # Unnamed nodes can't be blocked by name; name them first.
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    blocked = _fp32_nodes(model)
    out = convert_float_to_float16(model, keep_io_types=False, node_block_list=blocked,
                                   op_block_list=["ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax"],
                                   disable_shape_infer=True)
    return save_proto(out, dst, external_data)
