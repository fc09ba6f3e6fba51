"""``TrainConfig``: every knob of ``vnmini train`` / ``vnmini sft`` in one dataclass, plus TOML loading.

The dataclass holds the defaults; a TOML file overrides them; command-line
flags (or keyword arguments of :func:`vnmini.training.pretrain`) override the file::

    cfg = load_config("teacher.toml", overrides={"lr": 1e-3})   # flags win
    cfg = TrainConfig(data="shards/", preset="tiny", max_steps=500)

A TOML file is flat (``preset = "large"``) or grouped in any tables
(``[optim] lr = 3e-4``): table names are ignored, keys must be field names.
Unknown keys are refused with the list of valid ones, so a typo never runs a
different experiment silently.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.training import recipes

SCHEDULES = ("cosine", "wsd", "constant")
DEFAULT_MAX_STEPS = 1000
UNBOUNDED_STEPS = 10**12  # --max-minutes without --max-steps: the time plan alone sets the step count
KERNEL_CHOICES = ("auto", "numba", "torch")


def _f(default: Any, help: str, shown: Any = None, **kw: Any) -> Any:
    """A field whose ``help`` is also the ``--flag`` help of every training verb (``shown``: the default to print)."""
    return field(default=default, metadata={"help": help, "shown": shown}, **kw)


@dataclass
class TrainConfig:
    # ---- data and model
    data: str = _f("", "Token shard folder from `vnmini data prepare` (sft: a messages JSONL).")
    tokenizer: str | None = _f(None, "Tokenizer folder/json (default: the shards' own).")
    out: str = _f("runs/train", "Run folder (step_NNNNNN/, final/, metrics.jsonl, loss.png).")
    preset: str = _f("tiny", "Model shape when not starting from a checkpoint: "
                             "micro, tiny, lite, mini, small, medium, large.")
    init_from: str | None = _f(None, "Start from this checkpoint folder instead of a fresh preset.")
    init_embeddings: str | None = _f(None, "Start a fresh model's token embeddings from this teacher's (a GGUF or "
                                           "checkpoint the tokenizer was adopted from), projected to its width by "
                                           "PCA.")
    seq_len: int = _f(256, "Tokens per sequence.")
    # ---- batch: global_batch_tokens = micro_batch * seq_len * grad_accum * world_size
    micro_batch: int = _f(8, "Sequences per process per forward.")
    global_batch_tokens: int = _f(16384, "Tokens per optimizer step (all processes).")
    max_steps: int | None = _f(None, "Optimizer steps; with --max-minutes an upper bound (unset there: as many as "
                                     "fit in the time).", shown=DEFAULT_MAX_STEPS)
    max_minutes: float | None = _f(None, "Wall-time budget: the step count and the lr decay are planned from the "
                                         "measured throughput so the run ends decayed, evaluated and "
                                         "checkpointed at the deadline.")
    max_epochs: float | None = _f(None, "Stop after this many passes over the training rows (an upper bound with "
                                        "--max-steps/--max-minutes; the lr decay ends where the run does).")
    plan: str | None = _f(None, "auto: with --max-minutes, pick preset, batch, lr, warmup and schedule by a "
                                "throughput probe (what `vnmini plan` prints); flags you set win.")
    # ---- optimizer and schedule
    lr: float = _f(3e-3, "Peak learning rate.")
    min_lr_ratio: float = _f(0.1, "Final lr as a fraction of --lr.")
    warmup_steps: int = _f(50, "Linear warmup steps.")
    schedule: str = _f("cosine", "cosine, wsd (warmup-stable-decay) or constant.")
    decay_fraction: float = _f(0.2, "wsd: the last fraction of steps, which decays linearly.")
    weight_decay: float = _f(0.1, "AdamW decay on matrices (not norms, biases, embeddings).")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.95, "AdamW beta2.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm (0 = off).")
    dropout: float = _f(0.0, "Dropout on the embeddings and residual branches while training (regularizes many "
                             "epochs over a small corpus; exports and eval have none).")
    # ---- evaluation and samples
    eval_every: int = _f(100, "Evaluate (loss, bits per byte, a sample) every N steps (0 = only at the end).")
    eval_tokens: int = _f(65536, "Validation tokens per evaluation (split across processes).")
    sample_prompt: str = _f("Điều 1.", "Prompt of the sample generation logged at each eval (sft: a user message).")
    sample_tokens: int = _f(40, "Tokens to sample at each eval (0 = none).")
    # ---- checkpoints
    save_every: int = _f(500, "Checkpoint every N steps (0 = only the final).")
    keep_last: int = _f(2, "Step checkpoints to keep.")
    resume: bool = _f(False, "Continue from the latest checkpoint in --out.")
    # ---- system
    seed: int = _f(1337, "Seeds the init and the data order.")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N.")
    dtype: str = _f("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), float32 or bfloat16.")
    compile: bool = _f(False, "torch.compile the model.")
    grad_checkpointing: bool = _f(False, "Activation checkpointing (less memory, ~30% slower).")
    kernels: str = _f("auto", "Loss kernels (cross-entropy, KD): auto, numba or torch.")
    fsdp: bool = _f(False, "Shard with FSDP2 instead of DDP under torchrun (teachers that don't fit one GPU).")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice).")
    log_every: int = _f(10, "Refresh tokens/s every N steps.")
    progress: bool = _f(True, "Show the progress bar.")
    # ---- sft only
    val_fraction: float = _f(0.05, "Conversations held out for evaluation (sft).")
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # free-form provenance

    def validate(self) -> TrainConfig:
        def bad(flag: str, why: str) -> VnminiError:
            return VnminiError(f"--{flag.replace('_', '-')}: {why}")

        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise bad("max_minutes", f"must be a positive number of minutes (got {self.max_minutes}).")
        if self.max_epochs is not None and not (math.isfinite(self.max_epochs) and self.max_epochs > 0):
            raise bad("max_epochs", f"must be a positive number of epochs (got {self.max_epochs}).")
        if self.max_steps is None and self.max_minutes is None and self.max_epochs is None:
            self.max_steps = DEFAULT_MAX_STEPS  # a step-only run keeps its historical default
        for name in ("seq_len", "micro_batch", "global_batch_tokens", "max_steps", "keep_last", "log_every"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise bad(name, f"must be >= 1 (got {getattr(self, name)}).")
        for name in ("warmup_steps", "eval_every", "save_every", "eval_tokens", "sample_tokens"):
            if int(getattr(self, name)) < 0:
                raise bad(name, f"must be >= 0 (got {getattr(self, name)}).")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", f"must be a positive number (got {self.lr}).")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1].")
        if not 0 < self.decay_fraction <= 1:
            raise bad("decay_fraction", "must be in (0, 1].")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"{self.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}.")
        if self.kernels not in KERNEL_CHOICES:
            raise bad("kernels", f"{self.kernels!r} is unknown; choose one of {', '.join(KERNEL_CHOICES)}.")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise bad("dtype", f"{self.dtype!r} is unknown; choose auto, float32 or bfloat16.")
        if self.init_embeddings and self.init_from:
            raise bad("init_embeddings", "starts a fresh preset's embeddings; --init-from already brings its "
                                         "checkpoint's own. Give one of them.")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", f"must be in [0, 1) (got {self.dropout}).")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise bad("grad_clip" if self.grad_clip < 0 else "weight_decay", "must be >= 0.")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "must be in [0, 1).")
        if self.plan not in (None, "auto"):
            raise bad("plan", f"{self.plan!r} is unknown; the only plan is auto.")
        if self.plan == "auto" and self.max_minutes is None:
            raise bad("plan", "auto plans for a time budget; add --max-minutes M.")
        return self

    @property
    def step_limit(self) -> int:
        """The most optimizer steps this run may take (``max_steps``, or unbounded under a time budget).

        A ``max_epochs`` cap is folded into ``max_steps`` by :meth:`with_epochs_cap` once the split is known.
        """
        return int(self.max_steps) if self.max_steps is not None else UNBOUNDED_STEPS

    def with_epochs_cap(self, train_rows: int) -> TrainConfig:
        """This config with ``max_epochs`` (if set) turned into a ``max_steps`` bound over ``train_rows`` rows.

        The trainer calls it when it knows the split; the time plan and the lr schedule then only ever see
        steps. Deterministic, so a resumed run re-derives the same bound.
        """
        if self.max_epochs is None:
            return self
        cap = recipes.steps_for_epochs(self.max_epochs, train_rows, self.global_batch_tokens // self.seq_len)
        return self.replace(max_steps=cap if self.max_steps is None else min(int(self.max_steps), cap))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def grad_accum(self, world_size: int = 1) -> int:
        """Micro steps per optimizer step so that one step sees ``global_batch_tokens``."""
        per = self.micro_batch * self.seq_len * world_size
        if self.global_batch_tokens % per:
            raise VnminiError(
                f"--global-batch-tokens {self.global_batch_tokens} is not a multiple of micro_batch × seq_len × "
                f"processes = {self.micro_batch} × {self.seq_len} × {world_size} = {per}; pick a multiple of {per}."
            )
        return self.global_batch_tokens // per


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
BOOL_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool))

# What `vnmini sft` changes from the TrainConfig defaults (fine-tuning wants a lower lr, shorter runs).
SFT_DEFAULTS: dict[str, Any] = dict(lr=3e-4, warmup_steps=20, max_steps=300, eval_every=50, save_every=100,
                                    global_batch_tokens=8192, micro_batch=8, seq_len=256, weight_decay=0.0,
                                    sample_prompt="Điều 1 của Bộ luật lao động năm 2019 quy định gì?",
                                    out="runs/sft")


def field_help(name: str, base: dict[str, Any] | None = None) -> str:
    """The ``--help`` text of TrainConfig field ``name``, ending in its default (``base`` wins)."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    default = (base or {}).get(name, f.default if f.metadata.get("shown") is None else f.metadata["shown"])
    # "(default: x)", not "[x]": typer renders help as rich markup, where "[cosine]" is a style tag and vanishes.
    if default is None or default == "" or isinstance(default, bool):
        return f.metadata["help"] + (" (default: on)" if default is True else "")
    return f"{f.metadata['help']} (default: {default})"


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise VnminiError(f"{path}: reading TOML on Python 3.10 needs `pip install tomli`.") from e
    if not path.is_file():
        raise VnminiError(f"--config {path}: no such file; pass a TOML file of TrainConfig fields.")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VnminiError(f"{path}: invalid TOML ({e}); fix the file.") from e


