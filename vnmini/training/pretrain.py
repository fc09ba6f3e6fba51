"""``vnmini.train(...)``: pretrain a decoder from scratch on token shards (the twin of ``vnmini train``).

    import vnmini
    summary = vnmini.train(data="shards/", preset="tiny", out="runs/tiny", max_steps=2000)
    summary = vnmini.train("teacher.toml", lr=1e-3)             # a TOML file, keywords win
    summary = vnmini.train(config=cfg, resume=True)             # a TrainConfig
    summary = vnmini.train(data="shards/", plan="auto", max_minutes=10)   # shape/batch/lr from `vnmini plan`

Rows are non-overlapping windows of ``seq_len + 1`` tokens of the train split
(row j starts at token j·seq_len), so ``Batch.positions`` are exact offsets
into the shard stream (what a teacher cache aligned with the shards needs).
The tokenizer comes from ``tokenizer=`` (a folder or ``tokenizer.json``), else
``tokenizer.json`` in the shard folder, else the path recorded in the shard
manifest; its hash must match the manifest's.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vnmini.data.shards import ShardReader, load_manifest
from vnmini.errors import VnminiError
from vnmini.text.tokenizer import VnTokenizer
from vnmini.training.batch import Batch
from vnmini.training.config import TrainConfig, load_config, user_values
from vnmini.training.trainer import Trainer


class TokenWindows:
    """Train/val rows of a shard set: row j = tokens [j·T, j·T + T] of the split (T = seq_len)."""

    def __init__(self, train: ShardReader, val: ShardReader | None, seq_len: int) -> None:
        self.readers = {"train": train, "val": val}
        self.seq_len = seq_len
        self.train_rows = max(0, (len(train) - 1) // seq_len)
        self.val_rows = max(0, (len(val) - 1) // seq_len) if val is not None else 0

    def rows(self, split: str, idx: np.ndarray, step: int) -> Batch:
        reader, t = self.readers[split], self.seq_len
        assert reader is not None
        idx = np.asarray(idx, dtype=np.int64)
        buf = np.stack([reader.read(int(j) * t, t + 1) for j in idx])
        x = torch.from_numpy(buf)
        return Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous(), idx * t, step)


def resolve_tokenizer(data: str | Path, tokenizer: str | Path | None) -> VnTokenizer:
    """The run's tokenizer: ``tokenizer`` if given, else the shard folder's, else the manifest's source."""
    data = Path(data)
    manifest = load_manifest(data)
    candidates = [Path(tokenizer)] if tokenizer else [data / "tokenizer.json"]
    if not tokenizer and manifest.get("tokenizer_source"):
        candidates.append(Path(manifest["tokenizer_source"]))
    for c in candidates:
        if c.exists():
            tok = VnTokenizer.load(c)
            if tok.hash != manifest.get("tokenizer_hash"):
                raise VnminiError(f"--tokenizer {c}: hash {tok.hash} differs from the shards' "
                                  f"{manifest.get('tokenizer_hash')} ({data}/manifest.json); pass the tokenizer "
                                  "the shards were made with.")
            return tok
    if tokenizer:
        raise VnminiError(f"--tokenizer {tokenizer}: no such file or folder.")
    raise VnminiError(f"{data}: can't find the shards' tokenizer (looked at {', '.join(map(str, candidates))}); "
                      "pass --tokenizer PATH.")


