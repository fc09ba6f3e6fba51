"""``vnmini plan`` / ``vnmini.plan(...)``: what a time budget buys, before it is spent.

For each candidate shape (the device's presets in :data:`vnmini.training.recipes.RULES`,
or the one ``--preset`` / ``--config`` / ``--init-from`` names) a few real optimizer
steps of the real :class:`~vnmini.training.trainer.Trainer` on the given shards
measure tokens/s (the first step, which compiles kernels and fills caches, not
counted). The recipe rules (:mod:`vnmini.training.recipes`) then give batch, lr,
warmup and schedule, and the time plan's own arithmetic
(:func:`vnmini.training.schedule.steps_that_fit`, with the eval/save estimates the
trainer starts from) gives steps, tokens and epochs over the data. The largest
shape the rules call eligible is chosen. ``vnmini train --plan auto --max-minutes M``
calls the same function and applies its choice to every setting the user did not
give (flags and ``--config`` win); the probe's own time counts against the budget::

    import vnmini
    p = vnmini.plan(minutes=10, data="shards/")      # probes micro/tiny/mini on the CPU, ~25 s
    print(p.table()); p.chosen.preset, p.chosen.steps
    vnmini.train(data="shards/", plan="auto", max_minutes=10)
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.training import recipes, schedule
from vnmini.training.config import TrainConfig, config_from_dict, user_values

PROBE_SECONDS = {"cpu": 25.0, "cuda": 60.0}  # all candidates together; the bound on a CPU is 20-30 s
PROBE_BUDGET_FRACTION = 0.1  # ... and never more than this share of the budget (the probe runs on its time)
MIN_PROBE_STEPS, MAX_PROBE_STEPS = 2, 20  # timed steps per candidate (after the untimed first one)
# The settings a plan chooses; any of them the user gives is kept as given.
PLANNED = ("preset", "seq_len", "micro_batch", "global_batch_tokens", "lr", "warmup_steps", "schedule",
           "decay_fraction", "min_lr_ratio", "eval_every", "save_every")


@dataclass
class Candidate:
    """One row of the plan table: a shape, the recipe for it and what the budget buys."""

    preset: str
    params: int
    seq_len: int
    micro_batch: int
    global_batch_tokens: int
    lr: float
    warmup_steps: int
    schedule: str
    decay_fraction: float
    min_lr_ratio: float
    eval_every: int
    save_every: int
    steps: int
    tokens: int
    epochs: float
    tokens_per_s: float
    mfu: float | None
    eligible: bool
    why: str


@dataclass
class TrainingPlan:
    """What ``vnmini plan`` prints and ``--plan auto`` applies (``chosen`` is one of ``candidates``)."""

    minutes: float
    device: str
    data: str
    train_tokens: int
    probe_s: float
    chosen: Candidate
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """The TrainConfig fields this plan sets."""
        return {k: getattr(self.chosen, k) for k in PLANNED}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The markdown table ``vnmini plan`` prints (the chosen row marked →)."""
        mfu = any(c.mfu is not None for c in self.candidates)
        head = ["", "preset", "params", "seq × micro", "batch tokens", "lr", "warmup", "steps", "tokens", "epochs",
                "tok/s"] + (["MFU"] if mfu else []) + ["rules"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in self.candidates:
            cells = ["→" if c is self.chosen else "", c.preset, f"{c.params / 1e6:.1f}M",
                     f"{c.seq_len} × {c.micro_batch}", f"{c.global_batch_tokens:,}", f"{c.lr:.2e}",
                     str(c.warmup_steps), f"{c.steps:,}", f"{c.tokens:,}", f"{c.epochs:.2f}", f"{c.tokens_per_s:,.0f}"]
            if mfu:
                cells.append(f"{c.mfu:.1%}" if c.mfu is not None else "")
            rows.append("| " + " | ".join(cells + [c.why]) + " |")
        return "\n".join(rows)


def _probe(cfg: TrainConfig, model, source, tok, until: float) -> float:
    """Tokens/s (all processes) of real optimizer steps of one micro batch each, first step untimed.

    Steps until the clock reads ``until`` (at least MIN_PROBE_STEPS timed ones, at most MAX_PROBE_STEPS).
    """
    from vnmini.training import dist
    from vnmini.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="vnmini-probe-") as tmp:
        pc = cfg.replace(out=tmp, global_batch_tokens=cfg.micro_batch * cfg.seq_len * _world(), max_minutes=None,
                         max_steps=None, max_epochs=None, plan=None, resume=False, progress=False, eval_every=0,
                         save_every=0)
        tr = Trainer(pc, model, source, tokenizer=tok, log=lambda s: None)
        try:
            tr.module.train()
            tr.train_step()  # compiles kernels, warms caches: not the steady rate
            t0 = schedule.now()
            n = 0
            while True:
                tr.train_step()
                n += 1
                # Every rank takes the same number of steps (DDP steps are collective): stop when any says so.
                done = n >= MAX_PROBE_STEPS or (n >= MIN_PROBE_STEPS and schedule.now() >= until)
                if dist.any_flag(done, tr.env):
                    break
            tps = n * pc.global_batch_tokens / max(schedule.now() - t0, 1e-9)
            (tps,) = dist.broadcast_floats([tps], tr.env)  # rank 0's number, so every rank plans the same
        finally:
            tr.close()
    return tps


