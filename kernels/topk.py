"""Top-k per row with log-softmax values and the row's log-sum-exp (teacher-cache writer).

Use::

    from vnmini.kernels import topk_lse
    logprobs, ids, lse = topk_lse(teacher_logits, k=64, temperature=1.0)

``logprobs[i]`` = log_softmax(logits[i] / T) at ``ids[i]``, sorted descending; ``lse[i]`` =
logsumexp(logits[i] / T).  The CPU kernel makes one pass per row that keeps a size-k
min-heap of the largest logits (most elements fail the heap-root test and cost one
compare) plus the LSE sweeps, so no (N, V) log-softmax is materialized.  Ties: equal
values are ordered by smaller index (torch.topk leaves the order of ties unspecified).

CUDA tensors use the torch reference (``topk_lse_torch``): torch.topk on CUDA is a tuned
radix select and no Numba CUDA top-k is provided (``dispatch.NO_CUDA``).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from . import dispatch
from ._mathf import FM
from .kd import row_lse


@njit(inline="always")
def _sift_down(hv, hi, pos, k):
    while True:
        c = 2 * pos + 1
        if c >= k:
            return
        # min-heap on (value, -index): among equal values the larger index is evicted first
        if c + 1 < k and (hv[c + 1] < hv[c] or (hv[c + 1] == hv[c] and hi[c + 1] > hi[c])):
            c += 1
        if hv[c] < hv[pos] or (hv[c] == hv[pos] and hi[c] > hi[pos]):
            hv[c], hv[pos] = hv[pos], hv[c]
            hi[c], hi[pos] = hi[pos], hi[c]
            pos = c
        else:
            return


@njit(parallel=True, cache=True, fastmath=FM)
def _topk_cpu(x, k, inv_t, vals, idx, lse_out):
    n, v = x.shape
    for i in prange(n):
        row = x[i]
        lse = row_lse(row, inv_t)
        lse_out[i] = lse
        hv = row[:k].copy()
        hi = np.arange(k)
        for p in range(k // 2 - 1, -1, -1):
            _sift_down(hv, hi, p, k)
        for j in range(k, v):
            if row[j] > hv[0]:
                hv[0] = row[j]
                hi[0] = j
                _sift_down(hv, hi, 0, k)
        order = np.argsort(hi)  # by index, then a stable sort by descending value
        order = order[np.argsort(-hv[order], kind="mergesort")]
        for a in range(k):
            idx[i, a] = hi[order[a]]
            vals[i, a] = float(hv[order[a]]) * float(inv_t) - lse


def topk_lse_torch(logits: torch.Tensor, k: int, temperature: float = 1.0):
    """Plain-torch reference of :func:`topk_lse`."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    v, i = torch.topk(z, k, dim=-1, sorted=True)
    return v - lse[:, None], i, lse


def topk_lse(logits: torch.Tensor, k: int, temperature: float = 1.0, backend: str = "auto"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values_logprobs [N, k] float32 sorted descending, indices [N, k] int64, lse [N] float32)."""
    if logits.dim() != 2:
        raise ValueError(f"topk_lse wants logits [N, V]; got {tuple(logits.shape)}")
    n, v = logits.shape
    if not 1 <= k <= v:
        raise ValueError(f"k must be in [1, {v}], got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    which, _ = dispatch.resolve("topk_lse", logits, backend)
    if which == "torch":
        return topk_lse_torch(logits.detach(), k, temperature)
    x, _ = dispatch.as_f32_contiguous(logits.detach())
    vals = torch.empty(n, k, dtype=torch.float64)
    idx = torch.empty(n, k, dtype=torch.int64)
    lse = torch.empty(n, dtype=torch.float64)
    _topk_cpu(dispatch.np_view(x), k, np.float32(1.0 / temperature), vals.numpy(), idx.numpy(), lse.numpy())
    return vals.float(), idx, lse.float()


__all__ = ["topk_lse", "topk_lse_torch"]
