"""Reading JSON-lines files the same way everywhere: one object per line, errors name ``file:line``.

    for where, obj in iter_jsonl("data.jsonl"):      # where == "data.jsonl:12"
        ...

Blank lines are skipped; invalid JSON or non-UTF-8 bytes raise a one-line
:class:`VnminiError`. Callers check the object's fields and name ``where``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, parsed object)`` for each non-blank line of a UTF-8 JSONL file."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise VnminiError(f"{where}: invalid JSON ({e.msg}); each line must be one JSON object.") from e
                yield where, obj
    except UnicodeDecodeError as e:
        raise VnminiError(f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8 JSONL.") from e
