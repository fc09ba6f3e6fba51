"""Exporting vnmini checkpoints for other runtimes (``vnmini.export``).

- :func:`to_gguf` — a llama.cpp GGUF (f32, f16, bf16, q8_0, q4_0 written
  directly; q4_k_m, q5_k_m, q6_k through llama.cpp's quantizer) with the
  tokenizer and chat template inside, verified against llama-cpp-python.
- :func:`to_onnx` — an ONNX decoder with KV cache (``onnx_export.py`` and friends).

Both return an :class:`ExportResult` (path, format, quant, size, verify report)
and read ``verify_text`` the same way (:mod:`vnmini.export.result`).

Names are resolved lazily (module ``__getattr__``) so that importing
``vnmini.export`` costs nothing and one missing optional backend never breaks
the others:

    from vnmini.export import to_gguf
    to_gguf("runs/quickstart/chat", "chat-q8_0.gguf", quant="q8_0")
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module (relative to vnmini.export) that defines it.
# Other export engines add their names here.
_LAZY: dict[str, str] = {
    "to_gguf": "gguf_writer",
    "GGUF_QUANTS": "gguf_writer",
    "ExportResult": "result",
    "read_verify_text": "result",
    "verify_gguf": "gguf_verify",
    "describe_gguf": "gguf_inspect",
    "to_onnx": "onnx_export",
    "verify_onnx": "onnx_verify",
    "describe_onnx": "onnx_inspect",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vnmini.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: __getattr__ runs once per name
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
