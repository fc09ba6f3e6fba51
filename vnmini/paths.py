"""What kind of path is this: the one detector every verb uses to open, describe or
overwrite something.

    path_kind("runs/tiny")          # 'run'        (a training run folder)
    path_kind("runs/tiny/final")    # 'checkpoint' (config.json + weights)
    path_kind("m.gguf")             # 'gguf'
    path_kind("m-onnx")             # 'onnx'       (a folder with model.onnx)
    path_kind("shards")             # 'shards'     (manifest.json of vnmini-shards)
    path_kind("corpus")             # 'corpus'     (from `vnmini corpus fetch`); also 'teacher-cache',
                                    # 'tokenizer', 'bench', 'quickstart'
    path_kind("x.txt")              # 'file';  'folder', 'empty-folder', 'missing' otherwise

Kinds are recognized by their files (and a GGUF by its magic bytes), never by a
name alone, so ``--force`` can promise to replace only an output of the same kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

GGUF_MAGIC = b"GGUF"
SHARDS_FORMAT = "vnmini-shards/1"
CACHE_FORMAT = "vnmini-teacher-cache/1"

# what a training run folder holds (sequence-level distillation keeps its teacher-text shards in it)
RUN_MARKERS = ("metrics.jsonl", ".vnmini.lock", "final", "teacher_text_shards")

_DESCRIBE = {
    "gguf": "a GGUF file", "onnx": "an ONNX export folder", "checkpoint": "a checkpoint folder",
    "run": "a training run folder", "shards": "a token shard folder", "teacher-cache": "a teacher cache folder",
    "tokenizer": "a tokenizer folder", "corpus": "a corpus folder (`vnmini corpus fetch`)",
    "bench": "a bench results folder", "quickstart": "a quickstart run folder", "empty-folder": "an empty folder",
    "folder": "a folder", "file": "a file", "missing": "nothing",
}
KINDS = tuple(_DESCRIBE)  # every answer path_kind gives


def _manifest(folder: Path) -> dict:
    try:
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def path_kind(path: str | Path) -> str:
    """One of :data:`KINDS` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        if path.suffix == ".gguf" or _is_gguf(path):
            return "gguf"
        if path.suffix == ".onnx":
            return "onnx"
        return "file"
    if (path / "model.onnx").is_file():
        return "onnx"
    if (path / "config.json").is_file():
        return "checkpoint"
    if (path / "manifest.json").is_file():
        m = _manifest(path)
        if m.get("format") == SHARDS_FORMAT:
            return "shards"
        if m.get("format") == CACHE_FORMAT:
            return "teacher-cache"
        if "codes" in m and "heldout" in m:
            return "corpus"
    if (path / "stages.json").is_file():
        return "quickstart"
    if (path / "bench.json").is_file():
        return "bench"
    if any((path / m).exists() for m in RUN_MARKERS) or any(path.glob("step_*")):
        return "run"
    if (path / "tokenizer.json").is_file():
        return "tokenizer"
    try:
        next(path.iterdir())
    except StopIteration:
        return "empty-folder"
    return "folder"


def names_existing_path(value: str | os.PathLike) -> bool:
    """A PathLike, or a one-line string short enough to be a path that exists (else it is text itself)."""
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and "\n" not in value and len(value) < 4096 and os.path.exists(value)


def describe_kind(kind: str) -> str:
    """'a checkpoint folder', 'a GGUF file', ... for messages."""
    return _DESCRIBE.get(kind, kind)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def weights_fingerprint(path: str | Path) -> str | None:
    """A short hash of a model's weight files (names, sizes, mtimes): which weights something was made from.

    Reads no weights, so it is instant on a 4 GB teacher; it changes whenever a checkpoint or GGUF is
    rewritten in place (a teacher retrained into the same folder). None when ``path`` has no weight files.
    """
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES) \
        if p.is_dir() else []
    if not files:
        return None
    key = [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
