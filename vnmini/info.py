"""``describe(path)``: a dict of what a checkpoint, GGUF, ONNX folder or shard set holds.

Used by ``vnmini info``. Each kind is recognized by its files; GGUF and ONNX
descriptions come from the export modules that own those formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.paths import path_kind


def describe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    kind = path_kind(path)
    if kind == "missing":
        raise VnminiError(f"{path}: no such file or folder.")
    if kind == "gguf":
        from vnmini.export.gguf_inspect import describe_gguf

        return describe_gguf(path)
    if kind == "onnx" and path.is_dir():
        from vnmini.export.onnx_inspect import describe_onnx

        return describe_onnx(path)
    if kind == "checkpoint":
        from vnmini.checkpoint import describe_checkpoint

        return describe_checkpoint(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        try:
            m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VnminiError(f"{path / 'manifest.json'}: invalid JSON ({e.msg}); re-run `vnmini data prepare`.") from e
        return {"path": str(path), "kind": m.get("kind", "token shards"),
                **{k: v for k, v in m.items() if not isinstance(v, list | dict)}}
    raise VnminiError(f"{path}: not a checkpoint, .gguf, ONNX folder or shard folder.")