def _flatten(d: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "extra":
            for kk, vv in _flatten(v, source).items():
                if kk in out:
                    raise VnminiError(f"{source}: key {kk!r} is set twice; keep one.")
                out[kk] = vv
        else:
            out[k] = v
    return out


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated TrainConfig from a flat dict; unknown keys raise with the valid names."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise VnminiError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(FIELD_NAMES)}.")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    clean: dict[str, Any] = {}
    for k, v in values.items():
        t = str(types[k])
        if v is not None and t.startswith("int") and isinstance(v, float) and v.is_integer():
            v = int(v)
        if v is not None and t.startswith("float") and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        clean[k] = v
    return TrainConfig(**clean).validate()


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults ← ``base`` (e.g. SFT's defaults) ← TOML file ``path`` ← ``overrides`` (None values ignored)."""
    values: dict[str, Any] = dict(base or {})
    chosen = user_values(path, overrides)
    values.update(chosen)
    if (values.get("max_minutes") is not None or values.get("max_epochs") is not None) and "max_steps" not in chosen:
        values.pop("max_steps", None)  # a base's step count is a default, not a bound on a time or epochs budget
    return config_from_dict(values, str(path) if path is not None else "config")


def user_values(path: str | Path | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """What the user chose: the TOML file's settings, then the non-None ``overrides`` (flags) on top."""
    values = _flatten(_read_toml(Path(path)), str(path)) if path is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values
