"""The learning-rate schedule, and the wall-clock plan that ``--max-minutes`` lays it over.

Without a time budget the schedule runs over ``max_steps`` (:func:`lr_at` with no
plan): linear warmup, then cosine, WSD (warmup-stable-decay) or constant.

With ``--max-minutes`` the budget is the knob and the step count follows from it.
:class:`TimeBudget` (rank 0 decides, every rank follows by broadcast):

1. **Probe.** The first ``max(warmup_steps, PROBE_STEPS)`` optimizer steps (or
   ``PROBE_FRACTION`` of the budget, if that comes first) are timed, eval/save
   pauses excluded and the first step of a process (JIT, caches) not counted.
2. **Plan.** ``planned_steps`` = the steps that fit in the time left after the
   expected eval/save pauses and the final eval + checkpoint (:func:`steps_that_fit`),
   capped by ``max_steps``. The WSD decay covers the last ``decay_fraction`` of the
   planned steps and reaches ``min_lr`` on the last planned step; cosine ends there.
   Pause costs start as estimates (:func:`estimate_eval_s`, :func:`estimate_save_s`)
   and become measured means; a process's first eval/save (imports, JIT, the first
   plot) only replaces the guess, it doesn't weigh on the mean.
3. **Re-plan** when the projected finish drifts from the deadline by more than
   ``REPLAN_TOLERANCE`` of the time left (late: and one step, at most every
   ``COMPRESS_GAP`` steps; early: and two steps, at most every ``REPLAN_GAP`` steps
   and ``REPLAN_GAP_FRACTION`` of the budget, at most ``MAX_REPLANS`` times; late re-plans
   are not capped, since they keep the run inside its deadline). Once the decay has
   begun its start stays; only the rest of it is stretched or compressed, from the
   current lr (the pivot), so the lr never jumps and the run never ends un-decayed
   because time ran short.
4. **Stop** at the planned step, or (hard stop) when the time left no longer covers
   the final eval + checkpoint.

The plan (:class:`TimePlan`, all numbers) is saved in ``trainer_state.pt`` with the
elapsed wall time, so ``--resume`` continues the same plan and the earlier segments
count against the budget. Measurements use :data:`now` unless a clock is passed
(tests drive a fake one)::

    from vnmini.training.schedule import TimeBudget, lr_at
    tb = TimeBudget(cfg, env, n_params=model.num_parameters(), eval_tokens=65536)
    while step < tb.stop_step(cfg.step_limit):
        lr = lr_at(cfg, step, tb.plan)          # plan not made yet: the max_steps schedule
        ...one optimizer step...; step += 1
        stop, reason = tb.after_step(step, lr_at)
        with tb.pause("eval"):
            evaluate()
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vnmini.training import dist
from vnmini.training.config import TrainConfig

now: Callable[[], float] = time.perf_counter  # the default clock; monkeypatch it to drive a fake one

PROBE_STEPS = 10  # at least this many timed steps before the first plan (noise in a 1-step sample is large)
PROBE_FRACTION = 0.05  # ... or this share of the budget, whichever comes first
WINDOW = 10  # re-plans use the mean of the last WINDOW steps: short, so a sudden slowdown shows within a few steps
REPLAN_TOLERANCE = 0.03  # of the time left: a smaller drift is noise, not worth moving the schedule
REPLAN_GAP = 10  # steps between two re-plans that lengthen the run, so one fast stretch can't cause a cascade
REPLAN_GAP_FRACTION = 0.02  # ... and this share of the budget in time (tiny steps make 10 steps no time at all)
COMPRESS_GAP = 3  # ... and before shortening it: running late costs the decay, so react sooner
# Measured (benchmarks/recipe_sweep.py, 10-minute runs): with a cap of 8, a few transient slowdowns early (another
# process on the 2 cores) used the re-plans up and the run stopped 18% short of its budget. Re-plans that
# lengthen the run are rate-limited by REPLAN_GAP_FRACTION instead (at most ~50), so their cap is a backstop.
# Measured again (the quickstart's hour, a 36-minute teacher on a host whose speed wandered): when the cap counted
# the shortening re-plans too, it ran out after ~70 and the run ended 10% short. Shortening re-plans are therefore
# not counted against it: they keep a run inside its deadline and cannot cycle without a lengthening one between.
MAX_REPLANS = 64
EVAL_SPEEDUP = 2.0  # an eval token costs ~1/3 of a training token (forward only); 2 leaves room for overhead
SAMPLE_S_PER_TOKEN = 0.02  # the logged sample generation, before its first measurement (CPU decode, batch 1)
SAVE_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments
SAVE_BYTES_PER_S = 200e6  # a conservative disk; the first real save replaces this guess
REASONS = ("probe", "slower", "faster", "budget")


@dataclass
class TimePlan:
    """Everything the time plan knows; numbers only, so it round-trips through a float tensor."""

    budget_s: float = 0.0
    planned_steps: int = 0  # 0: not planned yet (still probing)
    decay_start: int = 0  # wsd: first step of the decay
    pivot_step: int = 0  # the decay (or cosine) runs from (pivot_step, pivot_lr) to (planned_steps - 1, min lr)
    pivot_lr: float = 0.0
    step_s: float = 0.0  # measured seconds per optimizer step (pauses excluded)
    tokens_per_s: float = 0.0
    eval_s: float = 0.0  # expected seconds per eval (measured mean once one happened)
    save_s: float = 0.0  # expected seconds per checkpoint
    elapsed_s: float = 0.0  # wall time used so far (all segments), as of the last save
    replans: int = 0
    lengthened: int = 0  # the re-plans that lengthened the run ("faster"), the ones MAX_REPLANS caps
    last_plan_step: int = -1
    last_plan_s: float = 0.0  # elapsed time at the last (re-)plan
    measured_steps: int = 0
    measured_s: float = 0.0
    eval_n: int = 0  # steady evals in the running mean
    save_n: int = 0
    eval_seen: int = 0  # all evals measured (a process's first one only replaces the guess)
    save_seen: int = 0

    @property
    def final_s(self) -> float:
        """The reserve for the run's last eval and final checkpoint."""
        return self.eval_s + self.save_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TimePlan | None:
        if not d:
            return None
        names = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: (int(v) if names[k] in ("int", int) else float(v)) for k, v in d.items() if k in names})

    def to_vector(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in dataclasses.fields(self)]

    @classmethod
    def from_vector(cls, v: list[float]) -> TimePlan:
        return cls.from_dict(dict(zip([f.name for f in dataclasses.fields(cls)], v, strict=True)))  # type: ignore


