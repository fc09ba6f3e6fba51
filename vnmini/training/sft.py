"""Chat fine-tuning (``vnmini sft`` / ``vnmini.sft(...)``): messages JSONL → assistant-only loss.

Input: JSONL, one ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``
per line. Each conversation is rendered with the checkpoint tokenizer's chat
template; the loss covers the assistant turns only (their content and the
closing ``<|im_end|>``, not the ``<|im_start|>assistant`` header nor any
user/system token).

A line may instead be ``{"text": ...}``: plain text, encoded as in pretraining
(BOS, text, EOS), cut into ``seq_len`` pieces and trained on every token. Mixing
pretraining text into SFT ("replay") keeps the model's prose from drifting while
it learns to answer; such lines are training rows only (the validation split and
its bits per byte are conversations).

Packing: whole conversations are placed first-fit into rows of ``seq_len``
tokens (a conversation is never split across rows; one longer than a row is
cut to it) and padded. Inside a row every conversation gets its own position
ids (starting at 0) and a block-diagonal causal mask (:class:`PackedLM`), so
tokens never attend across conversations: training sees each conversation
exactly as chat inference will.

    import vnmini
    vnmini.sft(data="chat.jsonl", init_from="runs/tiny/final", out="runs/tiny-chat", max_steps=300)

Everything else (resume, eval bits per byte on held-out assistant tokens,
checkpoints, metrics, torchrun) is :class:`vnmini.training.trainer.Trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vnmini.errors import VnminiError
from vnmini.jsonl import iter_jsonl
from vnmini.text.tokenizer import VnTokenizer
from vnmini.training.batch import Batch
from vnmini.training.config import SFT_DEFAULTS, TrainConfig
from vnmini.training.trainer import Trainer

ROLES = ("system", "user", "assistant")
Conversation = list[dict[str, str]]
Item = Conversation | str  # a conversation, or a plain-text (replay) record


def load_conversations(path: str | Path) -> list[Item]:
    """Read and check a messages JSONL (``{"text"}`` lines come back as strings); bad lines name their number."""
    path = Path(path)
    if not path.is_file():
        raise VnminiError(f"--data {path}: no such file; give a JSONL of {{\"messages\": [...]}} lines.")
    out: list[Item] = []
    for where, obj in iter_jsonl(path):
        if isinstance(obj, dict) and "text" in obj and "messages" not in obj:
            if not isinstance(obj["text"], str) or not obj["text"].strip():
                raise VnminiError(f"{where}: \"text\" must be a non-empty string.")
            out.append(obj["text"])
            continue
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise VnminiError(f"{where}: needs a non-empty \"messages\" list (or a \"text\" string).")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise VnminiError(f"{where}: each message needs role in {ROLES} and a string content (got {m!r:.80}).")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            raise VnminiError(f"{where}: no assistant message with content; nothing to learn from.")
        out.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    if not out:
        raise VnminiError(f"{path}: no conversations; the file is empty.")
    return out


def render(tok: VnTokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation and, per token, whether it is an assistant (trained) token."""
    ids: list[int] = []
    mask: list[bool] = []
    stops = set(tok.stop_ids)
    for i, m in enumerate(messages):
        before = tok.encode_chat(messages[:i], add_generation_prompt=m["role"] == "assistant")
        after = tok.encode_chat(messages[: i + 1], add_generation_prompt=False)
        if after[: len(before)] != before or after[: len(ids)] != ids:
            raise VnminiError("the tokenizer's chat template does not render conversations prefix by prefix; "
                              "SFT needs a ChatML-like template.")
        if m["role"] == "assistant":
            mask.extend([False] * (len(before) - len(ids)))
            span = after[len(before):]
            last = max((k for k, t in enumerate(span) if t in stops), default=len(span) - 1)
            mask.extend([k <= last for k in range(len(span))])  # content + <|im_end|>, not the newline after
        else:
            mask.extend([False] * (len(after) - len(ids)))
        ids = after
    return ids, mask


def render_text(tok: VnTokenizer, text: str, seq_len: int) -> list[tuple[list[int], list[bool]]]:
    """A plain-text record as pretraining sees it (BOS if the tokenizer has one, text, EOS), in pieces of
    ``seq_len`` tokens, every token trained."""
    ids = tok.encode(text, add_bos=True, add_eos=True)
    pieces = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    return [(p, [True] * len(p)) for p in pieces if len(p) > 1]  # a lone last token has nothing to predict


def render_items(tok: VnTokenizer, items: list[Item], seq_len: int) -> list[tuple[list[int], list[bool]]]:
    """Every conversation rendered with the chat template, every text record cut into rows' worth."""
    out: list[tuple[list[int], list[bool]]] = []
    for it in items:
        if isinstance(it, str):
            out.extend(render_text(tok, it, seq_len))
        else:
            out.append(render(tok, it))
    return out


@dataclass
class PackedRows:
    input_ids: np.ndarray  # [R, T] int64
    targets: np.ndarray  # [R, T] int64, -100 = no loss
    segment_ids: np.ndarray  # [R, T] int64, conversation number within the row, -1 = padding
    position_ids: np.ndarray  # [R, T] int64, restarting at 0 for each conversation
    conversations: int = 0
    truncated: int = 0
    dropped: int = 0