def build_config(config: TrainConfig | str | Path | None, overrides: dict[str, Any],
                 base: dict[str, Any] | None = None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.replace(**{k: v for k, v in overrides.items() if v is not None}).validate()
    return load_config(config, overrides, base=base)


def make_model(cfg: TrainConfig, tok: VnTokenizer):
    """A fresh model of ``cfg.preset`` sized to the tokenizer (seeded init; the token embeddings from
    ``cfg.init_embeddings``' teacher if given), or ``cfg.init_from``."""
    from vnmini.models import LlamaForCausalLM, preset

    if cfg.init_from:
        from vnmini.checkpoint import load_checkpoint

        ck = load_checkpoint(cfg.init_from)
        if ck.tokenizer is not None and ck.tokenizer.hash != tok.hash:
            raise VnminiError(f"--init-from {cfg.init_from}: its tokenizer ({ck.tokenizer.hash}) is not the data's "
                              f"({tok.hash}); use data made with the checkpoint's tokenizer.")
        model = ck.model.float()
    else:
        mcfg = preset(cfg.preset, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(mcfg)
        from vnmini.training.rundir import find_resume_point

        if cfg.init_embeddings:
            # A resumed run loads its checkpoint over these weights: don't read the teacher (~80 s for Gemma) for
            # nothing; its checkpoints keep the record the fresh start wrote (vnmini.json "init_embeddings").
            found = find_resume_point(Path(cfg.out)) if cfg.resume else None
            if found is None:
                from vnmini.training.teacher_embed import init_embeddings_from

                cfg.extra["init_embeddings"] = init_embeddings_from(model, cfg.init_embeddings, tok)
            else:
                import json

                prev = json.loads((found / "vnmini.json").read_text(encoding="utf-8")).get("init_embeddings")
                if prev:
                    cfg.extra["init_embeddings"] = prev
    if cfg.seq_len > model.config.max_position_embeddings:
        raise VnminiError(f"--seq-len {cfg.seq_len} exceeds the model's context "
                          f"({model.config.max_position_embeddings}); lower --seq-len.")
    return model


def apply_auto_plan(cfg: TrainConfig, config: TrainConfig | str | Path | None,
                    overrides: dict[str, Any]) -> TrainConfig:
    """``--plan auto``: the settings :func:`vnmini.training.plan.plan` chooses, except those the user gave.

    A resumed run keeps the plan recorded in its checkpoint (same shape, no second probe).
    """
    import json

    from vnmini.training.plan import plan_for_config
    from vnmini.training.rundir import find_resume_point

    if isinstance(config, TrainConfig):
        defaults = TrainConfig()
        chosen = {k: v for k, v in config.to_dict().items() if k != "extra" and v != getattr(defaults, k)}
        chosen.update({k: v for k, v in overrides.items() if v is not None})
    else:
        chosen = user_values(config, overrides)
    found = find_resume_point(Path(cfg.out)) if cfg.resume else None
    prev = json.loads((found / "vnmini.json").read_text(encoding="utf-8")).get("plan") if found else None
    if prev:
        rec = prev
    else:
        tp = plan_for_config(cfg, chosen)
        rec = {"settings": tp.settings(), "chosen": dataclasses.asdict(tp.chosen), "minutes": tp.minutes,
               "device": tp.device, "probe_s": tp.probe_s, "notes": tp.notes}
        if _rank() == 0:
            c = tp.chosen
            print(f"plan auto ({tp.probe_s:.0f} s probe): {c.preset}, {c.global_batch_tokens:,}-token batches, "
                  f"lr {c.lr:.2e}, warmup {c.warmup_steps}, ~{c.steps} steps, {c.epochs:.2f} epochs at "
                  f"{c.tokens_per_s:,.0f} tok/s")
            for note in tp.notes:
                print(f"note: {note}")
        cfg.extra["budget_spent_s"] = tp.probe_s  # the probe ran on the budget's time
    cfg = cfg.replace(**{k: v for k, v in rec["settings"].items() if k not in chosen})
    cfg.extra["plan"] = rec
    return cfg.validate()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def train(config: TrainConfig | str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Pretrain per ``config`` (TrainConfig, TOML path or None) with keyword overrides; returns a summary.

    The summary has ``final`` (checkpoint folder), ``steps``, ``tokens``, ``epochs``,
    ``train_loss``, ``eval_loss``, ``eval_bpb``, ``tokens_per_s``, ``elapsed_s`` and,
    with ``max_minutes``, ``time_plan``.
    """
    cfg = build_config(config, overrides)
    if not cfg.data:
        raise VnminiError("--data: give the token shard folder made by `vnmini data prepare`.")
    group = None
    if cfg.plan == "auto":
        from vnmini.training import dist

        # Under torchrun the probe and the run share one process group (joined here, left at the end).
        group = dist.setup(cfg.device) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        try:
            cfg = apply_auto_plan(cfg, config, overrides)
        except BaseException:
            if group is not None:
                dist.teardown(group)
            raise
    try:
        return _train(cfg)
    finally:
        if group is not None:
            dist.teardown(group)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    tok = resolve_tokenizer(cfg.data, cfg.tokenizer)
    train_r = ShardReader(cfg.data, "train", tokenizer_hash=tok.hash)
    val_r = (ShardReader(cfg.data, "val", tokenizer_hash=tok.hash)
             if load_manifest(cfg.data)["splits"].get("val", {}).get("tokens") else None)
    model = make_model(cfg, tok)
    trainer = Trainer(cfg, model, TokenWindows(train_r, val_r, cfg.seq_len), tokenizer=tok, kind="pretrain")
    try:
        return trainer.fit()
    finally:
        trainer.close()
