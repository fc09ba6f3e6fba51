"""May vnmini write here? The one rule for every writing verb, and the run-folder lock.

    check_output(out, "shards", force)        # before writing anything
    with run_lock(run_dir):                    # while a process writes a run folder
        ...

The rule (DESIGN.md, contracts): an existing output is refused without ``--force``;
``--force`` replaces only an output of the same kind that vnmini made (a shard
folder with a shard folder, a GGUF with a GGUF), never a folder of another kind,
never a file with a folder or a folder with a file. An empty folder may always be
filled. Kinds come from :func:`vnmini.paths.path_kind`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vnmini.errors import VnminiError
from vnmini.paths import describe_kind, path_kind

LOCK_FILE = ".vnmini.lock"


def check_output(path: str | os.PathLike, kind: str | tuple[str, ...], force: bool, flag: str = "-o") -> str:
    """Refuse to write ``kind`` at ``path`` unless that is safe; returns what is there now.

    ``kind``: the kind(s) this verb writes (``"file"`` for a plain text/JSONL file).
    """
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    have = path_kind(path)
    if have == "missing" or (have == "empty-folder" and not _writes_file(kinds)):  # a folder verb may fill it
        return have
    what = describe_kind(have)
    if have not in kinds:
        raise VnminiError(
            f"{flag} {path}: already exists and is {what}, not {describe_kind(kinds[0])}; "
            f"vnmini won't replace it (not even with --force). Choose another {flag}."
        )
    if not force:
        raise VnminiError(f"{flag} {path}: already exists ({what}); pass --force to replace it, "
                          f"or choose another {flag}.")
    return have


def _writes_file(kinds: tuple[str, ...]) -> bool:
    return all(k in ("file", "gguf") for k in kinds)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while writing it.

    A second process that wants the same folder fails at once with one line,
    instead of interleaving metrics and checkpoints. The lock is an ``flock`` on
    ``<folder>/.vnmini.lock``: the kernel releases it when the process dies, so a
    killed run never leaves a stale lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            except OSError:
                other = "?"
            raise VnminiError(
                f"{folder}: another vnmini process (pid {other}) is writing this folder; "
                "wait for it to finish or choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield folder
    finally:
        os.close(fd)  # closing releases the flock