def pack(rendered: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> PackedRows:
    """First-fit packing of whole conversations into rows of ``seq_len`` (never split across rows)."""
    truncated = dropped = 0
    items = []
    for ids, mask in rendered:
        cut = len(ids) > seq_len
        ids, mask = ids[:seq_len], mask[:seq_len]
        if not any(mask[1:]):
            dropped += 1  # no assistant token left to predict
            continue
        truncated += cut
        items.append((ids, mask))
    rows: list[list[tuple[list[int], list[bool]]]] = []
    free: list[int] = []
    for it in items:
        n = len(it[0])
        # First fit among the last few open rows keeps this O(n) and the order (and so the data) stable.
        lo = max(0, len(rows) - 64)
        k = next((r for r in range(lo, len(rows)) if free[r] >= n), None)
        if k is None:
            rows.append([])
            free.append(seq_len)
            k = len(rows) - 1
        rows[k].append(it)
        free[k] -= n
    r = len(rows)
    out = PackedRows(np.full((r, seq_len), pad_id, np.int64), np.full((r, seq_len), -100, np.int64),
                     np.full((r, seq_len), -1, np.int64), np.zeros((r, seq_len), np.int64),
                     len(items), truncated, dropped)
    for i, row in enumerate(rows):
        o = 0
        for s, (ids, mask) in enumerate(row):
            n = len(ids)
            out.input_ids[i, o : o + n] = ids
            tgt = np.where(np.asarray(mask[1:], bool), np.asarray(ids[1:]), -100)
            out.targets[i, o : o + n - 1] = tgt
            out.segment_ids[i, o : o + n] = s
            out.position_ids[i, o : o + n] = np.arange(n)
            o += n
    return out


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean attention mask: causal, within one conversation; padding sees itself."""
    t = segment_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    eye = torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal) | eye)[:, None]


class PackedLM(nn.Module):
    """The decoder run with per-conversation positions and a block-diagonal causal mask."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids, position_ids=position_ids, mask=segment_mask(segment_ids))


def packed_forward(module: nn.Module, batch: Batch) -> torch.Tensor:
    return module(batch.input_ids, batch.extra["segment_ids"], batch.extra["position_ids"])


class PackedSource:
    """Trainer batch source over packed train/val rows (``positions`` = -1: rows aren't shard windows)."""

    def __init__(self, train: PackedRows, val: PackedRows | None, seq_len: int) -> None:
        self.splits = {"train": train, "val": val}
        self.seq_len = seq_len
        self.train_rows = len(train.input_ids)
        self.val_rows = len(val.input_ids) if val is not None else 0

    def rows(self, split: str, idx: np.ndarray, step: int) -> Batch:
        p = self.splits[split]
        assert p is not None
        idx = np.asarray(idx, dtype=np.int64)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[idx]))

        return Batch(t(p.input_ids), t(p.targets), np.full(len(idx), -1, np.int64), step,
                     {"segment_ids": t(p.segment_ids), "position_ids": t(p.position_ids)})


def split_val(convs: list, val_fraction: float) -> tuple[list, list]:
    """Deterministic split: of every 1/val_fraction conversations one (spread evenly) is held out.

    Text (replay) records are not counted and always train, so adding them leaves the validation split as it was.
    """
    train, val = [], []
    i = 0
    for c in convs:
        if isinstance(c, str):
            train.append(c)
            continue
        is_val = math.floor((i + 1) * val_fraction + 0.5) > math.floor(i * val_fraction + 0.5)
        (val if is_val else train).append(c)
        i += 1
    return train, val


def sft(config: TrainConfig | str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune ``init_from`` on the messages JSONL ``data``; returns the Trainer's summary."""
    from vnmini.checkpoint import load_checkpoint
    from vnmini.training.pretrain import build_config

    # SFT starts from a trained model: gentler and shorter than pretraining (file/flags still win).
    cfg = build_config(config, overrides, base=SFT_DEFAULTS)
    if not cfg.data:
        raise VnminiError("--data: give a messages JSONL (e.g. from `vnmini data sft-from-statutes`).")
    if not cfg.init_from:
        raise VnminiError("--init-from: SFT starts from a checkpoint folder; pass the pretrained model.")
    ck = load_checkpoint(cfg.init_from, require_tokenizer=cfg.tokenizer is None)
    tok = VnTokenizer.load(cfg.tokenizer) if cfg.tokenizer else ck.tokenizer
    if cfg.seq_len > ck.model.config.max_position_embeddings:
        raise VnminiError(f"--seq-len {cfg.seq_len} exceeds the model's context "
                          f"({ck.model.config.max_position_embeddings}).")
    convs = load_conversations(cfg.data)
    train_c, val_c = split_val(convs, cfg.val_fraction)
    train_p = pack(render_items(tok, train_c, cfg.seq_len), cfg.seq_len, tok.pad_id)
    val_p = pack(render_items(tok, val_c, cfg.seq_len), cfg.seq_len, tok.pad_id) if val_c else None
    if train_p.conversations == 0:
        raise VnminiError(f"{cfg.data}: no conversation has assistant tokens within --seq-len {cfg.seq_len}.")
    model = ck.model.float()
    n_text = sum(isinstance(c, str) for c in convs)
    cfg.extra.setdefault("sft", {"conversations": len(convs) - n_text, "text_records": n_text,
                                 "train_rows": len(train_p.input_ids), "truncated": train_p.truncated,
                                 "dropped": train_p.dropped})
    trainer = Trainer(cfg, model, PackedSource(train_p, val_p, cfg.seq_len), tokenizer=tok,
                      forward=packed_forward, module=PackedLM(model), kind="sft")
    try:
        return trainer.fit()
    finally:
        trainer.close()
