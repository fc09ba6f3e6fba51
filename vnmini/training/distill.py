"""``vnmini.distill(...)``: a small student learns from a big teacher (the twin of ``vnmini distill``).

Three ways, one entry point::

    import vnmini
    # 1. online logits: the teacher runs next to the student every step
    vnmini.distill(teacher="runs/mini/final", data="shards/", preset="micro", out="runs/kd", max_steps=500)
    # 2. from an offline cache written once by `vnmini teacher cache` (no teacher in memory)
    vnmini.distill(teacher_cache="cache/", data="shards/", preset="micro", out="runs/kd-cache", max_steps=500)
    # 3. sequence-level: train on text the teacher wrote (`vnmini teacher generate`)
    vnmini.distill(teacher_text="teacher.jsonl", tokenizer="tok/", preset="micro", out="runs/seqkd")

Loss (1 and 2), per batch: ``alpha · D(teacher ‖ student) + (1 − alpha) · CE``, with D
forward KL, reverse KL or skew KL (DistiLLM; ``skew_lambda``), at temperature τ and
scaled by τ² (the KD gradient then keeps its size as τ grows). The dense KL is
``vnmini.kernels.kd_loss``; the cache uses ``vnmini.kernels.sparse_kd_loss`` over the k
cached ids plus one bucket for the leftover mass. Everything else — data order,
resume, eval bits per byte, torchrun, progress, ``metrics.jsonl``, ``loss.png`` — is
:class:`vnmini.training.trainer.Trainer`, exactly as in ``vnmini train``; the distillation
settings are recorded in the checkpoint's ``vnmini.json`` (``config.extra.distill``).

Logit distillation needs the student's vocabulary to be the teacher's or a subset of
it adopted with ``vnmini tokenizer adopt`` (then the teacher — a checkpoint or a GGUF —
is read through the student's ``teacher_map.json``, :mod:`vnmini.training.mapped_teacher`);
anything else is refused before any work, naming both vocabularies. Sequence-level distillation
has no such constraint (the teacher may be any backend, a GGUF included).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vnmini.data.shards import ShardReader, load_manifest
from vnmini.errors import VnminiError
from vnmini.training import recipes
from vnmini.training.batch import Batch, LossFn, cross_entropy_fn
from vnmini.training.config import TrainConfig
from vnmini.training.mapped_teacher import MappedTeacher, is_same_vocab, open_mapped_teacher
from vnmini.training.pretrain import TokenWindows, build_config, make_model, resolve_tokenizer
from vnmini.training.teacher_cache import (
    Teacher,
    TeacherCache,
    check_same_tokenizer,
    decode_topk,
    encode_topk,
    load_teacher,
    shards_fingerprint,
)
from vnmini.training.trainer import Trainer

KINDS = ("forward", "reverse", "skew")


def check_kd_settings(alpha: float, kind: str, temperature: float, skew_lambda: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise VnminiError(f"--alpha {alpha}: must be in [0, 1] (weight of the KD term; 1 - alpha weighs the CE).")
    if kind not in KINDS:
        raise VnminiError(f"--kd {kind!r}: choose one of {', '.join(KINDS)}.")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise VnminiError(f"--temperature {temperature}: must be a positive number.")
    if not 0.0 <= skew_lambda < 1.0:
        raise VnminiError(f"--skew-lambda {skew_lambda}: must be in [0, 1).")


def _combine(kd: torch.Tensor | None, ce: torch.Tensor | None, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    mets: dict[str, float] = {}
    total = None
    if kd is not None:
        mets["kd"] = float(kd.detach())
        total = alpha * kd
    if ce is not None:
        mets["ce"] = float(ce.detach())
        total = (1 - alpha) * ce if total is None else total + (1 - alpha) * ce
    assert total is not None
    return total, mets


def online_loss(teacher: Teacher, alpha: float = 0.5, kind: str = "forward", temperature: float = 1.0,
                skew_lambda: float = 0.1, kernels: str = "auto") -> LossFn:
    """Trainer loss hook: the teacher scores the batch's inputs, the student matches its logits."""
    ce_fn = cross_entropy_fn(kernels)

    def loss_fn(module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from vnmini.kernels import kd_loss

        logits = module(batch.input_ids)
        v = logits.shape[-1]
        flat = logits.reshape(-1, v)
        targets = batch.targets.reshape(-1)
        kd = ce = None
        if alpha > 0:
            t = teacher.logits(batch.input_ids, v).reshape(-1, v).to(flat.device, non_blocking=True)
            kd = kd_loss(flat, t, kind=kind, temperature=temperature, skew_lambda=skew_lambda, mask=targets != -100,
                         backend=kernels)
        if alpha < 1:
            ce = ce_fn(flat, targets)
        return _combine(kd, ce, alpha)

    return loss_fn


def _sparse_loss(teacher_topk: Callable[[Batch, int], tuple[torch.Tensor, torch.Tensor]], temperature: float,
                 alpha: float, kind: str, skew_lambda: float, kernels: str,
                 covered: Callable[[Batch], torch.Tensor] | None = None) -> LossFn:
    """alpha · sparse KL (teacher top-k ids/log-probs [B·T, k] + leftover bucket) + (1 − alpha) · CE.

    ``covered(batch)`` (bool [B]) names the rows the teacher has; the others get plain CE,
    and the batch loss is the token mean of both (one forward pass either way).
    """
    ce_fn = cross_entropy_fn(kernels)

    def mixed(flat: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor):
        from vnmini.kernels import sparse_kd_loss

        kd = ce = None
        if alpha > 0:
            dev = flat.device
            kd = sparse_kd_loss(flat, ids.reshape(flat.shape[0], -1).to(dev), logp.reshape(flat.shape[0], -1).to(dev),
                                kind=kind, temperature=temperature, skew_lambda=skew_lambda, mask=targets != -100,
                                backend=kernels)
        if alpha < 1:
            ce = ce_fn(flat, targets)
        return _combine(kd, ce, alpha)

    def loss_fn(module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = module(batch.input_ids)
        v = logits.shape[-1]
        rows = covered(batch) if covered is not None else None
        if rows is None or bool(rows.all()):
            ids, logp = teacher_topk(batch, v)
            loss, mets = mixed(logits.reshape(-1, v), batch.targets.reshape(-1), ids, logp)
            return loss, mets if rows is None else {**mets, "covered": 1.0}
        rows = rows.to(logits.device)
        ce_rest = ce_fn(logits[~rows].reshape(-1, v), batch.targets[~rows].reshape(-1))
        if not bool(rows.any()):
            return ce_rest, {"ce": float(ce_rest.detach()), "covered": 0.0}
        sub = Batch(batch.input_ids[rows], batch.targets[rows], batch.positions[rows.cpu().numpy()], batch.step)
        ids, logp = teacher_topk(sub, v)
        loss_cov, mets = mixed(logits[rows].reshape(-1, v), sub.targets.reshape(-1), ids, logp)
        valid = (batch.targets != -100).sum(1)
        w = float(valid[rows].sum()) / max(float(valid.sum()), 1.0)  # the covered rows' share of the tokens
        mets.update(ce_uncovered=float(ce_rest.detach()), covered=float(rows.float().mean()))
        return w * loss_cov + (1 - w) * ce_rest, mets

    return loss_fn


def cache_loss(cache: TeacherCache, alpha: float = 0.5, kind: str = "forward", skew_lambda: float = 0.1,
               kernels: str = "auto") -> LossFn:
    """Trainer loss hook: sparse KL against the cached top-k (+ leftover mass) at the batch's positions.

    A cache that covers only the first windows of the split (``--max-windows``) teaches
    where it has the teacher: a covered token weighs ``alpha · KD + (1 − alpha) · CE``, any
    other token plain CE, averaged over the batch's tokens. So a partial cache adds the
    teacher to part of the data instead of shrinking the data to that part.
    """
    def covered(batch: Batch) -> torch.Tensor:
        # Rows that are not stream windows (positions < 0) count as covered: the lookup refuses them by name.
        return torch.from_numpy(batch.positions + batch.input_ids.shape[1] <= cache.positions)

    return _sparse_loss(lambda batch, v: cache.lookup(batch.positions, batch.input_ids.shape[1]), cache.temperature,
                        alpha, kind, skew_lambda, kernels, covered)


def mapped_online_loss(teacher: MappedTeacher, k: int = 64, alpha: float = 0.5, kind: str = "forward",
                       temperature: float = 1.0, skew_lambda: float = 0.1, kernels: str = "auto") -> LossFn:
    """Trainer loss hook for a teacher with a bigger vocabulary (adopted map): sparse KL against its top-k
    over the student's ids, with everything else — the student's other ids and the tokens it can't say
    (``--teacher-vocab full``) — in the leftover bucket, exactly as a cache written from that teacher."""

    def topk(batch: Batch, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        top_lp, top_ids = teacher.student_logprobs(batch.input_ids, temperature).reshape(-1, v).topk(min(k, v), -1)
        return top_ids, top_lp

    return _sparse_loss(topk, temperature, alpha, kind, skew_lambda, kernels)


def _check_cache(cache: TeacherCache, cfg: TrainConfig, tok_hash: str, temperature: float | None) -> None:
    m = cache.manifest
    if cache.tokenizer_hash != tok_hash:
        raise VnminiError(f"vocabulary mismatch: teacher cache {cache.folder} was written with tokenizer "
                          f"{m['tokenizer_hash']} ({m['vocab_size']} tokens), the student's shards {cfg.data} use "
                          f"{tok_hash}; write the cache over these shards, or distill sequence-level with "
                          "`vnmini teacher generate`.")
    if m.get("shards_fingerprint") != shards_fingerprint(cfg.data, m.get("split", "train")):
        raise VnminiError(f"--teacher-cache {cache.folder}: written over another shard set than --data {cfg.data} "
                          f"(it was made from {m.get('data')}); rerun `vnmini teacher cache --data {cfg.data}`.")
    if cache.seq_len != cfg.seq_len:
        raise VnminiError(f"--seq-len {cfg.seq_len}: the cache {cache.folder} holds windows of {cache.seq_len} tokens; "
                          f"train with --seq-len {cache.seq_len} (positions must see the teacher's context).")
    if temperature is not None and abs(temperature - cache.temperature) > 1e-9:
        raise VnminiError(f"--temperature {temperature}: the cache {cache.folder} holds log-probs at temperature "
                          f"{cache.temperature}; use that, or rewrite the cache with --temperature {temperature}.")


def distill(
    config: TrainConfig | str | Path | None = None,
    *,
    teacher: str | Path | Teacher | None = None,
    teacher_cache: str | Path | None = None,
    teacher_text: str | Path | None = None,
    teacher_device: str | None = None,
    alpha: float = recipes.KD_ALPHA,
    kd: str = "forward",
    temperature: float | None = None,
    skew_lambda: float = 0.1,
    teacher_vocab: str = "full",
    teacher_top_k: int = 64,
    train_windows: int | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a student from ``teacher`` (online), ``teacher_cache`` (offline) or ``teacher_text`` (sequence-level).

    ``config``/``overrides`` are :class:`TrainConfig` fields as in :func:`vnmini.training.pretrain`
    (``data``, ``preset`` of the student, ``out``, ``max_steps``, ``resume``, ...).
    ``teacher_device`` defaults to the student's device. ``temperature`` defaults to 1
    (online) or the cache's. A cache written with ``max_windows`` teaches on the windows
    it covers and leaves the rest to cross-entropy (:func:`cache_loss`); ``train_windows``
    limits training to the first N windows of the split (e.g. to the cached ones).
    Returns the Trainer's summary plus ``distill`` settings.
    """
    given = [n for n, v in (("teacher", teacher), ("teacher_cache", teacher_cache), ("teacher_text", teacher_text))
             if v is not None]
    if len(given) != 1:
        raise VnminiError("give exactly one of --teacher (online), --teacher-cache (offline) or --teacher-text "
                          f"(sequence-level); got {', '.join(given) or 'none'}.")
    if teacher_text is not None:
        return _sequence_level(config, Path(teacher_text), overrides)
    check_kd_settings(alpha, kd, 1.0 if temperature is None else temperature, skew_lambda)
    cache = TeacherCache(teacher_cache) if teacher_cache is not None else None
    # With a cache, its window length is the default (a --seq-len flag or config value still wins, and is checked).
    cfg = build_config(config, overrides, base={"seq_len": cache.seq_len} if cache is not None else None)
    if not cfg.data:
        raise VnminiError("--data: give the token shard folder the student trains on (made by `vnmini data prepare`).")
    tok = resolve_tokenizer(cfg.data, cfg.tokenizer)
    train_r = ShardReader(cfg.data, "train", tokenizer_hash=tok.hash)
    has_val = load_manifest(cfg.data)["splits"].get("val", {}).get("tokens")
    val_r = ShardReader(cfg.data, "val", tokenizer_hash=tok.hash) if has_val else None
    source = TokenWindows(train_r, val_r, cfg.seq_len)
    if train_windows is not None:
        if train_windows < 1:
            raise VnminiError(f"--train-windows {train_windows}: must be >= 1.")
        source.train_rows = min(source.train_rows, int(train_windows))
    settings: dict[str, Any] = {"alpha": alpha, "kd": kd, "skew_lambda": skew_lambda,
                                "train_windows": source.train_rows}
    if cache is not None:
        _check_cache(cache, cfg, tok.hash, temperature)
        settings["cached_windows"] = min(cache.windows, source.train_rows)
        if cache.windows < source.train_rows and int(os.environ.get("RANK", "0")) == 0:
            (log or print)(f"the teacher cache covers {cache.windows:,} of the {source.train_rows:,} training windows: "
                "KD there, cross-entropy on the rest")
        loss = cache_loss(cache, alpha, kd, skew_lambda, cfg.kernels)
        settings.update(mode="cache", teacher_cache=str(teacher_cache), temperature=cache.temperature,
                        k=cache.k, teacher=cache.manifest.get("teacher"))
    else:
        from vnmini.training.dist import pick_device

        dev = teacher_device or str(pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
        temperature = 1.0 if temperature is None else temperature
        t: Any = teacher
        is_gguf = isinstance(t, (str, Path)) and Path(t).suffix == ".gguf" and Path(t).is_file()
        if not isinstance(t, (Teacher, MappedTeacher)) and not is_gguf:
            t = load_teacher(t, device=dev)  # type: ignore[arg-type]
        if isinstance(t, Teacher) and is_same_vocab(t, tok.hash, tok.vocab_size):
            check_same_tokenizer(t, tok.hash, tok.vocab_size, f"shards {cfg.data}")
            loss = online_loss(t, alpha, kd, temperature, skew_lambda, cfg.kernels)
            settings.update(mode="online", teacher=t.source, teacher_device=str(t.device), temperature=temperature,
                            teacher_parameters=t.model.config.num_parameters())
        else:  # a bigger vocabulary that contains the student's (adopted), or a refusal naming both
            if teacher_top_k < 1:
                raise VnminiError(f"--teacher-top-k {teacher_top_k}: must be >= 1.")
            mt = open_mapped_teacher(t, tok, teacher_vocab, device=dev, n_ctx=cfg.seq_len + 8, threads=cfg.threads)
            loss = mapped_online_loss(mt, teacher_top_k, alpha, kd, temperature, skew_lambda, cfg.kernels)
            settings.update(mode="online", teacher=mt.describe(), temperature=temperature, k=teacher_top_k)
    cfg = cfg.replace(extra={**cfg.extra, "distill": settings})
    model = make_model(cfg, tok)
    trainer = Trainer(cfg, model, source, tokenizer=tok, loss_fn=loss, kind="distill", log=log)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    return {**summary, "distill": settings}


def _sequence_level(config: TrainConfig | str | Path | None, path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train on teacher text: chat answers (``messages``) -> SFT; continuations (``text``) -> pretraining."""
    if not path.is_file():
        raise VnminiError(f"--teacher-text {path}: no such file; write one with `vnmini teacher generate`.")
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        obj = json.loads(first) if first else None
    except json.JSONDecodeError as e:
        raise VnminiError(f"--teacher-text {path}: line 1 is not JSON ({e.msg}); pass the JSONL `vnmini teacher "
                          "generate` wrote.") from e
    if isinstance(obj, dict) and "messages" in obj:
        from vnmini.training.sft import sft

        return {**sft(config, **{**overrides, "data": str(path)}), "distill": {"mode": "sequence", "kind": "chat"}}
    if not (isinstance(obj, dict) and isinstance(obj.get("text"), str)):
        raise VnminiError(f"--teacher-text {path}: lines need \"messages\" (chat answers) or \"text\" (continuations).")
    from vnmini.data.shards import prepare_shards
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.training.pretrain import train

    cfg = build_config(config, overrides)
    if not cfg.tokenizer:
        raise VnminiError("--tokenizer: sequence-level distillation tokenizes the teacher's text with the student's "
                          "tokenizer; pass its folder or tokenizer.json.")
    shards = Path(cfg.out) / "teacher_text_shards"
    if not (shards / "manifest.json").is_file():
        tok = VnTokenizer.load(cfg.tokenizer)
        with path.open(encoding="utf-8") as f:
            n = sum(1 for line in f if line.strip())
        # Hold out 5% of the teacher's texts for eval bpb when there are enough of them.
        prepare_shards([str(path)], tok, shards, val_fraction=0.05 if n >= 20 else 0.0, field="text",
                       progress=cfg.progress)
    cfg = cfg.replace(data=str(shards), extra={**cfg.extra, "distill": {"mode": "sequence", "teacher_text": str(path)}})
    return {**train(cfg), "distill": {"mode": "sequence", "kind": "text", "shards": str(shards)}}


def dense_vs_sparse(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int, kind: str = "forward",
                    temperature: float = 1.0, skew_lambda: float = 0.1) -> dict[str, float]:
    """The dense KD loss and the sparse one from a fp16 top-k cache of the same teacher logits.

    Goes through the cache's own encoding (fp16 log-probs, fp16 log leftover, renormalized
    on read), so the gap is what a student trained from a k-cache actually sees.
    """
    from vnmini.kernels import kd_loss, sparse_kd_loss, topk_lse

    v = teacher_logits.shape[-1]
    dense = float(kd_loss(student_logits, teacher_logits, kind, temperature, skew_lambda, backend="torch"))
    lp, ids, _ = topk_lse(teacher_logits, k, temperature)
    lp16, rest16 = encode_topk(lp, v)
    lp_read = decode_topk(lp16, rest16)
    sparse = float(sparse_kd_loss(student_logits, ids, lp_read, kind, temperature, skew_lambda, backend="torch"))
    return {"dense": dense, "sparse": sparse, "abs_gap": abs(sparse - dense),
            "rel_gap": abs(sparse - dense) / max(abs(dense), 1e-12),
            "teacher_mass_in_topk": float(lp.double().exp().sum(-1).mean())}


__all__ = ["distill", "online_loss", "cache_loss", "mapped_online_loss", "check_kd_settings", "dense_vs_sparse",
           "KINDS"]
