"""``vnmini train``, ``vnmini sft`` and ``vnmini data sft-from-statutes``.

Every flag defaults to "unset", so the precedence is: TrainConfig defaults ←
``--config file.toml`` ← flags; each flag's help and ``[default]`` come from
the TrainConfig field itself (:func:`cfg_opt`), so they cannot drift. The same commands scale out unchanged::

    torchrun --nproc-per-node 8 -m vnmini.cli train --config teacher.toml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vnmini.training.config import BOOL_FIELDS, SFT_DEFAULTS, field_help

_O = typer.Option


def cfg_opt(name: str, *aliases: str, base: dict[str, Any] | None = None, flag: str | None = None,
            help: str | None = None, note: str = "") -> Any:
    """A ``--flag`` for TrainConfig field ``name``: unset by default, help and [default] from TrainConfig.

    Unset (None) means "the config file's value, else TrainConfig's", so flags override ``--config``.
    ``note`` is said before the field's own help; ``help`` replaces it.
    """
    dashed = flag or "--" + name.replace("_", "-")
    if name in BOOL_FIELDS:
        dashed = f"{dashed}/--no-{dashed[2:]}"
    return _O(None, dashed, *aliases, help=help or " ".join(x for x in (note, field_help(name, base)) if x))


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}


def _print_summary(s: dict[str, Any]) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    bpb = f", eval loss {s['eval_loss']:.4f}, bits/byte {s['eval_bpb']:.4f}" if "eval_bpb" in s else ""
    ep = f" ({s['epochs']:.2f} epochs)" if "epochs" in s else ""
    typer.echo(f"{s['steps']} steps, {s['tokens']:,} tokens{ep}, train loss {s['train_loss']:.4f}{bpb}")
    typer.echo(f"wrote {s['final']} (metrics: {s['run_dir']}/metrics.jsonl, plot: {s['run_dir']}/loss.png)")


def train(
    data: Path = cfg_opt("data", "-d"),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = cfg_opt("out", "-o"),
    preset: str = cfg_opt("preset", "-p"),
    tokenizer: Path = cfg_opt("tokenizer", "-t"),
    init_from: Path = cfg_opt("init_from"),
    init_embeddings: Path = cfg_opt("init_embeddings"),
    seq_len: int = cfg_opt("seq_len"),
    micro_batch: int = cfg_opt("micro_batch"),
    global_batch_tokens: int = cfg_opt("global_batch_tokens"),
    max_steps: int = cfg_opt("max_steps"),
    max_minutes: float = cfg_opt("max_minutes"),
    max_epochs: float = cfg_opt("max_epochs"),
    plan: str = cfg_opt("plan"),
    lr: float = cfg_opt("lr"),
    min_lr_ratio: float = cfg_opt("min_lr_ratio"),
    warmup_steps: int = cfg_opt("warmup_steps"),
    schedule: str = cfg_opt("schedule"),
    decay_fraction: float = cfg_opt("decay_fraction"),
    weight_decay: float = cfg_opt("weight_decay"),
    dropout: float = cfg_opt("dropout"),
    grad_clip: float = cfg_opt("grad_clip"),
    eval_every: int = cfg_opt("eval_every"),
    eval_tokens: int = cfg_opt("eval_tokens"),
    sample_prompt: str = cfg_opt("sample_prompt"),
    sample_tokens: int = cfg_opt("sample_tokens"),
    save_every: int = cfg_opt("save_every"),
    keep_last: int = cfg_opt("keep_last"),
    resume: bool = cfg_opt("resume"),
    seed: int = cfg_opt("seed"),
    device: str = cfg_opt("device"),
    dtype: str = cfg_opt("dtype"),
    compile: bool = cfg_opt("compile"),
    grad_checkpointing: bool = cfg_opt("grad_checkpointing"),
    kernels: str = cfg_opt("kernels"),
    fsdp: bool = cfg_opt("fsdp"),
    threads: int = cfg_opt("threads"),
    log_every: int = cfg_opt("log_every"),
    progress: bool = cfg_opt("progress"),
) -> None:
    """Pretrain a model on token shards; resumable, one or many processes.

    Example: vnmini train --data shards/ --preset tiny --max-steps 2000 --out runs/tiny
    Time-budgeted: vnmini train --data shards/ --plan auto --max-minutes 10 --out runs/tiny
    """
    from vnmini.training.pretrain import train as run

    ov = _overrides({k: v for k, v in locals().items() if k not in ("config", "run")})
    _print_summary(run(config, **ov))


def sft(
    data: Path = cfg_opt("data", "-d", help="Messages JSONL: {\"messages\": [{\"role\", \"content\"}, ...]} per line."),
    init_from: Path = cfg_opt("init_from", "-m", help="The checkpoint to fine-tune (with its tokenizer)."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = cfg_opt("out", "-o", base=SFT_DEFAULTS),
    seq_len: int = cfg_opt("seq_len", base=SFT_DEFAULTS),
    micro_batch: int = cfg_opt("micro_batch", base=SFT_DEFAULTS),
    global_batch_tokens: int = cfg_opt("global_batch_tokens", base=SFT_DEFAULTS),
    max_steps: int = cfg_opt("max_steps", base=SFT_DEFAULTS),
    max_minutes: float = cfg_opt("max_minutes", base=SFT_DEFAULTS),
    max_epochs: float = cfg_opt("max_epochs", base=SFT_DEFAULTS),
    lr: float = cfg_opt("lr", base=SFT_DEFAULTS),
    warmup_steps: int = cfg_opt("warmup_steps", base=SFT_DEFAULTS),
    schedule: str = cfg_opt("schedule", base=SFT_DEFAULTS),
    decay_fraction: float = cfg_opt("decay_fraction", base=SFT_DEFAULTS),
    min_lr_ratio: float = cfg_opt("min_lr_ratio", base=SFT_DEFAULTS),
    weight_decay: float = cfg_opt("weight_decay", base=SFT_DEFAULTS),
    dropout: float = cfg_opt("dropout", base=SFT_DEFAULTS),
    val_fraction: float = cfg_opt("val_fraction", base=SFT_DEFAULTS),
    eval_every: int = cfg_opt("eval_every", base=SFT_DEFAULTS),
    eval_tokens: int = cfg_opt("eval_tokens", base=SFT_DEFAULTS),
    sample_prompt: str = cfg_opt("sample_prompt", base=SFT_DEFAULTS),
    sample_tokens: int = cfg_opt("sample_tokens", base=SFT_DEFAULTS),
    save_every: int = cfg_opt("save_every", base=SFT_DEFAULTS),
    keep_last: int = cfg_opt("keep_last", base=SFT_DEFAULTS),
    resume: bool = cfg_opt("resume", base=SFT_DEFAULTS),
    seed: int = cfg_opt("seed", base=SFT_DEFAULTS),
    device: str = cfg_opt("device", base=SFT_DEFAULTS),
    kernels: str = cfg_opt("kernels", base=SFT_DEFAULTS),
    threads: int = cfg_opt("threads", base=SFT_DEFAULTS),
    progress: bool = cfg_opt("progress", base=SFT_DEFAULTS),
) -> None:
    """Chat fine-tuning: loss on assistant tokens only, packed without crossing conversations.

    Example: vnmini sft --data data/sft.jsonl --init-from runs/tiny/final --out runs/tiny-chat
    """
    from vnmini.training.sft import sft as run

    ov = _overrides({k: v for k, v in locals().items() if k not in ("config", "run")})
    _print_summary(run(config, **ov))


def sft_from_statutes(
    inputs: list[Path] = typer.Argument(..., help="Corpus folder from `vnmini corpus fetch` (or statute .txt/.jsonl)."),
    out: Path = _O(Path("data/sft.jsonl"), "--out", "-o", help="Messages JSONL to write."),
    seed: int = _O(0, "--seed", help="Shuffles the conversations."),
    max_answer_chars: int = _O(1000, "--max-answer-chars", help="Cut long articles at a line end before this."),
    max_conversations: int = _O(None, "--max-conversations", help="Keep at most this many."),
    replay: float = _O(0.0, "--replay", help="Also mix in the articles as {\"text\"} lines (trained as plain prose, "
                                            "keeping the model's register): this many characters per answer "
                                            "character."),
    force: bool = _O(False, "--force", "-f", help="Replace an existing output file."),
) -> None:
    """Build a Vietnamese chat set (questions about articles → the article's text) from statutes.

    Example: vnmini data sft-from-statutes corpus/ --out data/sft.jsonl
    """
    from vnmini.data.sft_statutes import build_statute_sft

    s = build_statute_sft(inputs, out, seed=seed, max_answer_chars=max_answer_chars,
                          max_conversations=max_conversations, replay=replay, force=force)
    for code, n in s["codes"].items():
        typer.echo(f"{n:>6,} conversations  {code}")
    text = f", {s['text_records']:,} text records" if s["text_records"] else ""
    typer.echo(f"wrote {s['out']} ({s['conversations']:,} conversations{text})")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("sft")(sft)
    from vnmini.cli.data import app as data_app  # `data` is the shard verb group; add our builder to it

    data_app.command("sft-from-statutes")(sft_from_statutes)
