"""Training recipes: the rule constants behind ``vnmini plan`` and ``--plan auto``, in one place.

A recipe turns (a model shape, its measured tokens/s, a time budget, the data
size) into batch, lr, warmup, schedule and step count. Presets, the quickstart
and the planner take their numbers from here, so they cannot disagree.

Evidence (issue 16; a 2-core x86 CPU, the default statute corpus):

- ``benchmarks/recipe_sweep.py --minutes 10`` (``benchmarks/results_recipes.md``;
  ``vnmini train --max-minutes 10`` then ``vnmini eval`` on the first 64 KiB of the
  held-out Civil Code): ``tiny`` with a **4k** BPE, 2,048-token batches, lr 3e-3,
  warmup 20, WSD with 20 % decay: **0.81** held-out bpb; the same with a 16k BPE:
  0.87. Vietnamese syllables are space-separated and the BPE never merges across a
  space, so 16k holds only 1.7 % fewer tokens than 4k on this corpus while its
  output layer costs 4x: at minutes-scale budgets the small vocabulary buys
  ~1.6x the steps (``QUICKSTART_VOCAB``).
- ``tiny``, ``--global-batch-tokens 2048 --warmup-steps 20 --schedule wsd``, 400
  steps (16k BPE, 819k tokens, ~4-5 min idle): 0.98 bpb on the first 16,384
  held-out tokens, where the quickstart of the time (8,192-token batches, 80 steps:
  about as many tokens) left its best artifact at 1.48: at minutes-scale budgets the
  number of optimizer steps matters more than the batch, so batches start small
  (``min_batch_tokens``) and grow only once the budget buys more than
  ``TARGET_STEPS`` steps.
- Repetition (``MAX_EPOCHS``, and why the planner takes the biggest eligible shape): ``tiny``
  given 33 minutes (``vnmini quickstart --minutes 60`` with a ``tiny`` teacher, 5,572
  steps of 2,048 tokens, 21 epochs of the 561k-token corpus, train loss 0.12) reached its
  best validation bpb, 0.615, near 7 epochs and ended at 0.811, **1.31 held-out**; the
  quickstart's 10-minute ``tiny`` teacher (2.3 epochs) scores 0.88 held-out.
- Epochs (``QUICKSTART_EPOCHS``, the laptop-hour profile's cap): ``tiny`` runs of 887, 1,335
  and 2,000 steps (3.2, 5.0, 7.5 epochs) scored 0.856, **0.813** and 0.853 held-out; ``mini``
  given 36 minutes (3.5 epochs, the hour profile of the time) 0.916, and a ``micro`` in 4.4
  minutes (5.4 epochs) 0.840: on this corpus the epochs count more than the shape. Chat SFT
  repeats too: 10 minutes of it (5.3 epochs of the statute Q&A) took that 5-epoch teacher
  from 0.810 to 1.152 held-out, while the 10-minute profile's ~70 s (0.7 epochs) costs ~0.006.
- ``benchmarks/train_tiny.py`` (``benchmarks/results_train.md``): ``tiny``, 8,192-token
  batches, cosine, 201 steps in 7.5 min: 1.118 held-out bpb (fewer, bigger steps).

Everything else below is a rule of thumb, marked ``# rule:``, until
``benchmarks/recipe_sweep.py`` measures it (``benchmarks/results_recipes.md``)::

    from vnmini.training.recipes import recipe_for
    r = recipe_for("cpu", hidden_size=192, params=5.5e6, tokens_per_s=3600, budget_s=600, train_tokens=1e6)
    r.global_batch_tokens, r.lr, r.warmup_steps, r.steps_hint
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceRules:
    candidates: tuple[str, ...]  # presets `vnmini plan` probes on this kind of device
    seq_len: int
    micro_batch: int
    min_batch_tokens: int
    max_batch_tokens: int


RULES = {
    # Measured: tiny at seq 256 × micro 8 and 2,048-token batches (the 0.98 bpb run above).
    # rule: mini is the biggest shape that can take a few hundred steps in an hour on 2 cores.
    "cpu": DeviceRules(candidates=("micro", "tiny", "mini"), seq_len=256, micro_batch=8,
                       min_batch_tokens=2048, max_batch_tokens=65536),
    # rule: the README's H100 teacher recipe (seq 2048, micro 8, up to 512k-token batches); unmeasured.
    "cuda": DeviceRules(candidates=("mini", "small", "medium", "large"), seq_len=2048, micro_batch=8,
                        min_batch_tokens=65536, max_batch_tokens=524288),
}

SCHEDULE = "wsd"  # measured: WSD beat cosine at minutes-scale budgets (quickstart note, the 0.98 run)
DECAY_FRACTION = 0.2  # rule: the common WSD choice (MiniCPM, SmolLM); swept by recipe_sweep.py
MIN_LR_RATIO = 0.1
TARGET_STEPS = 400  # measured: 400 steps of 2,048 tokens gave 0.98; batches grow only past this many steps
WARMUP_MIN = 20  # measured: 20 warmup steps in the 0.98 run (5% of it)
WARMUP_FRACTION = 0.05
WARMUP_MAX = 1000
LR_REF, LR_REF_WIDTH = 3e-3, 192  # measured at tiny (width 192); rule: lr ∝ 1/width above it (muP-style)
MIN_TOKENS_PER_PARAM = 0.1  # rule: the measured tiny run had 0.15; a shape that gets fewer tokens is too big
MIN_STEPS = 200  # rule: fewer optimizer steps than this and a smaller shape wins
MAX_EPOCHS = 4.0  # Muennighoff et al. 2023: up to ~4 epochs, repeated tokens are worth about as much as new
EVALS_PER_RUN = 8  # evals along a planned run (each costs forward time; the curve needs a few points)
SAVES_PER_RUN = 4  # resumable checkpoints along a planned run
EVAL_SHARE = 0.05  # ... but evals never take more than this share of the training time (fewer evals instead)
SAVE_SHARE = 0.02  # ... and checkpoints this share


def repetition_note(epochs: float, train_tokens: int) -> str | None:
    """The data-limited note for a run that repeats its data ``epochs`` times; None within ``MAX_EPOCHS``.

    ``vnmini plan`` prints it, and the trainer warns with it once a time budget buys
    more than twice as many epochs (measured: "Repetition" above).
    """
    if epochs <= MAX_EPOCHS:
        return None
    worse = (" a small model memorizes past a few epochs (tiny, 21 epochs of the statute corpus: 1.31 held-out "
             "bpb, against 0.88 after 2.3);" if epochs > 2 * MAX_EPOCHS else "")
    return (f"data-limited: {epochs:.1f} epochs over {train_tokens:,} training tokens; past ~{MAX_EPOCHS:g} epochs "
            f"repeated tokens are worth much less (Muennighoff et al. 2023) and{worse} cap the passes with "
            f"--max-epochs {QUICKSTART_EPOCHS:g}, or regularize with --dropout {QUICKSTART_DROPOUT:g} --max-epochs "
            f"{QUICKSTART_TEACHER_EPOCHS:g} (the laptop hour's teacher), take a bigger --preset "
            "(`vnmini plan --minutes M` picks one), add text, or give fewer minutes")


def steps_for_epochs(epochs: float, train_tokens: int, batch_tokens: int) -> int:
    """Optimizer steps that cover ``epochs`` passes over ``train_tokens`` in ``batch_tokens``-token batches.

    Any unit works as long as both are in it (the trainer passes rows and rows per step).
    """
    return max(1, math.ceil(epochs * train_tokens / batch_tokens))


def every(steps: int, per_run: int, pause_s: float, step_s: float, share: float) -> int:
    """Eval/save interval: ``per_run`` times a run, spaced so pauses stay under ``share`` of the step time."""
    cap = pause_s / max(share * step_s, 1e-12)
    return max(1, steps // per_run, int(cap + 0.999))


@dataclass(frozen=True)
class Recipe:
    seq_len: int
    micro_batch: int
    global_batch_tokens: int
    lr: float
    warmup_steps: int
    schedule: str
    decay_fraction: float
    steps_hint: int  # steps the budget buys at the measured rate, before eval/save pauses
    eligible: bool  # the rules' verdict on this shape for this budget
    why: str


def pow2_floor(x: float) -> int:
    n = 1
    while n * 2 <= x:
        n *= 2
    return n


def lr_for(hidden_size: int) -> float:
    return LR_REF * min(1.0, LR_REF_WIDTH / hidden_size)


def lr_of(preset_name: str) -> float:
    """The recipe's peak lr for a named preset (:func:`lr_for` its width)."""
    from vnmini.models.presets import PRESETS

    return lr_for(PRESETS[preset_name]["hidden_size"])


