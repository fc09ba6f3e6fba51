"""The training loop shared by ``vnmini train``, ``vnmini sft`` and ``vnmini distill``.

:class:`Trainer` owns everything that is not the loss: deterministic data
order, gradient accumulation to a global batch, AdamW with decay groups, the
lr schedule, clipping, bf16 autocast / ``torch.compile`` / activation
checkpointing, DDP or FSDP2 under ``torchrun``, evaluation (loss and bits per
byte), sample generations, atomic HF checkpoints with ``trainer_state.pt``,
exact resume, the NaN guard, the progress bar, ``metrics.jsonl`` and
``loss.png``. Only rank 0 prints and writes.

The hooks (what a new kind of training plugs in)::

    source  : BatchSource   # .train_rows, .val_rows, .rows(split, idx, step) -> Batch
    loss_fn : (module, batch) -> (loss, {"name": float, ...})   # default: cross-entropy
    forward : (module, batch) -> logits [B, T, V]               # used by eval; default module(batch.input_ids)

The lr schedule and the ``--max-minutes`` plan live in :mod:`vnmini.training.schedule`:
with a time budget the loop measures its own throughput, plans the step count and
the WSD decay to end at the deadline, and keeps the plan in ``trainer_state.pt``.
Epochs over the training rows are reported in the progress line, ``metrics.jsonl``
and ``vnmini.json``.

What a step consumes (:class:`Batch`, :class:`BatchSource`, the loss hooks) lives in
:mod:`vnmini.training.batch`; distillation is a loss function::

    def kd_loss(module, batch):
        logits = module(batch.input_ids)
        ids, logp = cache.lookup(batch.positions, T)            # teacher top-k for those tokens
        kd = sparse_kd_loss(logits, ids, logp, ...)
        ce = cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
        return alpha * kd + (1 - alpha) * ce, {"kd": kd.item(), "ce": ce.item()}

    Trainer(cfg, student, source, tokenizer=tok, loss_fn=kd_loss, kind="distill").fit()

Data order: the global batch of step ``s`` is rows ``[s·G, (s+1)·G)`` of an
endless stream that visits every training row once per epoch in the order of
``numpy.random.default_rng([seed, epoch]).permutation``. Micro step ``m`` of
rank ``r`` takes the ``(m·world + r)``-th slice of ``micro_batch`` rows, so a
resumed run needs only the step number and N processes see exactly the rows of
one process with the same global batch. Eval always scores cross-entropy on the
first ``eval_tokens`` of the validation rows.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vnmini.atomic import atomic_path, write_text
from vnmini.checkpoint import load_checkpoint, save_checkpoint
from vnmini.errors import VnminiError
from vnmini.metrics import BpbMeter
from vnmini.outputs import run_lock
from vnmini.paths import describe_kind, path_kind
from vnmini.progress import progress_bar
from vnmini.training import dist, recipes, schedule
from vnmini.training.batch import Batch, BatchSource, ForwardFn, LossFn, ce_loss, default_forward
from vnmini.training.config import TrainConfig
from vnmini.training.rundir import (
    METRICS_FILE,
    PLOT_FILE,
    RESUME_HINT,
    STATE_FILE,
    Interrupted,
    clean_stale,
    find_resume_point,
    prune_steps,
    read_metrics,
    saved_step,
)
from vnmini.training.schedule import TimeBudget, TimePlan, lr_at, plan_message, stop_step


@functools.lru_cache(maxsize=4)
def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_rows(seed: int, step: int, global_seqs: int, n_rows: int) -> np.ndarray:
    """Row indices of the whole global batch of ``step`` (deterministic from seed and step)."""
    j = np.arange(step * global_seqs, (step + 1) * global_seqs, dtype=np.int64)
    epochs = j // n_rows
    out = np.empty_like(j)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _epoch_perm(seed, int(e), n_rows)[j[sel] % n_rows]
    return out


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases or embeddings (tied heads count as embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) parameters appear once, under the embedding
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """One training run: ``Trainer(cfg, model, source, tokenizer=tok).fit() -> summary dict``.

    ``model`` is the :class:`vnmini.models.LlamaForCausalLM` that gets saved;
    ``module`` (default: the model) is what ``loss_fn``/``forward`` call, e.g. a
    wrapper that adds segment masks, and must hold the model's parameters.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        source: BatchSource,
        tokenizer=None,
        loss_fn: LossFn | None = None,
        forward: ForwardFn | None = None,
        module: nn.Module | None = None,
        kind: str = "pretrain",
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg.validate()
        self.model, self.source, self.tokenizer, self.kind = model, source, tokenizer, kind
        if hasattr(model, "set_kernels"):
            # RMSNorm/RoPE through vnmini.kernels too (numba on CPU); torch.compile fuses them itself.
            model.set_kernels("torch" if cfg.compile else cfg.kernels)
        self.forward = forward or default_forward
        self.loss_fn = loss_fn or ce_loss(cfg.kernels, self.forward)
        self.env = dist.setup(cfg.device)
        self.device = self.env.device
        self.is_main = self.env.rank == 0
        self.run_dir = Path(cfg.out)
        self._log = log or (print if self.is_main else (lambda s: None))
        self._warned_repetition = False
        self.accum = cfg.grad_accum(self.env.world_size)
        self.global_seqs = cfg.global_batch_tokens // cfg.seq_len
        if source.train_rows < 1:
            raise VnminiError(f"{cfg.data}: fewer than seq_len+1 = {cfg.seq_len + 1} training tokens; "
                              "lower --seq-len or add data.")
        # --max-epochs becomes a step bound here, where the split's size is known (the plan and lr see steps).
        self.cfg = cfg = self.cfg.with_epochs_cap(source.train_rows)
        from vnmini.kernels import set_threads

        self._prev_threads = set_threads(cfg.threads)  # torch and the Numba losses/norms, not every core
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and cuda)) else None
        model.gradient_checkpointing = cfg.grad_checkpointing
        if hasattr(model, "set_dropout"):
            model.set_dropout(cfg.dropout)
        # The dropout masks come from torch's global RNG: seed it per rank (the saved RNG state takes over on resume),
        # so a run is a function of --seed, and ranks draw different masks.
        torch.manual_seed(cfg.seed + 7919 * self.env.rank)
        model.to(self.device)
        self.module = dist.wrap(module or model, model, self.env, fsdp=cfg.fsdp, amp_dtype=self.amp_dtype)
        self._ddp = self.module if isinstance(self.module, nn.parallel.DistributedDataParallel) else None
        if cfg.compile:
            self.module = torch.compile(self.module)
        groups = decay_groups(model, cfg.weight_decay)
        # Fused AdamW: one kernel for all parameters (CUDA; on CPU it measured ~4x faster than the per-tensor loop).
        try:
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
        except (RuntimeError, TypeError):  # e.g. FSDP DTensors or a device without a fused kernel
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        self.step = 0
        self.tokens_seen = 0
        self.last_eval: dict[str, float] = {}
        self.flops_per_token = model.config.flops_per_token(cfg.seq_len) if hasattr(model, "config") else None
        self.peak_flops = dist.peak_flops(self.device)
        # One clock for tok/s, elapsed and the time plan; looked up per call so tests can patch schedule.now.
        self.clock = clock or (lambda: schedule.now())
        self.budget: TimeBudget | None = None
        self.plan: TimePlan | None = None  # the time plan the lr follows (a resumed one until fit() makes its own)
        self._last_ckpt: Path | None = None

    @property
    def epochs(self) -> float:
        """Passes over the training rows so far (the data order repeats each epoch in a new permutation)."""
        return self.step * self.global_seqs / self.source.train_rows

    # ----------------------------------------------------------- batches
    def _micro_batch(self, step: int, micro: int) -> Batch:
        rows = global_rows(self.cfg.seed, step, self.global_seqs, self.source.train_rows)
        b = self.cfg.micro_batch
        lo = (micro * self.env.world_size + self.env.rank) * b
        return self.source.rows("train", rows[lo : lo + b], step).to(self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Cross-entropy loss and bits per byte on the first ``eval_tokens`` validation tokens."""
        cfg, src, world = self.cfg, self.source, self.env.world_size
        n = self._eval_rows()
        if n <= 0:
            return {}
        token_bytes = torch.as_tensor(self.tokenizer.token_bytes, dtype=torch.float64, device=self.device)
        nll = torch.zeros(3, dtype=torch.float64, device=self.device)  # nll, tokens, bytes
        mine = np.arange(self.env.rank, n, world)
        was_training = self.module.training
        self.module.eval()
        for i in range(0, len(mine), cfg.micro_batch):
            batch = src.rows("val", mine[i : i + cfg.micro_batch], self.step).to(self.device)
            with self._autocast():
                logits = self.forward(self.module, batch)
            t = batch.targets.reshape(-1)
            valid = t != -100
            lg = logits.reshape(-1, logits.shape[-1])[valid].float()
            nll[0] += F.cross_entropy(lg, t[valid], reduction="sum").double()
            nll[1] += valid.sum()
            nll[2] += token_bytes[t[valid].clamp_min(0)].sum()
        self.module.train(was_training)
        dist.all_reduce_sum(nll, self.env)
        meter = BpbMeter()
        meter.add_totals(float(nll[0]), int(nll[1]), int(nll[2]))
        return {"eval_loss": meter.loss, "eval_bpb": meter.bpb, "eval_tokens": meter.tokens}

    def sample(self) -> str | None:
        cfg = self.cfg
        if not (self.is_main and cfg.sample_tokens and self.tokenizer is not None) or cfg.fsdp:
            return None
        from vnmini.runtime.torch_backend import TorchGenerator

        was_training = self.model.training
        try:
            gen = TorchGenerator(self.model, self.tokenizer, self.device)
            if self.kind == "sft":
                ids = self.tokenizer.encode_chat([{"role": "user", "content": cfg.sample_prompt}])
                return gen.complete(ids, max_new_tokens=cfg.sample_tokens, temperature=0, add_bos=False)
            return gen.complete(cfg.sample_prompt, max_new_tokens=cfg.sample_tokens, temperature=0)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": dist.optimizer_state(self.model, self.opt, self.env, self.cfg.fsdp),
            "optimizer_format": "fsdp-full" if self.cfg.fsdp else "plain",
            "scheduler": {"schedule": self.cfg.schedule, "step": self.step,
                          "lr": lr_at(self.cfg, max(0, self.step - 1), self.plan),
                          "plan": self.budget.state() if self.budget else (self.plan.to_dict() if self.plan else None)},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
                "python": random.getstate(),
            },
            "data": {"seed": self.cfg.seed, "rows_consumed": self.step * self.global_seqs,
                     "train_rows": self.source.train_rows, "global_seqs": self.global_seqs},
            "config": self.cfg.to_dict(),
        }

    def save(self, name: str) -> Path | None:
        """Write ``run_dir/name`` (HF folder) then its ``trainer_state.pt``; all ranks must call."""
        full = dist.full_model(self.model, self.env, self.cfg.fsdp)
        state = self._state()
        if not self.is_main:
            return None
        folder = self.run_dir / name
        prov = {"kind": self.kind, "step": self.step, "tokens_seen": self.tokens_seen,
                "epochs": round(self.epochs, 4), "rows_per_epoch": self.source.train_rows,
                "tokens_per_epoch": self.source.train_rows * self.source.seq_len, "config": self.cfg.to_dict(),
                **{k: v for k, v in self.last_eval.items() if k.startswith("eval_")}}
        if state["scheduler"]["plan"]:
            prov["time_plan"] = state["scheduler"]["plan"]
        # What `--plan auto` chose (vnmini plan's table row); where --init-embeddings' rows came from.
        prov.update({k: self.cfg.extra[k] for k in ("plan", "init_embeddings") if self.cfg.extra.get(k)})
        save_checkpoint(full, folder, tokenizer=self.tokenizer, provenance=prov)
        # The HF folder is complete on its own; a run is resumable from it once this lands.
        with atomic_path(folder / STATE_FILE) as tmp:
            torch.save(state, tmp)
        if name != "final":
            prune_steps(self.run_dir, self.cfg.keep_last)
        return folder

    def _load(self, folder: Path) -> None:
        try:
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable state is the same user error
            raise VnminiError(f"{folder / STATE_FILE}: unreadable ({str(e)[:120]}); "
                              "delete that folder to resume from an older one.") from e
        want = "fsdp-full" if self.cfg.fsdp else "plain"
        if state.get("optimizer_format") != want:
            raise VnminiError(f"{folder}: saved with optimizer format {state.get('optimizer_format')}, this run needs "
                              f"{want}; resume with the same --fsdp setting.")
        ck = load_checkpoint(folder)
        have, want = ck.model.config, self.model.config
        shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim")
        diff = [f"{k} {getattr(have, k)} → {getattr(want, k)}" for k in shape if getattr(have, k) != getattr(want, k)]
        if diff:
            raise VnminiError(f"--resume {folder}: was saved with another model shape ({', '.join(diff)}); resume "
                              "with the run's own --preset/--tokenizer/--init-from, or choose another --out.")
        dist.load_model(self.model, ck.model.state_dict(), self.env, self.cfg.fsdp)
        dist.load_optimizer(self.model, self.opt, state["optimizer"], self.env, self.cfg.fsdp)
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.plan = TimePlan.from_dict(state.get("scheduler", {}).get("plan"))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        old = state.get("config", {})
        for key in ("seed", "seq_len", "global_batch_tokens", "data", "max_steps", "lr", "schedule"):
            if key in old and old[key] != getattr(self.cfg, key):
                self._log(f"note: {key} changed since the checkpoint ({old[key]!r} -> {getattr(self.cfg, key)!r})")

    def _prepare_run_dir(self) -> None:
        cfg = self.cfg
        if self.is_main:
            kind = path_kind(self.run_dir)
            self._fresh_dir = kind in ("missing", "empty-folder")
            if kind not in ("missing", "empty-folder", "run"):
                raise VnminiError(f"--out {self.run_dir}: is {describe_kind(kind)}, not a training run folder; "
                                  "choose another --out.")
            # Held until fit() ends; a second writer of the same folder fails at once.
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(run_lock(self.run_dir))
            # Leftovers of a killed save: temp folders/files from atomic_dir/atomic_path.
            clean_stale(self.run_dir)
        dist.barrier(self.env)
        found = find_resume_point(self.run_dir)
        if found is not None and not cfg.resume:
            raise VnminiError(f"{self.run_dir}: already holds checkpoints ({found.name}); pass --resume to continue "
                              "or choose another --out.")
        if found is not None:
            self._load(found)
            self._log(f"resumed from {found} at step {self.step}")
        elif cfg.resume and not getattr(self, "_fresh_dir", False):  # worth saying only about a used folder
            self._log(f"--resume: no checkpoint in {self.run_dir}; starting from step 0")
        if self.is_main:  # the log restarts where the checkpoint was taken
            keep = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= self.step]
            write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))

    def _write(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _plot(self) -> None:
        if self.is_main:
            from vnmini.training.plots import plot_metrics

            plot_metrics(read_metrics(self.run_dir), self.run_dir / PLOT_FILE,
                         title=f"{self.kind}: {self.run_dir.name}")

    def _eval_and_log(self) -> None:
        self.last_eval = self.evaluate()
        rec: dict[str, Any] = {"step": self.step, "tokens": self.tokens_seen, **self.last_eval}
        text = self.sample()
        if text is not None:
            rec["sample"] = text
        self._write(rec)
        if self.last_eval:
            self._log(f"step {self.step}: eval loss {self.last_eval['eval_loss']:.4f}, "
                      f"bpb {self.last_eval['eval_bpb']:.4f}"
                      + (f" | {text!r}" if text else ""))
        self._plot()

    # -------------------------------------------------------------- fit
    def train_step(self) -> tuple[float, float, float, dict[str, float]]:
        """One optimizer step over the global batch of ``self.step``: (lr, loss, grad norm, loss_fn extras)."""
        cfg = self.cfg
        lr = lr_at(cfg, self.step, self.plan)
        for g in self.opt.param_groups:
            g["lr"] = lr
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        extras: dict[str, float] = {}
        for m in range(self.accum):
            batch = self._micro_batch(self.step, m)
            # Gradients are all-reduced once per optimizer step, on the last micro step.
            sync = self._ddp.no_sync() if self._ddp and m < self.accum - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss, mets = self.loss_fn(self.module, batch)
                (loss / self.accum).backward()
            total += loss.detach().double()
            for k, v in mets.items():
                extras[k] = extras.get(k, 0.0) + float(v) / self.accum
        dist.all_reduce_sum(total, self.env)
        loss_val = float(total) / (self.accum * self.env.world_size)
        gnorm = dist.grad_norm_clip(self.model, cfg.grad_clip)
        if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
            last = self._last_ckpt
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise VnminiError(f"step {self.step + 1}: {'loss' if not math.isfinite(loss_val) else 'gradient norm'} "
                              f"is {loss_val if not math.isfinite(loss_val) else gnorm}; stopped ({where}). "
                              "Lower --lr, raise --warmup-steps or check the data, then --resume.")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += cfg.global_batch_tokens
        return lr, loss_val, gnorm, extras

    def _eval_rows(self) -> int:
        """Validation rows one eval scores (0: no eval), the same number on every rank."""
        cfg = self.cfg
        n = min(self.source.val_rows, max(1, cfg.eval_tokens // cfg.seq_len)) if cfg.eval_tokens else 0
        return n - n % self.env.world_size if self.tokenizer is not None else 0  # FSDP forwards are collective

    def _start_budget(self) -> None:
        if self.cfg.max_minutes is None:
            if self.plan is not None and self.plan.planned_steps:
                self._log(f"note: following the saved time plan ({self.plan.planned_steps} steps) without a clock")
            return
        self.budget = TimeBudget(self.cfg, self.env, n_params=sum(p.numel() for p in self.model.parameters()),
                                 eval_tokens=self._eval_rows() * self.cfg.seq_len, plan=self.plan, clock=self.clock)
        self.plan = self.budget.plan
        self._log(self.budget.start_message())

    def _stop_step(self) -> int:
        return stop_step(self.plan, self.cfg.step_limit)

    def _on_plan(self, reason: str, progress: Any) -> None:
        assert self.budget is not None
        self.plan = self.budget.plan
        rec = self.budget.record(self.step, reason, self.global_seqs, self.source.train_rows)
        self._write(rec)
        self._log(plan_message(rec))
        if rec["epochs_planned"] > 2 * recipes.MAX_EPOCHS and not self._warned_repetition:
            # Only well past MAX_EPOCHS: the planner already keeps planned runs near it (recipes.py, "Repetition").
            self._warned_repetition = True
            note = recipes.repetition_note(rec["epochs_planned"], self.source.train_rows * self.cfg.seq_len)
            self._log(f"warning: {note}.")
        progress.update(total=self._stop_step())

    @contextlib.contextmanager
    def _pause(self, kind: str):
        """An eval or save: out of the tok/s window and, under a time budget, measured as that kind of pause."""
        t = self.clock()
        with self.budget.pause(kind) if self.budget else contextlib.nullcontext():
            yield
        self._window_t += self.clock() - t

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        try:
            self._prepare_run_dir()
        except BaseException:
            self._release_lock()
            raise
        self.module.train()
        self._start_budget()
        total = self._stop_step() if self.budget is None or self.plan.planned_steps else None
        progress = progress_bar(
            "train", total or self.step + self.budget.probe_steps, enabled=self.is_main and cfg.progress,
            completed=self.step,
            fields="loss {task.fields[loss]} · lr {task.fields[lr]} · ep {task.fields[ep]} · "
                   "{task.fields[tps]} tok/s{task.fields[mfu]}",
            loss="-", lr="-", ep=f"{self.epochs:.2f}", tps="-", mfu="")
        t_start = self.clock()
        self._window_t, window_tok, tok_s = t_start, 0, 0.0
        self._last_ckpt = find_resume_point(self.run_dir)
        loss_val = float("nan")
        stopped_early = False
        try:
            try:
                while self.step < self._stop_step():
                    lr, loss_val, gnorm, extras = self.train_step()
                    window_tok += cfg.global_batch_tokens
                    if self.step % cfg.log_every == 0 or self.step >= self._stop_step():
                        now = self.clock()
                        tok_s = window_tok / max(now - self._window_t, 1e-9)
                        self._window_t, window_tok = now, 0
                    mfu = (tok_s * self.flops_per_token / (self.peak_flops * self.env.world_size)
                           if self.peak_flops and self.flops_per_token else None)
                    rec = {"step": self.step, "loss": loss_val, "lr": lr, "grad_norm": gnorm,
                           "tokens": self.tokens_seen, "epoch": round(self.epochs, 4), "tokens_per_s": round(tok_s, 1),
                           "elapsed_s": round(self.clock() - t_start, 3), **extras}
                    if mfu is not None:
                        rec["mfu"] = round(mfu, 4)
                    self._write(rec)
                    out_of_time = False
                    if self.budget is not None:
                        out_of_time, reason = self.budget.after_step(self.step, lr_at)
                        if reason:
                            self._on_plan(reason, progress)
                    progress.update(completed=self.step, loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", tps=f"{tok_s:,.0f}",
                                    ep=f"{self.epochs:.2f}", mfu=f" · MFU {mfu:.1%}" if mfu is not None else "")
                    done = self.step >= self._stop_step() or out_of_time
                    if (cfg.eval_every and self.step % cfg.eval_every == 0) or done:
                        with self._pause("eval"):
                            self._eval_and_log()
                    if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                        with self._pause("save"):
                            self._last_ckpt = self.save(f"step_{self.step:06d}") or self._last_ckpt
                    if out_of_time:
                        stopped_early = True
                        planned = f" of {self.plan.planned_steps} planned" if self.plan.planned_steps else ""
                        self._log(f"--max-minutes {cfg.max_minutes}: out of time at step {self.step}{planned}; "
                                  "stopping with the final eval and checkpoint")
                        break
            except KeyboardInterrupt:
                progress.close()
                raise self._interrupted() from None
            if not self.last_eval:  # resumed at (or past) the last step: nothing trained, still report
                self._eval_and_log()
            final = self.save("final")
        finally:
            progress.close()
            self._release_lock()
        out = {"run_dir": str(self.run_dir), "final": str(final) if final else None, "steps": self.step,
               "tokens": self.tokens_seen, "epochs": self.epochs, "train_loss": loss_val,
               "stopped_early": stopped_early, "elapsed_s": self.clock() - t_start, "tokens_per_s": tok_s,
               **self.last_eval}
        if self.budget is not None:
            out["time_plan"] = self.budget.state()
        return out

    def _release_lock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def _interrupted(self) -> VnminiError:
        """Ctrl-C: save a resumable checkpoint of the last finished step and say how to continue."""
        if self.env.world_size > 1:
            # The other ranks may be inside a collective; a save would hang. torchrun stops them all.
            return Interrupted(f"interrupted at step {self.step}; resume from the last checkpoint with --resume.")
        last = find_resume_point(self.run_dir)
        if self.step == 0:
            return Interrupted(f"interrupted before the first step; nothing to save in {self.run_dir}.")
        if last is not None and saved_step(last) == self.step:
            return Interrupted(f"interrupted at step {self.step}; {last} holds it. {RESUME_HINT}")
        self._log(f"interrupted: saving step {self.step} (Ctrl-C again to abandon it)")
        folder = self.save(f"step_{self.step:06d}")
        return Interrupted(f"interrupted at step {self.step}; saved {folder}. {RESUME_HINT}")

    def close(self) -> None:
        """Leave the process group (if this trainer joined it) and restore torch's thread count."""
        if self._ddp is not None:
            # Order matters with gloo: wait (GIL released) until every rank's collectives are done,
            # then drop the DDP reducer while the process group is still registered. Otherwise the
            # reducer's dealloc can run ~ProcessGroupGloo with the GIL held while a gloo thread
            # waits for the GIL to free a finished all-reduce's tensors: a deadlock at exit.
            dist.barrier(self.env)
            self.module = self._ddp.module
            self._ddp = None
            gc.collect()
        dist.teardown(self.env)
        from vnmini.kernels import restore_threads

        restore_threads(self._prev_threads)

