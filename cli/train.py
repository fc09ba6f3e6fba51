"""``vnmini train``, ``vnmini sft`` and ``vnmini data sft-from-statutes``.

Every flag defaults to "unset", so the precedence is: TrainConfig defaults ←
``--config file.toml`` ← flags. The same commands scale out unchanged::

    torchrun --nproc-per-node 8 -m vnmini.cli train --config teacher.toml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

_O = typer.Option


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}


def _print_summary(s: dict[str, Any]) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    bpb = f", eval loss {s['eval_loss']:.4f}, bits/byte {s['eval_bpb']:.4f}" if "eval_bpb" in s else ""
    typer.echo(f"{s['steps']} steps, {s['tokens']:,} tokens, train loss {s['train_loss']:.4f}{bpb}")
    typer.echo(f"wrote {s['final']} (metrics: {s['run_dir']}/metrics.jsonl, plot: {s['run_dir']}/loss.png)")


def train(
    data: Path = _O(None, "--data", "-d", help="Token shard folder from `vnmini data prepare`."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = _O(None, "--out", "-o", help="Run folder (checkpoints, metrics.jsonl, loss.png). [runs/train]"),
    preset: str = _O(None, "--preset", "-p", help="Model shape: micro, tiny, mini, small, medium, large. [tiny]"),
    tokenizer: Path = _O(None, "--tokenizer", "-t", help="Tokenizer folder/json (default: the shards' own)."),
    init_from: Path = _O(None, "--init-from", help="Start from this checkpoint instead of a fresh preset."),
    seq_len: int = _O(None, "--seq-len", help="Tokens per sequence. [256]"),
    micro_batch: int = _O(None, "--micro-batch", help="Sequences per process per forward. [8]"),
    global_batch_tokens: int = _O(None, "--global-batch-tokens", help="Tokens per optimizer step (all processes). [16384]"),
    max_steps: int = _O(None, "--max-steps", help="Optimizer steps. [1000]"),
    max_minutes: float = _O(None, "--max-minutes", help="Stop (with a final checkpoint) after this wall time."),
    lr: float = _O(None, "--lr", help="Peak learning rate. [3e-3]"),
    min_lr_ratio: float = _O(None, "--min-lr-ratio", help="Final lr as a fraction of --lr. [0.1]"),
    warmup_steps: int = _O(None, "--warmup-steps", help="Linear warmup steps. [50]"),
    schedule: str = _O(None, "--schedule", help="cosine, wsd (warmup-stable-decay) or constant. [cosine]"),
    decay_fraction: float = _O(None, "--decay-fraction", help="wsd: fraction of steps that decay. [0.2]"),
    weight_decay: float = _O(None, "--weight-decay", help="AdamW decay on matrices (not norms/embeddings). [0.1]"),
    grad_clip: float = _O(None, "--grad-clip", help="Clip the global gradient norm (0 = off). [1.0]"),
    eval_every: int = _O(None, "--eval-every", help="Evaluate (loss, bits per byte, a sample) every N steps. [100]"),
    eval_tokens: int = _O(None, "--eval-tokens", help="Validation tokens per evaluation. [65536]"),
    sample_prompt: str = _O(None, "--sample-prompt", help="Prompt of the sample generation logged at each eval."),
    sample_tokens: int = _O(None, "--sample-tokens", help="Tokens to sample at each eval (0 = none). [40]"),
    save_every: int = _O(None, "--save-every", help="Checkpoint every N steps (0 = only the final). [500]"),
    keep_last: int = _O(None, "--keep-last", help="Step checkpoints to keep. [2]"),
    resume: bool = _O(None, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
    seed: int = _O(None, "--seed", help="Seeds the init and the data order. [1337]"),
    device: str = _O(None, "--device", help="auto, cpu, cuda or cuda:N. [auto]"),
    dtype: str = _O(None, "--dtype", help="auto (bf16 autocast on CUDA), float32 or bfloat16. [auto]"),
    compile: bool = _O(None, "--compile/--no-compile", help="torch.compile the model."),
    grad_checkpointing: bool = _O(None, "--grad-checkpointing/--no-grad-checkpointing", help="Activation checkpointing."),
    kernels: str = _O(None, "--kernels", help="Cross-entropy: auto, numba or torch. [auto]"),
    fsdp: bool = _O(None, "--fsdp/--no-fsdp", help="Shard with FSDP2 under torchrun (teachers that don't fit one GPU)."),
    threads: int = _O(None, "--threads", help="torch CPU threads."),
    log_every: int = _O(None, "--log-every", help="Refresh tokens/s every N steps. [10]"),
    progress: bool = _O(None, "--progress/--no-progress", help="Show the progress bar. [on]"),
) -> None:
    """Pretrain a model on token shards; resumable, one or many processes.

    Example: vnmini train --data shards/ --preset tiny --max-steps 2000 --out runs/tiny
    """
    from vnmini.train import train as run

    ov = _overrides({k: v for k, v in locals().items() if k not in ("config", "run")})
    _print_summary(run(config, **ov))


def sft(
    data: Path = _O(None, "--data", "-d", help="Messages JSONL: {\"messages\": [{\"role\", \"content\"}, ...]} per line."),
    init_from: Path = _O(None, "--init-from", "-m", help="The checkpoint to fine-tune (with its tokenizer)."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields (flags override it)."),
    out: Path = _O(None, "--out", "-o", help="Run folder. [runs/sft]"),
    seq_len: int = _O(None, "--seq-len", help="Row length conversations are packed into. [256]"),
    micro_batch: int = _O(None, "--micro-batch", help="Rows per process per forward. [8]"),
    global_batch_tokens: int = _O(None, "--global-batch-tokens", help="Tokens per optimizer step. [8192]"),
    max_steps: int = _O(None, "--max-steps", help="Optimizer steps. [300]"),
    max_minutes: float = _O(None, "--max-minutes", help="Stop (with a final checkpoint) after this wall time."),
    lr: float = _O(None, "--lr", help="Peak learning rate. [3e-4]"),
    warmup_steps: int = _O(None, "--warmup-steps", help="Linear warmup steps. [20]"),
    schedule: str = _O(None, "--schedule", help="cosine, wsd or constant. [cosine]"),
    weight_decay: float = _O(None, "--weight-decay", help="AdamW decay on matrices. [0.0]"),
    val_fraction: float = _O(None, "--val-fraction", help="Conversations held out for eval. [0.05]"),
    eval_every: int = _O(None, "--eval-every", help="Evaluate every N steps. [50]"),
    eval_tokens: int = _O(None, "--eval-tokens", help="Held-out tokens per evaluation. [65536]"),
    sample_prompt: str = _O(None, "--sample-prompt", help="User message answered at each eval."),
    sample_tokens: int = _O(None, "--sample-tokens", help="Tokens of that answer (0 = none). [40]"),
    save_every: int = _O(None, "--save-every", help="Checkpoint every N steps. [100]"),
    keep_last: int = _O(None, "--keep-last", help="Step checkpoints to keep. [2]"),
    resume: bool = _O(None, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
    seed: int = _O(None, "--seed", help="Seeds the data order. [1337]"),
    device: str = _O(None, "--device", help="auto, cpu, cuda or cuda:N. [auto]"),
    kernels: str = _O(None, "--kernels", help="Cross-entropy: auto, numba or torch. [auto]"),
    threads: int = _O(None, "--threads", help="torch CPU threads."),
    progress: bool = _O(None, "--progress/--no-progress", help="Show the progress bar. [on]"),
) -> None:
    """Chat fine-tuning: loss on assistant tokens only, packed without crossing conversations.

    Example: vnmini sft --data data/sft.jsonl --init-from runs/tiny/final --out runs/tiny-chat
    """
    from vnmini.sft import sft as run

    ov = _overrides({k: v for k, v in locals().items() if k not in ("config", "run")})
    _print_summary(run(config, **ov))


def sft_from_statutes(
    inputs: list[Path] = typer.Argument(..., help="Corpus folder from `vnmini corpus fetch` (or statute .txt/.jsonl)."),
    out: Path = _O(Path("data/sft.jsonl"), "--out", "-o", help="Messages JSONL to write."),
    seed: int = _O(0, "--seed", help="Shuffles the conversations."),
    max_answer_chars: int = _O(1000, "--max-answer-chars", help="Cut long articles at a line end before this."),
    max_conversations: int = _O(None, "--max-conversations", help="Keep at most this many."),
) -> None:
    """Build a Vietnamese chat set (questions about articles → the article's text) from statutes.

    Example: vnmini data sft-from-statutes corpus/ --out data/sft.jsonl
    """
    from vnmini.sft_data import build_statute_sft

    s = build_statute_sft(inputs, out, seed=seed, max_answer_chars=max_answer_chars, max_conversations=max_conversations)
    for code, n in s["codes"].items():
        typer.echo(f"{n:>6,} conversations  {code}")
    typer.echo(f"wrote {s['out']} ({s['conversations']:,} conversations)")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("sft")(sft)
    try:  # `data` is the shard verb group's sub-Typer; add our builder to it
        from vnmini.cli.data import app as data_app
    except ImportError:
        data_app = typer.Typer(help="Data preparation.", no_args_is_help=True)
        app.add_typer(data_app, name="data")
    data_app.command("sft-from-statutes")(sft_from_statutes)