def batch_for(tokens: float, rules: DeviceRules, seq_len: int, micro_batch: int) -> int:
    """The global batch: small enough for TARGET_STEPS optimizer steps, a multiple of one forward."""
    per_forward = seq_len * micro_batch
    b = min(rules.max_batch_tokens, max(rules.min_batch_tokens, pow2_floor(tokens / TARGET_STEPS)))
    return max(per_forward, b // per_forward * per_forward)


def rules_for(device: str) -> DeviceRules:
    """The rules of a device string (``cuda``, ``cuda:1`` → the GPU rules; anything else → CPU)."""
    return RULES["cuda" if device.startswith("cuda") else "cpu"]


def micro_batch_for(global_batch_tokens: int, seq_len: int, device: str = "cpu") -> int:
    """Rows per forward: the device's micro batch, fewer when one optimizer step holds fewer rows
    (a 2,048-token step of 512-token rows is 4 rows, not 8)."""
    return max(1, min(rules_for(device).micro_batch, global_batch_tokens // seq_len))


def warmup_for(steps: int) -> int:
    return int(min(WARMUP_MAX, max(WARMUP_MIN, round(WARMUP_FRACTION * steps))))


def recipe_for(device: str, *, hidden_size: int, params: float, tokens_per_s: float, budget_s: float,
               train_tokens: float, seq_len: int | None = None, micro_batch: int | None = None,
               global_batch_tokens: int | None = None) -> Recipe:
    """The rules applied to one shape; pass ``seq_len``/``micro_batch``/``global_batch_tokens`` to fix them."""
    rules = rules_for(device)
    seq = seq_len or rules.seq_len
    micro = micro_batch or rules.micro_batch
    tokens = tokens_per_s * budget_s
    batch = global_batch_tokens or batch_for(tokens, rules, seq, micro)
    steps = int(tokens // batch)
    ratio = tokens / max(params, 1.0)
    if ratio < MIN_TOKENS_PER_PARAM:
        why = f"{ratio:.2f} tokens/param < {MIN_TOKENS_PER_PARAM}: too big for the budget"
    elif steps < MIN_STEPS:
        why = f"{steps} steps < {MIN_STEPS}: too slow for the budget"
    else:
        why = f"{ratio:.2f} tokens/param"
    return Recipe(seq, micro, batch, lr_for(hidden_size), warmup_for(steps), SCHEDULE, DECAY_FRACTION, steps,
                  ratio >= MIN_TOKENS_PER_PARAM and steps >= MIN_STEPS, why)

# The quickstart's numbers (vnmini.quickstart.PROFILES reads them; evidence: benchmarks/results_recipes.md).
QUICKSTART_VOCAB = 4096
# measured (held-out code, first 64 KiB, context 256; tiny, 4k BPE, 2,048-token batches, lr 3e-3, WSD): 0.856 bpb
# after 3.2 epochs of the statute corpus, 0.813 after 5.0, 0.853 after 7.5, 1.31 after 21: past ~5 epochs a small
# model memorizes the training statutes (their validation split keeps improving to ~7) and loses on unseen law.
QUICKSTART_EPOCHS = 5.0
# measured (benchmarks/results_dropout.md, same held-out text, one run on one host): dropout 0.1 on the embeddings
# and residual branches (--dropout) lets tiny use 8 epochs: 0.805 held-out (val 0.551), where 5 epochs without it
# scored 0.811 (val 0.562) and 7.5 without it 0.853. The hour's teacher takes this; the short stages don't repeat.
# End to end (the hour quickstart, another host): that teacher 0.800, its chat q4_0 0.809. A same-recipe tiny
# student self-distilled from its top-32 cache (benchmarks/results_selfkd.md) scored 0.811: worse, so the
# hour keeps micro students.
QUICKSTART_TEACHER_EPOCHS = 8.0
QUICKSTART_DROPOUT = 0.1
# measured (benchmarks/results_dropout.md, the same script and held-out text, a slow host): that teacher on 512-token
# rows (same 2,048-token batches, 4 rows of 512) scored 0.782 held-out at context 512 and 0.784 at context 256,
# against 0.805 for 256-token rows: the longer rows, not the longer eval window, are the gain (its validation bpb
# was worse, 0.561 vs 0.551: it memorized the training statutes less). The hour profile trains every stage so.
QUICKSTART_HOUR_SEQ_LEN = 512
# measured (benchmarks/results_distill.md, micro from a far-ahead tiny teacher, 60 steps): α 0.9 beat scratch by
# 3.5% online / 3.8% from the cache, α 0.5 by 2.9% / 2.3%. Then, on held-out law: the 10-minute quickstart's KD
# student lost to its scratch control at α 0.9 (-1.0%, -1.8% in two runs) and beat it at α 1.0 (+2.6%, one run;
# pure KD also skips the CE pass, so it takes 12% more steps in the same minutes), and from Gemma α 1.0 beat α 0.8
# (6.8% against 3.6% better than scratch, benchmarks/results_distill_gemma*.md): more teacher, less memorized text.
KD_ALPHA = 1.0
# Chat SFT on the statute Q&A (benchmarks/results_sft_cost.md; from the hour teacher, held-out 0.810): lr 1e-3
# (the recipe lr / 3) for 200 steps cost +0.026 held-out bpb with SFT val 0.364; lr 3e-4 (/ 10) +0.008 and 0.359,
# better on both. Twice the steps at 3e-4 learn the answers better (0.346) but cost +0.022, unless the articles
# themselves are mixed in as plain text (replay 1.0: as many prose characters as answer characters): +0.005 and
# 0.344, the best of both. lr 1e-4 costs least (replay, 200 steps: -0.001) but answers worst (0.378).
SFT_LR_SCALE = 0.1
# measured (the hour quickstart, its 512-row teacher at 0.783 held-out; chat SFT and everything after it rerun from
# the same teacher, ~160 steps each): lr 3e-4 (SFT_LR_SCALE) cost +0.015 held-out and its q4_0 scored 0.801 (SFT val
# 0.344); 2e-4 +0.010, q4_0 0.796 (0.351); 1e-4 +0.007, q4_0 0.794 (0.361). The hour takes 2e-4: under the 0.80
# target with answers close to 3e-4's.
QUICKSTART_HOUR_SFT_LR_SCALE = SFT_LR_SCALE * 2 / 3
SFT_REPLAY = 1.0
