"""Atomic writes: a crash never leaves a half file under the final name.

Use :func:`atomic_path` for a file (write to the yielded temp path, it is
renamed on success) and :func:`atomic_dir` for a folder (fill the yielded temp
folder; it replaces the target in one rename, the old one is removed only after
the new one is in place).

    with atomic_path("m.gguf") as tmp:      # .m.gguf.<pid>.<random>.tmp beside it
        write(tmp)
    with atomic_dir("shards") as tmp:       # .shards.<pid>.<random>.tmp/
        fill(tmp)

Temp names carry the writer's PID, so a later writer of the same output removes
the leftovers of a killed one (kill -9 cannot run cleanup code) and never those
of a process that is still running. A full disk, a read-only folder or missing
permissions become one :class:`~vnmini.errors.VnminiError` naming the output.
Neither helper decides whether an existing output may be replaced: callers ask
:func:`vnmini.outputs.check_output` first. ``atomic_dir`` never puts a folder
where a file is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError

# errnos that mean "the disk or the folder can't take it", not a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.<pid>.*.tmp`` (and ``.<name>.old-<pid>``) leftovers of dead writers of ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pat = re.compile(r"^\." + re.escape(path.name) + r"\.(?:(\d+)\..*\.tmp|old-(\d+))$")
    removed = []
    for p in path.parent.iterdir():
        m = pat.match(p.name)
        if not m or _pid_alive(int(m.group(1) or m.group(2))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_error(path: Path, e: OSError) -> VnminiError:
    """One line for an OSError met while writing ``path``."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some disk space or write elsewhere"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "check the folder's permissions or write elsewhere"
    else:
        fix = "check the disk and the path"
    return VnminiError(f"{path}: could not be written ({why}); {fix}. Nothing was left under that name.")


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise


def _mkparent(path: Path) -> None:
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` on success."""
    path = Path(path)
    if path.is_dir():
        raise VnminiError(f"{path}: is a folder; vnmini writes a file here only where no folder is. "
                          "Choose another name.")
    _mkparent(path)
    clean_stale_temps(path)
    with _write_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _write_errors(path):
            yield tmp_path
            # mkstemp creates 0600; give the final file the usual umask-based mode.
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``path``; swap it in on success."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VnminiError(f"{path}: is a file; vnmini never replaces a file with a folder. Choose another name.")
    _mkparent(path)
    clean_stale_temps(path)
    with _write_errors(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        with _write_errors(path):
            yield tmp
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
            if path.exists():
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
