"""vnmini: Vietnamese text to a small chat model that runs offline on cheap hardware.

The public Python API (the CLI calls the same functions):

    import vnmini
    gen = vnmini.load("runs/quickstart/chat")         # checkpoint, .gguf or ONNX folder
    print(gen.complete("Điều 1.", max_new_tokens=30))
    vnmini.normalize("hoà bình")                       # -> "hòa bình"
"""

from __future__ import annotations

__version__ = "0.1.0"

from vnmini.errors import VnminiError  # noqa: E402
from vnmini.runtime import load  # noqa: E402
from vnmini.text import normalize  # noqa: E402

__all__ = ["__version__", "VnminiError", "load", "normalize"]
