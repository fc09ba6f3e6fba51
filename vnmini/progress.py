"""The one progress bar: every slow loop in vnmini shows it on stderr (stdout stays
clean for ``--json``), and it is a silent no-op when disabled.

    with progress_bar("bits per byte", total=len(windows), enabled=show) as bar:
        for w in windows:
            ...
            bar.advance()

    bar = progress_bar("train", total=max_steps, completed=step,
                       fields="loss {task.fields[loss]} · {task.fields[tps]} tok/s", loss="-", tps="-")
    bar.update(completed=step, loss="2.31", tps="12,345")
    bar.close()

``total=None`` shows a spinner (unknown length). ``fields`` is a rich format string
over ``task.fields``, for live numbers next to the bar.
"""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A rich progress bar with one task; use :func:`progress_bar` to make one."""

    def __init__(self, description: str, total: float | None, enabled: bool, completed: float,
                 fields: str, transient: bool, initial_fields: dict[str, Any]) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        cols: list[Any] = [SpinnerColumn()] if total is None else []
        cols.append(TextColumn("[bold]{task.description}"))
        if total is not None:
            cols += [MofNCompleteColumn(), BarColumn()]
        if fields:
            cols.append(TextColumn(fields))
        cols.append(TimeElapsedColumn())
        if total is not None:
            cols += [TextColumn("ETA"), TimeRemainingColumn()]
        self._bar = Progress(*cols, transient=transient, console=Console(stderr=True))
        self._task = self._bar.add_task(description, total=total, completed=completed, **initial_fields)
        self._bar.start()

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(self, completed: float | None = None, description: str | None = None, **fields: Any) -> None:
        if self._bar is not None:
            kw: dict[str, Any] = dict(fields)
            if completed is not None:
                kw["completed"] = completed
            if description is not None:
                kw["description"] = description
            self._bar.update(self._task, **kw)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(description: str, total: float | None = None, *, enabled: bool = True, completed: float = 0,
                 fields: str = "", transient: bool = False, **initial_fields: Any) -> ProgressBar:
    """A progress bar on stderr (a no-op when ``enabled`` is false). See the module docstring."""
    return ProgressBar(description, total, enabled, completed, fields, transient, initial_fields)
