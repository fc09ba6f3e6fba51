"""``describe(path)``: a dict of what a checkpoint, GGUF, ONNX folder or shard set holds, and whether it is whole.

Used by ``vnmini info``. Each kind is recognized by its files; GGUF and ONNX
descriptions come from the export modules that own those formats. Integrity is
checked cheaply, from headers and file sizes only (no tensor or token data is
read): every safetensors file's header against its size
(:func:`vnmini.models.hf.check_safetensors`), every shard file's size against
the manifest (:func:`vnmini.data.shards.verify_shards`), GGUF tensor ranges
against the file size, ONNX external-data ranges against their data file. A
damaged file raises :class:`VnminiError` naming it; a whole one is reported
with ``"ok": True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.paths import path_kind


def _ok(d: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """``d`` with ``ok: True`` right after ``kind`` (what a reader looks for first), then ``facts`` at the end."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == "kind":
            out["ok"] = True
    out.setdefault("ok", True)
    return {**out, **facts}


def _describe_checkpoint(path: Path) -> dict[str, Any]:
    from vnmini.checkpoint import describe_checkpoint
    from vnmini.models.hf import check_safetensors, weight_files

    d = describe_checkpoint(path)
    # The weights the loader will read (index-aware), plus any other safetensors file lying there.
    files = sorted(set(weight_files(path)) | set(path.glob("*.safetensors")))
    tensors = sum(check_safetensors(f)["tensors"] for f in files)
    return _ok(d, weight_files=len(files), tensors=tensors)


def _describe_shards(path: Path) -> dict[str, Any]:
    from vnmini.data.shards import load_manifest, verify_shards

    m = load_manifest(path)
    splits = verify_shards(path)
    d = {"path": str(path), "kind": m.get("kind", "token shards"),
         **{k: v for k, v in m.items() if not isinstance(v, list | dict)}}
    for split, facts in splits.items():
        d[f"{split}_tokens"] = facts["tokens"]
        d[f"{split}_documents"] = facts["documents"]
        d[f"{split}_files"] = facts["files"]
    return _ok(d)


def describe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    kind = path_kind(path)
    if kind == "missing":
        raise VnminiError(f"{path}: no such file or folder.")
    if kind == "gguf":
        from vnmini.export.gguf_inspect import describe_gguf

        return _ok(describe_gguf(path))
    if kind == "onnx" and path.is_dir():
        from vnmini.export.onnx_inspect import describe_onnx

        return _ok(describe_onnx(path))
    if kind == "checkpoint":
        return _describe_checkpoint(path)
    if kind == "shards":
        return _describe_shards(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        # Another manifest (a teacher cache...): described as it says, without an integrity check.
        try:
            m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VnminiError(f"{path / 'manifest.json'}: invalid JSON ({e.msg}); re-run `vnmini data prepare`.") from e
        if not isinstance(m, dict):
            raise VnminiError(f"{path / 'manifest.json'}: not a JSON object; re-run `vnmini data prepare`.")
        return {"path": str(path), "kind": m.get("kind", "token shards"),
                **{k: v for k, v in m.items() if not isinstance(v, list | dict)}}
    raise VnminiError(f"{path}: not a checkpoint, .gguf, ONNX folder or shard folder.")