def lr_at(cfg: TrainConfig, step: int, plan: TimePlan | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup then cosine / WSD / constant.

    Without a (made) ``plan`` the schedule is laid over ``max_steps`` (decaying to the
    min lr at step ``max_steps``). With one, the decay runs from the plan's pivot to the
    min lr *at* the last planned step, since a time-budgeted run ends on that step.
    """
    lo = cfg.lr * cfg.min_lr_ratio
    planned = plan is not None and plan.planned_steps and cfg.schedule != "constant"
    if planned and step >= plan.planned_steps - 1:
        return lo  # a planned run ends decayed, even one whose budget did not cover the warmup
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if planned:
        end = plan.planned_steps - 1
        if step < plan.pivot_step:
            return cfg.lr
        frac = (step - plan.pivot_step) / max(1, end - plan.pivot_step)
        if cfg.schedule == "wsd":
            return plan.pivot_lr + (lo - plan.pivot_lr) * frac
        return lo + 0.5 * (plan.pivot_lr - lo) * (1 + math.cos(math.pi * frac))
    total = cfg.step_limit
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, int(total * (1 - cfg.decay_fraction)))
        if step < decay_start:
            return cfg.lr
        frac = (step - decay_start) / max(1, total - decay_start)
        return cfg.lr + (lo - cfg.lr) * min(1.0, frac)
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, frac)))


def steps_that_fit(time_left_s: float, step_s: float, eval_s: float = 0.0, save_s: float = 0.0,
                   eval_every: int = 0, save_every: int = 0) -> int:
    """Optimizer steps that fit in ``time_left_s`` with eval/save pauses amortized per step."""
    per = per_step_s(step_s, eval_s, save_s, eval_every, save_every)
    return max(0, int(time_left_s / per + 1e-9)) if per > 0 else 0


def per_step_s(step_s: float, eval_s: float, save_s: float, eval_every: int, save_every: int) -> float:
    return step_s + (eval_s / eval_every if eval_every else 0.0) + (save_s / save_every if save_every else 0.0)


def estimate_eval_s(eval_tokens: int, sample_tokens: int, tokens_per_s: float) -> float:
    """Seconds of one eval (+ sample) before any was measured: forward-only tokens at the training rate."""
    return eval_tokens / (EVAL_SPEEDUP * max(tokens_per_s, 1e-9)) + sample_tokens * SAMPLE_S_PER_TOKEN


def estimate_save_s(n_params: int) -> float:
    return 0.2 + n_params * SAVE_BYTES_PER_PARAM / SAVE_BYTES_PER_S


def decay_steps(cfg: TrainConfig, planned: int) -> int:
    return max(1, round(cfg.decay_fraction * planned))


def stop_step(plan: TimePlan | None, limit: int) -> int:
    """The step a run ends on: its plan's (capped by ``limit``), or ``limit`` without a made plan."""
    return min(plan.planned_steps, limit) if plan is not None and plan.planned_steps else limit


def plan_message(rec: dict[str, Any]) -> str:
    """The log line of a ``{"event": "plan"}`` record."""
    decay = f", decay from step {rec['decay_start']}" if rec["decay_start"] is not None else ""
    return (f"plan ({rec['reason']}): {rec['planned_steps']} steps{decay}, {rec['tokens_per_s']:,.0f} tok/s, "
            f"{rec['epochs_planned']:.2f} epochs; {rec['budget_s'] - rec['elapsed_s']:.0f} s of "
            f"{rec['budget_s']:.0f} s left (reserve {rec['reserve_s']:.1f} s for the final eval + checkpoint)")


class TimeBudget:
    """The ``--max-minutes`` clock and planner of one training process (see the module docstring).

    ``plan`` is the saved plan of a resumed run (None: a fresh one); ``eval_tokens`` is
    what one eval scores on this run (0 when it has no validation data or tokenizer).
    """

    def __init__(self, cfg: TrainConfig, env: dist.DistEnv, *, n_params: int, eval_tokens: int,
                 plan: TimePlan | None = None, clock: Callable[[], float] | None = None) -> None:
        assert cfg.max_minutes is not None
        self.cfg, self.env = cfg, env
        self.clock = clock or (lambda: now())  # looked up per call, so monkeypatching `now` works
        self.n_params, self.eval_tokens = n_params, eval_tokens
        self.plan = plan or TimePlan()
        self._forced: str | None = None
        budget = cfg.max_minutes * 60
        if plan is not None and plan.planned_steps and abs(plan.budget_s - budget) > 1e-9:
            self._forced = "budget"  # the resumed run was given another --max-minutes: re-plan for it
        self.plan.budget_s = budget
        if plan is None:  # time spent before this run's first step on its behalf (the --plan auto probe)
            self.plan.elapsed_s = float(cfg.extra.get("budget_spent_s", 0.0))
        self.elapsed0 = self.plan.elapsed_s
        self.t0 = self._mark = self.clock()
        self._paused = 0.0
        self._first = True
        self._seen: set[str] = set()
        self._window: deque[float] = deque(maxlen=WINDOW)
        self.probe_steps = max(cfg.warmup_steps, PROBE_STEPS)

    # ---------------------------------------------------------- measuring
    def elapsed(self) -> float:
        """Wall seconds spent on this run, earlier segments (before a resume) included."""
        return self.elapsed0 + self.clock() - self.t0

    @contextlib.contextmanager
    def pause(self, kind: str) -> Iterator[None]:
        """Time an eval (``kind="eval"``) or a checkpoint (``"save"``): kept out of the step time."""
        t = self.clock()
        try:
            yield
        finally:
            d = self.clock() - t
            self._paused += d
            p = self.plan
            # A process's first eval/save also pays one-time costs (imports, JIT, the first plot): it
            # replaces the guess but is dropped from the running mean once a steady one is measured.
            first = kind not in self._seen
            self._seen.add(kind)
            if kind in ("eval", "save"):  # fields <kind>_seen, <kind>_n (steady count) and <kind>_s (mean)
                setattr(p, f"{kind}_seen", getattr(p, f"{kind}_seen") + 1)
                n, mean = getattr(p, f"{kind}_n"), getattr(p, f"{kind}_s")
                if first:
                    setattr(p, f"{kind}_s", d if not n else mean)
                else:
                    setattr(p, f"{kind}_n", n + 1)
                    setattr(p, f"{kind}_s", d if n == 0 else mean + (d - mean) / (n + 1))

    def _measure(self) -> None:
        t = self.clock()
        d = t - self._mark - self._paused
        self._mark, self._paused = t, 0.0
        if self._first:  # a process's first step compiles kernels and fills caches: not the steady rate
            self._first = False
            return
        self._window.append(d)
        self.plan.measured_steps += 1
        self.plan.measured_s += d

    def _step_s(self) -> float:
        p = self.plan
        w = list(self._window)
        if len(w) >= 3:
            # The slower of the last WINDOW steps and the last 3: a slowdown shows at once (running late costs the
            # decay), a speed-up only once it lasts (running early costs a few steps).
            return max(sum(w) / len(w), sum(w[-3:]) / 3)
        return p.measured_s / p.measured_steps if p.measured_steps else p.step_s

    def start_message(self) -> str:
        p, left = self.plan, self.plan.budget_s - self.elapsed0
        if p.planned_steps:
            return f"time plan: {p.planned_steps} steps, {left:.0f} s of the {p.budget_s:.0f} s budget left"
        return f"time budget {p.budget_s:.0f} s: timing the first {self.probe_steps} steps to plan the rest"

    # ----------------------------------------------------------- deciding
    def stop_step(self, limit: int) -> int:
        return stop_step(self.plan, limit)

    def after_step(self, step: int, lr_fn: Callable[[TrainConfig, int, TimePlan | None], float]
                   ) -> tuple[bool, str | None]:
        """Call after optimizer step ``step`` (1-based count). Returns (stop now, re-plan reason or None)."""
        self._measure()
        stop, reason = self._decide(step, lr_fn) if self.env.rank == 0 else (False, None)
        if self.env.distributed:  # rank 0's decision, the same on every rank
            v = dist.broadcast_floats([float(stop), float(REASONS.index(reason) + 1 if reason else 0),
                                       *self.plan.to_vector()], self.env)
            stop, reason = bool(v[0]), (REASONS[int(v[1]) - 1] if v[1] else None)
            self.plan = TimePlan.from_vector(v[2:])
        return stop, reason

    def _estimates(self, step_s: float) -> None:
        p = self.plan
        tps = self.cfg.global_batch_tokens / max(step_s, 1e-12)
        if not p.eval_seen:
            p.eval_s = estimate_eval_s(self.eval_tokens, self.cfg.sample_tokens if self.eval_tokens else 0, tps)
        if not p.save_seen:
            p.save_s = estimate_save_s(self.n_params)
        p.step_s, p.tokens_per_s = step_s, tps

    def _decide(self, step: int, lr_fn: Callable) -> tuple[bool, str | None]:
        cfg, p = self.cfg, self.plan
        el = self.elapsed()
        step_s = self._step_s()
        if step_s > 0:
            self._estimates(step_s)
        reason: str | None = None
        if not p.planned_steps:
            probed = p.measured_steps >= self.probe_steps or (
                p.measured_steps >= 2 and el >= PROBE_FRACTION * p.budget_s)
            reason = "probe" if probed else None
        elif self._forced:
            reason, self._forced = self._forced, None
        elif step < p.planned_steps:
            per = per_step_s(p.step_s, p.eval_s, p.save_s, cfg.eval_every, cfg.save_every)
            err = el + (p.planned_steps - step) * per + p.final_s - p.budget_s  # > 0: would end late
            tol = REPLAN_TOLERANCE * (p.budget_s - el)
            since = step - p.last_plan_step
            if err > max(tol, per) and since >= COMPRESS_GAP:
                reason = "slower"
            elif (err < -max(tol, 2 * per) and since >= REPLAN_GAP and p.lengthened < MAX_REPLANS
                  and el - p.last_plan_s >= REPLAN_GAP_FRACTION * p.budget_s and p.planned_steps < cfg.step_limit):
                reason = "faster"
        if reason is not None and p.step_s > 0:
            self._replan(step, el, lr_fn)
            p.lengthened += reason == "faster"
        else:
            reason = None
        # Hard stop: the time left covers no more than the final eval and checkpoint.
        stop = step < self.stop_step(cfg.step_limit) and el + p.final_s >= p.budget_s - 1e-9
        return stop, reason

    def _replan(self, step: int, elapsed: float, lr_fn: Callable) -> None:
        cfg, p = self.cfg, self.plan
        old = dataclasses.replace(p)
        left = p.budget_s - elapsed - p.final_s
        n = steps_that_fit(left, p.step_s, p.eval_s, p.save_s, cfg.eval_every, cfg.save_every)
        planned = max(step, min(cfg.step_limit, step + n))
        # lr of the next step under the old plan: the pivot that keeps the curve continuous.
        lr_next = lr_fn(cfg, step, old if old.planned_steps else None)
        p.planned_steps = planned
        if cfg.schedule == "wsd":
            begun = old.planned_steps and step > old.decay_start
            if not begun:
                p.decay_start = planned - decay_steps(cfg, planned)
                if p.decay_start < cfg.warmup_steps < planned - 1:
                    p.decay_start = cfg.warmup_steps  # decay only after a finished warmup, when that fits
                if p.decay_start < step:  # time is short: the decay starts now, from the current lr
                    p.decay_start = step
                p.pivot_step = p.decay_start
                p.pivot_lr = cfg.lr if p.decay_start > step else lr_next
            else:  # decay running: keep its start, stretch/compress the rest from here
                p.pivot_step, p.pivot_lr = step, lr_next
        else:
            p.pivot_step = max(step, cfg.warmup_steps)
            p.pivot_lr = cfg.lr if step <= cfg.warmup_steps else lr_next
            p.decay_start = p.pivot_step
        p.replans += 1
        p.last_plan_step, p.last_plan_s = step, elapsed

    def record(self, step: int, reason: str, rows_per_step: int, train_rows: int) -> dict[str, Any]:
        """The ``metrics.jsonl`` record of a (re-)plan."""
        p = self.plan
        return {"event": "plan", "step": step, "reason": reason, "planned_steps": p.planned_steps,
                "decay_start": p.decay_start if self.cfg.schedule == "wsd" else None,
                "tokens_per_s": round(p.tokens_per_s, 1), "step_s": round(p.step_s, 6),
                "eval_s": round(p.eval_s, 4), "save_s": round(p.save_s, 4), "budget_s": p.budget_s,
                "elapsed_s": round(self.elapsed(), 3), "reserve_s": round(p.final_s, 4), "replans": p.replans,
                "epochs_planned": round(p.planned_steps * rows_per_step / max(1, train_rows), 4)}

    def state(self) -> dict[str, Any]:
        """The plan as saved in ``trainer_state.pt`` (with the elapsed time as of now)."""
        self.plan.elapsed_s = self.elapsed()
        return self.plan.to_dict()
