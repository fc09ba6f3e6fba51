"""``vnmini plan``: what a ``--max-minutes`` budget buys on this device, before it is spent.

A short throughput probe (a few real training steps of each candidate shape on
the given shards) plus the recipe rules of :mod:`vnmini.training.recipes`; the
Python twin is ``vnmini.plan(...)`` and ``vnmini train --plan auto`` applies the
same choice::

    vnmini plan --minutes 10 --data shards/                      # micro/tiny/mini on this CPU, ~25 s
    vnmini plan --minutes 180 --device cuda --data shards/ --preset large
    vnmini train --data shards/ --plan auto --max-minutes 10     # run what it chose
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from vnmini.cli.train import _overrides, cfg_opt

_O = typer.Option


def plan_cmd(
    minutes: float = _O(..., "--minutes", "-m", help="The wall-time budget to plan for."),
    data: Path = cfg_opt("data", "-d"),
    device: str = _O("auto", "--device", help="auto, cpu, cuda or cuda:N: where the probe (and the run) goes."),
    preset: str = _O(None, "--preset", "-p", help="Plan this shape only (default: the device's candidates)."),
    config: Path = _O(None, "--config", "-c", help="TOML file of TrainConfig fields; what it sets is kept."),
    tokenizer: Path = cfg_opt("tokenizer", "-t"),
    init_from: Path = cfg_opt("init_from", help="Plan for continuing this checkpoint (its shape, not a preset's)."),
    seq_len: int = cfg_opt("seq_len", help="Tokens per sequence, kept as given (default: the recipe's)."),
    micro_batch: int = cfg_opt("micro_batch", help="Sequences per forward, kept as given (default: the recipe's)."),
    global_batch_tokens: int = cfg_opt("global_batch_tokens",
                                       help="Tokens per optimizer step, kept as given (default: the recipe's)."),
    lr: float = cfg_opt("lr", help="Peak learning rate, kept as given (default: the recipe's)."),
    warmup_steps: int = cfg_opt("warmup_steps", help="Linear warmup steps, kept as given (default: the recipe's)."),
    schedule: str = cfg_opt("schedule", help="cosine, wsd or constant, kept as given (default: the recipe's)."),
    max_epochs: float = cfg_opt("max_epochs", help="Plan at most this many passes over the training rows."),
    eval_tokens: int = cfg_opt("eval_tokens"),
    sample_tokens: int = cfg_opt("sample_tokens"),
    threads: int = cfg_opt("threads"),
    kernels: str = cfg_opt("kernels"),
    probe_seconds: float = _O(None, "--probe-seconds",
                              help="Probe time for all candidates together (default: 25 on CPU, 60 on CUDA)."),
    as_json: bool = _O(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Probe throughput and apply the recipe rules: shape, batch, lr, warmup, steps, epochs for a time budget.

    Example: vnmini plan --minutes 10 --data shards/
    """
    from vnmini.training.plan import plan

    ov = _overrides({k: v for k, v in locals().items()
                     if k not in ("minutes", "data", "device", "preset", "config", "probe_seconds", "as_json",
                                  "plan")})
    p = plan(minutes, data=str(data) if data else None, device=device, preset=preset, config=config,
             probe_seconds=probe_seconds, **ov)
    if as_json:
        typer.echo(json.dumps(p.to_dict(), ensure_ascii=False))
        return
    c = p.chosen
    typer.echo(f"{p.minutes:g} minutes on {p.device}; {p.train_tokens:,} training tokens in {p.data} "
               f"(probe {p.probe_s:.0f} s)\n")
    typer.echo(p.table())
    for note in p.notes:
        typer.echo(f"\nnote: {note}")
    flags = ["--preset", c.preset] if not c.preset.startswith("init-from") else []
    flags += ["--seq-len", c.seq_len, "--micro-batch", c.micro_batch, "--global-batch-tokens", c.global_batch_tokens,
              "--lr", f"{c.lr:.3g}", "--warmup-steps", c.warmup_steps, "--schedule", c.schedule,
              "--decay-fraction", c.decay_fraction, "--eval-every", c.eval_every, "--save-every", c.save_every]
    typer.echo(f"\nrun it:  vnmini train --data {shlex.quote(p.data)} --plan auto --max-minutes {p.minutes:g}")
    typer.echo(f"    or:  vnmini train --data {shlex.quote(p.data)} --max-minutes {p.minutes:g} "
               + " ".join(shlex.quote(str(f)) for f in flags))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