def _world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _source(cfg: TrainConfig):
    from vnmini.data.shards import ShardReader, load_manifest
    from vnmini.training.pretrain import TokenWindows, resolve_tokenizer

    tok = resolve_tokenizer(cfg.data, cfg.tokenizer)
    train_r = ShardReader(cfg.data, "train", tokenizer_hash=tok.hash)
    val_r = (ShardReader(cfg.data, "val", tokenizer_hash=tok.hash)
             if load_manifest(cfg.data)["splits"].get("val", {}).get("tokens") else None)
    return tok, train_r, val_r, TokenWindows


def plan(minutes: float, data: str | Path | None = None, device: str = "auto", preset: str | None = None,
         config: str | Path | None = None, probe_seconds: float | None = None, **overrides: Any) -> TrainingPlan:
    """Probe the candidates on ``device`` and apply the recipe rules for a ``minutes`` budget.

    ``preset`` (or ``config``, a TOML of TrainConfig fields, or ``init_from``) fixes the
    shape; any other TrainConfig keyword (``seq_len``, ``global_batch_tokens``, ``lr``,
    ...) is kept as given rather than planned.
    """
    import math

    import torch

    from vnmini.training.dist import peak_flops, pick_device

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise VnminiError(f"--minutes: must be a positive number of minutes (got {minutes}).")
    chosen_by_user = user_values(config, {**overrides, "data": str(data) if data else None, "preset": preset,
                                          "device": device})
    values = {k: v for k, v in chosen_by_user.items() if k not in ("plan", "max_minutes")}
    cfg = config_from_dict(values, str(config) if config else "plan")
    if not cfg.data:
        raise VnminiError("--data: give the token shard folder made by `vnmini data prepare`.")
    dev = pick_device(cfg.device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    rules = recipes.RULES[kind]
    tok, train_r, val_r, windows = _source(cfg)
    fixed = {k: chosen_by_user[k] for k in (*PLANNED, "max_steps") if k in chosen_by_user}
    names = [None] if cfg.init_from else ([fixed["preset"]] if "preset" in fixed else list(rules.candidates))
    seq = fixed.get("seq_len", rules.seq_len)
    micro = fixed.get("micro_batch", rules.micro_batch)
    budget = minutes * 60
    total_probe = (probe_seconds if probe_seconds is not None
                   else min(PROBE_SECONDS[kind], PROBE_BUDGET_FRACTION * budget))
    peak = peak_flops(dev) * _world() if peak_flops(dev) else None
    t_start = schedule.now()
    rows: list[tuple[str, Any, float]] = []
    for i, name in enumerate(names):
        c = cfg.replace(preset=name or cfg.preset, seq_len=seq, micro_batch=micro, device=str(dev))
        source = windows(train_r, val_r, seq)
        if source.train_rows < 1:
            raise VnminiError(f"{cfg.data}: fewer than seq_len+1 = {seq + 1} training tokens; lower --seq-len "
                              "or add data.")
        from vnmini.training.pretrain import make_model

        model = make_model(c, tok)
        # Each candidate gets an equal share of what is left, so a slow first one can't starve the rest.
        until = schedule.now() + (t_start + total_probe - schedule.now()) / (len(names) - i)
        tps = _probe(c, model, source, tok, until)
        rows.append((c.preset if name else f"init-from {Path(cfg.init_from).name}", model.config, tps))
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    probe_s = schedule.now() - t_start
    left = max(budget - probe_s, 0.0)  # under --plan auto this probe runs inside the budget
    rows_per_epoch = windows(train_r, val_r, seq).train_rows
    val_rows = windows(train_r, val_r, seq).val_rows
    eval_tokens = min(val_rows, max(1, cfg.eval_tokens // seq)) * seq if cfg.eval_tokens else 0
    cands = [_candidate(label, mcfg, tps, left, kind, fixed, cfg, seq, micro, rows_per_epoch, eval_tokens, peak)
             for label, mcfg, tps in rows]
    eligible = [c for c in cands if c.eligible]
    chosen = max(eligible, key=lambda c: c.params) if eligible else min(cands, key=lambda c: c.params)
    notes = []
    if not eligible and len(cands) > 1:
        notes.append("no shape meets the rules for this budget; the smallest is chosen (give it more minutes)")
    if note := recipes.repetition_note(chosen.epochs, rows_per_epoch * seq):
        notes.append(note)
    return TrainingPlan(minutes=float(minutes), device=str(dev), data=str(cfg.data),
                        train_tokens=rows_per_epoch * seq, probe_s=round(probe_s, 2), chosen=chosen,
                        candidates=cands, notes=notes)


def _candidate(label: str, mcfg, tps: float, left: float, kind: str, fixed: dict[str, Any], cfg: TrainConfig,
               seq: int, micro: int, rows_per_epoch: int, eval_tokens: int, peak: float | None) -> Candidate:
    params = mcfg.num_parameters()
    r = recipes.recipe_for(kind, hidden_size=mcfg.hidden_size, params=params, tokens_per_s=tps, budget_s=left,
                           train_tokens=rows_per_epoch * seq, seq_len=seq, micro_batch=micro,
                           global_batch_tokens=fixed.get("global_batch_tokens"))
    batch = r.global_batch_tokens
    step_s = batch / max(tps, 1e-9)
    # The same estimates the trainer's time plan starts from, and the same step arithmetic.
    eval_s = schedule.estimate_eval_s(eval_tokens, cfg.sample_tokens if eval_tokens else 0, tps)
    save_s = schedule.estimate_save_s(params)
    rough = schedule.steps_that_fit(left - eval_s - save_s, step_s)
    eval_every = fixed.get("eval_every", recipes.every(rough, recipes.EVALS_PER_RUN, eval_s, step_s,
                                                       recipes.EVAL_SHARE))
    save_every = fixed.get("save_every", recipes.every(rough, recipes.SAVES_PER_RUN, save_s, step_s,
                                                       recipes.SAVE_SHARE))
    steps = schedule.steps_that_fit(left - eval_s - save_s, step_s, eval_s, save_s, eval_every, save_every)
    # The user's --max-steps/--max-epochs bound, derived as the trainer will (TrainConfig.with_epochs_cap).
    bound = cfg.replace(seq_len=seq, global_batch_tokens=batch, max_steps=fixed.get("max_steps"))
    if (cap := bound.with_epochs_cap(rows_per_epoch).max_steps) is not None:
        steps = min(steps, cap)
    warmup = fixed.get("warmup_steps", recipes.warmup_for(steps))
    return Candidate(
        preset=label, params=params, seq_len=seq, micro_batch=micro, global_batch_tokens=batch,
        lr=fixed.get("lr", r.lr), warmup_steps=warmup, schedule=fixed.get("schedule", r.schedule),
        decay_fraction=fixed.get("decay_fraction", r.decay_fraction),
        min_lr_ratio=fixed.get("min_lr_ratio", recipes.MIN_LR_RATIO), eval_every=eval_every,
        save_every=save_every, steps=steps, tokens=steps * batch, epochs=steps * batch / max(1, rows_per_epoch * seq),
        tokens_per_s=round(tps, 1), mfu=(tps * mcfg.flops_per_token(seq) / peak) if peak else None,
        eligible=r.eligible, why=r.why)


def plan_for_config(cfg: TrainConfig, chosen_by_user: dict[str, Any]) -> TrainingPlan:
    """The plan ``--plan auto`` applies to ``cfg`` (what the user chose stays fixed)."""
    assert cfg.max_minutes is not None
    keep = (*PLANNED, "tokenizer", "init_from", "threads", "kernels", "eval_tokens", "sample_tokens", "seed",
            "max_steps", "max_epochs", "dtype", "compile")
    return plan(cfg.max_minutes, data=cfg.data, device=cfg.device,
                **{k: v for k, v in chosen_by_user.items() if k in keep})
