"""``vnmini tokenizer train / eval``: train the Vietnamese BPE; compare tokenizers' fertility."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train the Vietnamese byte-level BPE; measure tokens per syllable.", no_args_is_help=True)


@app.command()
def train(
    paths: list[Path] = typer.Argument(..., help="Training text: files, folders or glob patterns."),
    out: Path = typer.Option(Path("tokenizer"), "--out", "-o",
                             help="Folder for tokenizer.json + tokenizer_config.json."),
    vocab_size: int = typer.Option(16384, "--vocab-size",
                                   help="Vocabulary size incl. 5 special tokens (PhoGPT used 20,480)."),
    pre: str = typer.Option("qwen2", "--pre", help="llama.cpp pre-tokenizer name: qwen2 or gpt-2."),
    seed_weight: float = typer.Option(0.5, "--seed-weight",
                                      help="Rule-generated syllables added, as a fraction of corpus syllables "
                                           "(0 = off)."),
    field: str | None = typer.Option(None, "--field", help="JSON field in .jsonl files (default: text)."),
    column: str | None = typer.Option(None, "--column", help="Column in .parquet files (default: text)."),
    doc_sep: str = typer.Option("file", "--doc-sep", help="How .txt files split into documents: file, blank or line."),
    tone_style: str = typer.Option("new", "--tone-style", help="new (hòa, thủy) or old (hoà, thuỷ)."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Ignore pairs seen fewer times."),
    force: bool = typer.Option(False, "--force", "-f",
                               help="Replace an existing output of the same kind (never anything else)."),
) -> None:
    """Train a byte-level BPE on normalized text, with ChatML special tokens and chat template.

    Example: vnmini tokenizer train corpus/train --out tok/ --vocab-size 16384
    """
    from vnmini.atomic import atomic_dir
    from vnmini.data.corpus import CorpusStats
    from vnmini.outputs import check_output
    from vnmini.text.tokenizer_train import train_tokenizer

    check_output(out, "tokenizer", force)  # before minutes of training; never into a checkpoint folder
    st = CorpusStats()
    tok = train_tokenizer([str(p) for p in paths], vocab_size, pre, field=field, column=column, doc_sep=doc_sep,
                          tone_style=tone_style, seed_weight=seed_weight, min_frequency=min_frequency,
                          show_progress=True, is_text=False, stats=st)  # fmt: skip
    with atomic_dir(out) as tmp:  # all of tokenizer.json/_config/special_tokens_map, or none
        tok.save(tmp)
    typer.echo(st.summary())
    typer.echo(f"wrote {out} (vocab {tok.vocab_size:,}, pre {tok.pre_tokenizer_name}, hash {tok.hash})")


@app.command("adopt")
def adopt(
    teacher: Path = typer.Option(..., "--from", help="The teacher: an HF folder (tokenizer.json) or a .gguf."),
    corpus: list[Path] = typer.Option(..., "--corpus", help="Text the student will train on (files, folders, globs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the student tokenizer + teacher_map.json."),
    vocab_size: int = typer.Option(16384, "--vocab-size",
                                   help="Student vocabulary size (specials and bytes included)."),
    field: str | None = typer.Option(None, "--field", help="JSON field in .jsonl files (default: text)."),
    column: str | None = typer.Option(None, "--column", help="Column in .parquet files (default: text)."),
    force: bool = typer.Option(False, "--force", "-f",
                               help="Replace an existing output of the same kind (never anything else)."),
) -> None:
    """A student tokenizer whose tokens are the teacher's most used ones on the corpus (for logit distillation).

    Keeps the teacher's specials, chat template, byte alphabet / byte-fallback tokens and every
    piece its merges pass through, so the student tokenizes like the teacher wherever the teacher's
    tokens are kept; writes teacher_map.json (student id -> teacher id).

    Example: vnmini tokenizer adopt --from gemma-3-270m.gguf --corpus corpus/train --vocab-size 16384 -o tok-vi/
    """
    from vnmini.data.corpus import read_documents
    from vnmini.outputs import check_output
    from vnmini.text.adopt import adopt_tokenizer, teacher_fertility
    from vnmini.text.tokenizer_train import tokenizer_fertility

    check_output(out, "tokenizer", force)
    r = adopt_tokenizer(teacher, [str(p) for p in corpus], vocab_size, out, field=field, column=column)
    tok = r.tokenizer
    typer.echo(f"wrote {out} (vocab {tok.vocab_size:,} of the teacher's {tok.teacher_map.teacher_vocab_size:,}, "
               f"{tok.style}, hash {tok.hash})")
    typer.echo(f"the corpus used {r.counts_used:,} teacher tokens; kept {r.kept_from_corpus:,}, covering "
               f"{r.coverage:.2%} of its {r.teacher_tokens:,} teacher tokens")
    docs = list(read_documents([str(p) for p in corpus], field, column))
    mine = tokenizer_fertility(tok, docs)
    theirs = teacher_fertility(teacher, docs)
    typer.echo(f"tokens per syllable on the corpus: adopted {mine['tokens_per_syllable']:.3f}, "
               f"teacher {theirs['tokens_per_syllable']:.3f}")


@app.command("eval")
def evaluate(
    tokenizer: Path = typer.Argument(..., help="A vnmini tokenizer folder or tokenizer.json."),
    text: Path = typer.Argument(..., help="Text to measure: a file, folder or glob."),
    others: list[Path] = typer.Argument(None, help="Other tokenizer.json files (e.g. Llama-3's) to compare."),
    field: str | None = typer.Option(None, "--field", help="JSON field in .jsonl files (default: text)."),
    column: str | None = typer.Option(None, "--column", help="Column in .parquet files (default: text)."),
) -> None:
    """Tokens per syllable, bytes per token and byte-fallback share, side by side (text normalized first).

    Example: vnmini tokenizer eval tok/ corpus/heldout/ llama3/tokenizer.json
    """
    from vnmini.data.corpus import read_documents
    from vnmini.text.tokenizer_train import fertility_table, load_any_tokenizer, tokenizer_fertility

    rows = []
    for path in [tokenizer, *(others or [])]:
        tok = load_any_tokenizer(path)
        docs = read_documents([str(text)], field, column, normalized=False)
        rows.append((str(path), str(text), tokenizer_fertility(tok, docs)))
    typer.echo(fertility_table(rows))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tokenizer")
