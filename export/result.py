"""What every exporter returns, and what ``verify_text`` means for all of them.

    res = to_gguf(ckpt, "m.gguf", quant="q4_0")     # or to_onnx(ckpt, "m-onnx", quant="int8")
    res.path, res.format, res.quant, res.size_bytes
    res.passed            # True/False from the verify report; None with verify=False
    res.report_paths      # [<report>.md, <report>.json]

``verify_text`` (both exporters): None = vnmini's bundled Vietnamese sample
(``vnmini/assets/vi_sample.txt``); a ``Path``, or a ``str`` naming an existing
file, is read as UTF-8; any other ``str`` is the text itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnmini.assets import SAMPLE_TEXT, asset_text
from vnmini.errors import VnminiError
from vnmini.paths import names_existing_path


@dataclass
class ExportResult:
    """What an exporter wrote (same shape for GGUF and ONNX)."""

    path: Path
    format: str                                  # "gguf" | "onnx"
    quant: str                                   # q8_0, q4_k_m, ... | none, int8, int4 (fp16 for ONNX fp16)
    size_bytes: int
    verify: dict[str, Any] | None = None         # the verification report (None with verify=False)
    report_paths: list[Path] = field(default_factory=list)
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGUF: GGML type name -> tensors
    fallbacks: list[str] = field(default_factory=list)          # GGUF: "blk.0.attn_q.weight: f16 (...)"

    @property
    def passed(self) -> bool | None:
        return None if self.verify is None else bool(self.verify.get("passed"))


def read_verify_text(text: str | os.PathLike | None) -> str:
    """The held-out text a verify report scores (see the module docstring)."""
    if text is None:
        return asset_text(SAMPLE_TEXT)
    as_path = names_existing_path(text) and (isinstance(text, os.PathLike) or Path(text).is_file())
    if not as_path:
        if not text.strip():
            raise VnminiError("--verify-text: the text is empty; pass a UTF-8 .txt file or some text.")
        return text
    p = Path(text)
    if not p.is_file():
        raise VnminiError(f"--verify-text {p}: no such file; pass a UTF-8 .txt file.")
    try:
        out = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VnminiError(f"--verify-text {p}: not UTF-8 text; convert it to UTF-8.") from e
    except OSError as e:
        raise VnminiError(f"--verify-text {p}: cannot be read ({e.strerror or e}).") from e
    if not out.strip():
        raise VnminiError(f"--verify-text {p}: the file is empty; pass held-out text.")
    return out
