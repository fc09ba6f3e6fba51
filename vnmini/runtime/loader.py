"""``vnmini.load(path)``: open any model file vnmini makes behind one interface.

- a checkpoint folder (``config.json`` + safetensors)  -> torch   (:class:`TorchGenerator`)
- a ``.gguf`` file                                     -> llama.cpp (llama-cpp-python)
- a folder with ``model.onnx``                         -> ONNX Runtime

All return a :class:`vnmini.runtime.generator.Generator` (``.logits``, ``.generate``,
``.chat``, ``.complete``).
"""

from __future__ import annotations

from pathlib import Path

from vnmini.errors import VnminiError
from vnmini.paths import path_kind
from vnmini.runtime.generator import Generator
from vnmini.runtime.torch_backend import TorchGenerator


def detect_backend(path: str | Path) -> str:
    """'torch', 'gguf' or 'onnx' for a model path (:func:`vnmini.paths.path_kind`); anything else is refused."""
    kind = path_kind(path)
    if kind == "missing":
        raise VnminiError(f"{path}: no such file or folder; pass a checkpoint folder, a .gguf file or an ONNX folder.")
    if kind in ("gguf", "onnx"):
        return kind
    if kind == "checkpoint":
        return "torch"
    if kind == "run":
        raise VnminiError(f"{path}: a training run folder; pass its checkpoint, e.g. {Path(path) / 'final'}.")
    if Path(path).is_file():
        raise VnminiError(f"{path}: not a model vnmini can open (expected a .gguf file, a checkpoint folder or "
                          "an ONNX folder).")
    raise VnminiError(f"{path}: holds neither config.json (checkpoint) nor model.onnx (ONNX export).")


def load(
    path: str | Path,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    dtype: str | None = None,
) -> Generator:
    """Open ``path`` and return a Generator; ``backend`` forces torch/gguf/onnx."""
    kind = backend or detect_backend(path)
    if threads:
        import torch

        # torch's only: inference runs no Numba kernel (the models' kernels are "torch" outside training), so
        # vnmini.kernels.set_threads would import Numba here for nothing; GGUF/ONNX backends take ``threads`` below.
        torch.set_num_threads(threads)
    if kind == "torch":
        from vnmini.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, dtype=dtype, device=device)
        return TorchGenerator(ckpt.model, ckpt.tokenizer, device=device)
    if kind == "gguf":
        from vnmini.runtime.gguf_backend import GGUFGenerator

        return GGUFGenerator(path, threads=threads)
    if kind == "onnx":
        from vnmini.runtime.onnx_backend import ONNXGenerator

        p = Path(path)
        return ONNXGenerator(p.parent if p.is_file() else p, threads=threads, device=device)
    raise VnminiError(f"--backend {kind!r} is unknown; choose torch, gguf or onnx.")
