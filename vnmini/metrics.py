"""Bits per byte and friends: tokenizer-independent quality numbers.

bits per byte = (sum of next-token NLL in nats) / (ln 2 × UTF-8 bytes of the
predicted tokens). Special tokens carry 0 bytes but their loss still counts
(predicting EOS is part of modelling the text), so models with different
vocabularies compare on the same text.

    meter = BpbMeter(tokenizer.token_bytes)     # the one accumulator: eval, verify, trainer
    for logits, targets in windows:
        meter.add(logits, targets)
    meter.bpb, meter.ppl, meter.as_dict()
"""

from __future__ import annotations

import math

import numpy as np
import torch


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total NLL (nats) over the bytes it covered -> bits per byte."""
    if n_bytes <= 0:
        return float("nan")
    return float(nll_nats) / (math.log(2) * n_bytes)


def nll_and_bytes(
    logits: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    token_bytes: np.ndarray,
    ignore_index: int = -100,
) -> tuple[float, int]:
    """Summed NLL (nats, float64) of ``targets`` under ``logits`` [..., V], and their UTF-8 bytes."""
    lg = torch.as_tensor(np.asarray(logits) if isinstance(logits, np.ndarray) else logits).double()
    tg = torch.as_tensor(np.asarray(targets) if isinstance(targets, np.ndarray) else targets).long()
    lg = lg.reshape(-1, lg.shape[-1])
    tg = tg.reshape(-1)
    valid = tg != ignore_index
    if not bool(valid.any()):
        return 0.0, 0
    lp = torch.log_softmax(lg[valid], dim=-1)
    t = tg[valid]
    nll = float(-lp.gather(1, t[:, None]).sum())
    nbytes = int(np.asarray(token_bytes)[t.cpu().numpy()].sum())
    return nll, nbytes


class BpbMeter:
    """Sums next-token NLL (nats), scored tokens and their UTF-8 bytes over many windows.

    ``add(logits, targets)`` scores rows (``ignore_index`` targets skipped);
    ``add_totals`` takes sums computed elsewhere (e.g. all-reduced across ranks).
    """

    def __init__(self, token_bytes: np.ndarray | None = None, ignore_index: int = -100) -> None:
        self.token_bytes = token_bytes
        self.ignore_index = ignore_index
        self.nll = 0.0
        self.tokens = 0
        self.bytes = 0

    def add(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> None:
        if self.token_bytes is None:
            raise ValueError("BpbMeter.add needs token_bytes; use add_totals")
        tg = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).reshape(-1)
        nll, nbytes = nll_and_bytes(logits, tg, self.token_bytes, self.ignore_index)
        self.add_totals(nll, int((tg != self.ignore_index).sum()), nbytes)

    def add_totals(self, nll: float, tokens: int, nbytes: int) -> None:
        self.nll += float(nll)
        self.tokens += int(tokens)
        self.bytes += int(nbytes)

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.nll, self.bytes)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def loss(self) -> float:
        """Mean NLL per scored token (nats)."""
        return self.nll / self.tokens if self.tokens else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {"bpb": self.bpb, "ppl": self.ppl, "nll": self.nll, "tokens": self.tokens, "bytes": self.bytes}


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(p || q) (nats) from two logit arrays [N, V] (float64 math)."""
    p = torch.log_softmax(torch.as_tensor(np.asarray(p_logits)).double(), -1)
    q = torch.log_softmax(torch.as_tensor(np.asarray(q_logits)).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def top1_agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Share of rows whose argmax agrees."""
    return float((np.asarray(a_logits).argmax(-1) == np.asarray(b_logits).argmax(-1)).mean())


def max_relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| — the parity number the export reports use."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
