"""``vnmini data prepare``: text -> token shards (uint16/uint32 .bin + manifest.json)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Turn text into token shards for training.", no_args_is_help=True)


@app.command()
def prepare(
    paths: list[Path] = typer.Argument(..., help="Text: files, folders or glob patterns."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="Tokenizer folder (or a checkpoint folder)."),
    out: Path = typer.Option(Path("shards"), "--out", "-o", help="Folder for manifest.json and *.bin shards."),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="Share of documents held out for validation."),
    shard_tokens: int = typer.Option(16 * 1024 * 1024, "--shard-tokens", help="Tokens per .bin file."),
    field: str | None = typer.Option(None, "--field", help="JSON field in .jsonl files (default: text)."),
    column: str | None = typer.Option(None, "--column", help="Column in .parquet files (default: text)."),
    doc_sep: str = typer.Option("file", "--doc-sep", help="How .txt files split into documents: file, blank or line."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing shard set (never anything else)."),
) -> None:
    """Tokenize text into .bin shards (documents as BOS ... EOS) with a train/val split by document.

    Example: vnmini data prepare corpus/train --tokenizer tok/ --out shards/
    """
    from vnmini.data.corpus import CorpusStats
    from vnmini.data.shards import prepare_shards
    from vnmini.text.tokenizer import VnTokenizer

    tok = VnTokenizer.load(tokenizer)
    st = CorpusStats()
    m = prepare_shards([str(p) for p in paths], tok, out, val_fraction=val_fraction, shard_tokens=shard_tokens,
                       field=field, column=column, progress=progress, doc_sep=doc_sep, stats=st,
                       force=force)  # fmt: skip
    if st.skipped:
        typer.echo(st.summary())
    for split, s in m["splits"].items():
        typer.echo(f"{split:<5} {s['documents']:>8,} documents {s['tokens']:>12,} tokens {len(s['files'])} files "
                   f"({s['bytes'] / max(s['tokens'], 1):.2f} bytes/token)")  # fmt: skip
    typer.echo(f"wrote {out} ({m['dtype']}, tokenizer {m['tokenizer_hash']})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
