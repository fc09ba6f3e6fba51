"""``vnmini.load(path)``: open any model file vnmini makes behind one interface.

- a checkpoint folder (``config.json`` + safetensors)  -> torch   (:class:`TorchGenerator`)
- a ``.gguf`` file                                     -> llama.cpp (llama-cpp-python)
- a folder with ``model.onnx``                         -> ONNX Runtime

All return a :class:`vnmini.generation.Generator` (``.logits``, ``.generate``,
``.chat``, ``.complete``).
"""

from __future__ import annotations

from pathlib import Path

from vnmini.errors import VnminiError
from vnmini.generation import Generator, TorchGenerator


def detect_backend(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise VnminiError(f"{path}: no such file or folder; pass a checkpoint folder, a .gguf file or an ONNX folder.")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        if path.suffix == ".onnx":
            return "onnx"
        raise VnminiError(f"{path}: not a model vnmini can open (expected a .gguf file, a checkpoint folder or an ONNX folder).")
    if (path / "model.onnx").is_file():
        return "onnx"
    if (path / "config.json").is_file():
        return "torch"
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

        torch.set_num_threads(threads)
    if kind == "torch":
        from vnmini.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, dtype=dtype, device=device)
        return TorchGenerator(ckpt.model, ckpt.tokenizer, device=device)
    if kind == "gguf":
        from vnmini.backend_gguf import GGUFGenerator

        return GGUFGenerator(path, threads=threads)
    if kind == "onnx":
        from vnmini.backend_onnx import ONNXGenerator

        p = Path(path)
        return ONNXGenerator(p.parent if p.is_file() else p, threads=threads, device=device)
    raise VnminiError(f"--backend {kind!r} is unknown; choose torch, gguf or onnx.")
