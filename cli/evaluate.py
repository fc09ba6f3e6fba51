"""``vnmini eval MODEL``: bits per byte / perplexity on text, multiple-choice accuracy (VMLU format).

Works on every backend (checkpoint folder, ``.gguf``, ONNX folder) through the
same :mod:`vnmini.eval.bpb` code, so one table compares them. Pass several
models to get that table directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vnmini.errors import VnminiError


def eval_cmd(
    models: list[Path] = typer.Argument(..., help="One or more checkpoint folders, .gguf files or ONNX folders."),
    text: Path | None = typer.Option(None, "--text", help="Held-out text (.txt/.jsonl/.parquet file or folder)."),
    mc: Path | None = typer.Option(None, "--mc",
                                   help="Multiple-choice JSONL (VMLU format); 'sample' = the shipped sample."),
    stride: int | None = typer.Option(None, "--stride",
                                      help="Sliding-window stride in tokens (default: half the context)."),
    context: int | None = typer.Option(None, "--context", help="Window length (default: the model's context)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Score only the first N tokens of --text."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N questions of --mc."),
    backend: str | None = typer.Option(None, "--backend", help="torch, gguf or onnx (default: from the path)."),
    threads: int | None = typer.Option(None, "--threads"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Bits per byte and perplexity on text; accuracy on multiple-choice questions.

    Example: vnmini eval runs/q/chat runs/q/chat.q4_0.gguf --text heldout.txt --mc sample
    """
    import vnmini
    from vnmini.eval.bpb import eval_text
    from vnmini.eval.mc import eval_mc, sample_mc_path

    if text is None and mc is None:
        raise VnminiError("vnmini eval: give --text FILE and/or --mc FILE.jsonl (or --mc sample).")
    if text is not None and not text.exists():
        raise VnminiError(f"--text {text}: no such file or folder.")
    if mc is not None and str(mc) == "sample":
        mc = sample_mc_path()
    rows = []
    for m in models:
        gen = vnmini.load(m, backend=backend, threads=threads)
        row: dict = {"model": str(m), "backend": gen.backend}
        if text is not None:
            r = eval_text(gen, text, stride=stride, max_tokens=max_tokens, context=context, progress=not as_json)
            row.update({k: r[k] for k in ("bpb", "ppl", "tokens", "bytes", "context", "stride")})
        if mc is not None:
            r = eval_mc(gen, mc, limit=limit, progress=not as_json)
            row.update({"accuracy": r["accuracy"], "accuracy_norm": r["accuracy_norm"], "n_questions": r["n"],
                        "chance": r["chance"]})
        rows.append(row)
        del gen
    if as_json:
        typer.echo(json.dumps(rows if len(rows) > 1 else rows[0], ensure_ascii=False))
        return
    cols = ["model", "backend"] + (["bpb", "ppl", "tokens"] if text is not None else []) + (
        ["accuracy", "accuracy_norm", "n_questions"] if mc is not None else [])
    typer.echo("| " + " | ".join(cols) + " |")
    typer.echo("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        typer.echo("| " + " | ".join(cells) + " |")
    if mc is not None:
        typer.echo(f"(chance level: {rows[0]['chance']:.3f}; accuracy = highest summed log-prob, "
                   "accuracy_norm = highest log-prob per byte)")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_cmd)
