"""``TrainConfig``: every knob of ``vnmini train`` / ``vnmini sft`` in one dataclass, plus TOML loading.

The dataclass holds the defaults; a TOML file overrides them; command-line
flags (or keyword arguments of :func:`vnmini.train`) override the file::

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

SCHEDULES = ("cosine", "wsd", "constant")
KERNEL_CHOICES = ("auto", "numba", "torch")


@dataclass
class TrainConfig:
    # ---- data and model
    data: str = ""  # token shard folder (pretrain) or messages JSONL (sft)
    tokenizer: str | None = None  # tokenizer.json / folder; default: the one in the shard folder
    out: str = "runs/train"  # run folder: step_NNNNNN/, final/, metrics.jsonl, loss.png
    preset: str = "tiny"  # model shape (vnmini.models.PRESETS) when not starting from a checkpoint
    init_from: str | None = None  # start from this checkpoint folder (sft: required)
    seq_len: int = 256
    # ---- batch: global_batch_tokens = micro_batch * seq_len * grad_accum * world_size
    micro_batch: int = 8  # sequences per process per forward
    global_batch_tokens: int = 16384
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early (with a final checkpoint) after this wall time
    # ---- optimizer and schedule
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    decay_fraction: float = 0.2  # wsd: last fraction of steps that decays linearly
    weight_decay: float = 0.1  # not applied to norms, biases, embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    # ---- evaluation and samples
    eval_every: int = 100  # 0: only at the end
    eval_tokens: int = 65536  # validation tokens per evaluation (per run, split across ranks)
    sample_prompt: str = "Điều 1."
    sample_tokens: int = 40  # 0 disables sample generations
    # ---- checkpoints
    save_every: int = 500  # 0: only the final checkpoint
    keep_last: int = 2
    resume: bool = False
    # ---- system
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False
    kernels: str = "auto"  # cross-entropy backend: auto | numba | torch
    fsdp: bool = False  # FSDP2 fully_shard instead of DDP under torchrun
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    log_every: int = 10
    progress: bool = True
    # ---- sft only
    val_fraction: float = 0.05  # conversations held out for evaluation
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # free-form provenance

    def validate(self) -> TrainConfig:
        def bad(flag: str, why: str) -> VnminiError:
            return VnminiError(f"--{flag.replace('_', '-')}: {why}")

        for name in ("seq_len", "micro_batch", "global_batch_tokens", "max_steps", "keep_last", "log_every"):
            if int(getattr(self, name)) < 1:
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
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise bad("grad_clip" if self.grad_clip < 0 else "weight_decay", "must be >= 0.")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "must be in [0, 1).")
        return self

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
    if path is not None:
        values.update(_flatten(_read_toml(Path(path)), str(path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, str(path) if path is not None else "config")
