"""Sparse KD loss from a top-k teacher cache (ids, log-probs, leftover mass), fwd + bwd.

Use::

    from vnmini.kernels import sparse_kd_loss
    loss = sparse_kd_loss(student_logits, top_ids, top_logprobs, kind="forward", temperature=1.0)

How the leftover mass is accounted (the definition this module implements):
the teacher distribution is the k cached probabilities ``p_a = exp(top_logprobs[a])``
plus one *rest* bucket holding ``p_rest = max(0, 1 - sum_a p_a)``.  The student is
reduced to the same k + 1 buckets: ``Q_a = softmax(student / T)[top_ids[a]]`` and
``Q_rest = sum of the student's probabilities at every id not in top_ids``
(computed directly, not as ``1 - sum Q_a``, so it stays accurate when tiny).  The row
loss is the chosen KL over those k + 1 buckets (forward ``KL(P||Q)``, reverse
``KL(Q||P)``, skew ``KL(P || lam P + (1 - lam) Q)``); probabilities below 1e-30 are
floored to 1e-30 inside logarithms (a bucket with zero weight contributes 0).
The loss is the mean over masked rows times T**2.  With k = V (leftover 0) this equals
:func:`vnmini.kernels.kd_loss` on the full teacher logits, up to the rounding of the
cached log-probs.  ``top_logprobs`` are the teacher's log-softmax at its cache temperature
(any float dtype, fp16 included); ``top_ids`` in a row must be distinct (top-k output).

Gradient (w.r.t. the student only), per row with u = student/T and q = softmax(u):
ids outside the cache get ``q_j * c_rest`` and cached ids get ``G_a``, two per-row results
of the forward pass; backward is one dense pass plus a k-element scatter, written into
the student logits when the ``dispatch`` in-place contract allows.

Versions: CPU ``@njit(parallel=True, cache=True)`` (rest bucket summed exactly with a
per-row membership mask); CUDA one block per row (``cuda_kernels()``; rest bucket =
``1 - sum Q_a`` in float64, ~1e-7 absolute accuracy); reference ``sparse_kd_loss_torch``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from . import dispatch
from ._cudautil import TPB, helpers
from ._mathf import F32, FM, fexp
from .kd import CHUNK, KINDS, check_kd_args, kd_rows_torch, masked_mean

cuda = None  # numba.cuda, bound by cuda_kernels() (a module global so the simulator can patch it)

TINY = 1e-30
_LOG_TINY = math.log(TINY)
_LOWEST = F32(-3.0e38)
_ZERO = F32(0.0)


@njit(inline="always")
def _buckets(kind, lam, lq, tlp, k, q_rest, out_g, i):
    """KL over k+1 buckets; writes the cached-id gradients into out_g[i]; returns (kl, c_rest)."""
    pk = 0.0
    for a in range(k):
        pk += math.exp(tlp[a])
    p_rest = max(0.0, 1.0 - pk)
    ptot = pk + p_rest
    lqr = math.log(max(q_rest, TINY))
    lpr = math.log(max(p_rest, TINY))
    kl = 0.0
    if kind == 0:
        for a in range(k):
            p = math.exp(tlp[a])
            if p > 0.0:
                kl += p * (max(tlp[a], _LOG_TINY) - lq[a])
            out_g[i, a] = ptot * math.exp(lq[a]) - p
        if p_rest > 0.0:
            kl += p_rest * (lpr - lqr)
        return kl, ptot - p_rest / max(q_rest, TINY)
    if kind == 1:
        for a in range(k):
            kl += math.exp(lq[a]) * (lq[a] - max(tlp[a], _LOG_TINY))
        ar = lqr - lpr
        kl += q_rest * ar
        for a in range(k):
            out_g[i, a] = math.exp(lq[a]) * (lq[a] - max(tlp[a], _LOG_TINY) - kl)
        return kl, ar - kl
    oml = 1.0 - lam
    rr = 0.0
    for a in range(k):
        p = math.exp(tlp[a])
        q = math.exp(lq[a])
        mix = lam * p + oml * q
        if p > 0.0:
            kl += p * (max(tlp[a], _LOG_TINY) - math.log(max(mix, TINY)))
        rr += q * (p / mix if mix > 0.0 else 0.0)
    mix_r = lam * p_rest + oml * q_rest
    r_rest = p_rest / mix_r if mix_r > 0.0 else 0.0
    if p_rest > 0.0:
        kl += p_rest * (lpr - math.log(max(mix_r, TINY)))
    rr += q_rest * r_rest
    for a in range(k):
        p = math.exp(tlp[a])
        q = math.exp(lq[a])
        mix = lam * p + oml * q
        out_g[i, a] = oml * q * (rr - (p / mix if mix > 0.0 else 0.0))
    return kl, oml * (rr - r_rest)


@njit(parallel=True, cache=True, fastmath=FM)
def _skd_fwd_cpu(s, ids, tlp, mask, kind, inv_t, lam, lse_out, kl_out, crest_out, gk_out):
    n, v = s.shape
    k = ids.shape[1]
    for i in prange(n):
        if not mask[i]:
            kl_out[i] = 0.0
            continue
        row = s[i]
        notk = np.ones(v, dtype=np.float32)  # 1 outside the cached ids: sums the rest bucket exactly
        for a in range(k):
            notk[ids[i, a]] = _ZERO
        m = _LOWEST
        for j in range(v):
            m = max(m, row[j])
        ms = m * inv_t
        tot = 0.0
        rest = 0.0
        for c0 in range(0, v, CHUNK):
            ct = _ZERO
            cr = _ZERO
            for j in range(c0, min(c0 + CHUNK, v)):
                e = fexp(row[j] * inv_t - ms)
                ct += e
                cr += e * notk[j]
            tot += ct
            rest += cr
        lse = float(ms) + math.log(tot)
        lse_out[i] = lse
        lq = np.empty(k)
        tl = np.empty(k)
        for a in range(k):
            lq[a] = float(row[ids[i, a]]) * float(inv_t) - lse
            tl[a] = float(tlp[i, a])
        kl, c_rest = _buckets(kind, float(lam), lq, tl, k, rest / tot, gk_out, i)
        kl_out[i] = kl
        crest_out[i] = c_rest


@njit(parallel=True, cache=True, fastmath=FM)
def _skd_bwd_cpu(s, ids, mask, inv_t, lse, crest, gk, scale, g):
    # g may alias s: the dense pass reads s[i, j] before writing g[i, j]; the scatter only
    # uses per-row results saved by the forward pass.
    n, v = s.shape
    k = ids.shape[1]
    for i in prange(n):
        if not mask[i]:
            for j in range(v):
                g[i, j] = _ZERO
            continue
        li = F32(lse[i])
        c = F32(crest[i] * scale)
        for j in range(v):
            g[i, j] = fexp(s[i, j] * inv_t - li) * c
        for a in range(k):
            g[i, ids[i, a]] = F32(gk[i, a] * scale)


@functools.cache
def cuda_kernels():
    """Build the CUDA kernels on first use (one block of TPB threads per row)."""
    h = helpers()
    global cuda
    cuda, f32, f64 = h.cuda, h.float32, h.float64
    block_max, block_sum = h.block_max, h.block_sum
    buckets = cuda.jit(device=True)(_buckets.py_func)

    @cuda.jit
    def fwd(s, ids, tlp, mask, kind, inv_t, lam, lse_out, kl_out, crest_out, gk_out, lq_buf, tl_buf):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(TPB, f32)
        if not mask[i]:
            if tid == 0:
                kl_out[i] = 0.0
            return
        m = f32(-3.0e38)
        for j in range(tid, s.shape[1], TPB):
            m = max(m, s[i, j])
        ms = block_max(sh, m) * inv_t
        acc = f32(0.0)
        for j in range(tid, s.shape[1], TPB):
            acc += math.exp(s[i, j] * inv_t - ms)
        tot = block_sum(sh, acc)
        if tid == 0:
            lse = f64(ms) + math.log(f64(tot))
            k = ids.shape[1]
            qk = 0.0
            for a in range(k):
                lq_buf[i, a] = f64(s[i, ids[i, a]]) * f64(inv_t) - lse
                tl_buf[i, a] = f64(tlp[i, a])
                qk += math.exp(lq_buf[i, a])
            kl, c_rest = buckets(kind, f64(lam), lq_buf[i], tl_buf[i], k, max(0.0, 1.0 - qk), gk_out, i)
            lse_out[i] = lse
            kl_out[i] = kl
            crest_out[i] = c_rest

    @cuda.jit
    def bwd(s, ids, mask, inv_t, lse, crest, gk, scale, g):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sc = scale[0]
        for j in range(tid, s.shape[1], TPB):
            g[i, j] = math.exp(s[i, j] * inv_t - lse[i]) * f32(crest[i]) * sc if mask[i] else f32(0.0)
        cuda.syncthreads()
        if mask[i]:
            for a in range(tid, ids.shape[1], TPB):
                g[i, ids[i, a]] = f32(gk[i, a]) * sc

    return fwd, bwd


def sparse_kd_loss_torch(student_logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor,
                         kind: str = "forward", temperature: float = 1.0, skew_lambda: float = 0.1,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch reference of :func:`sparse_kd_loss` (same k+1-bucket definition)."""
    dt = student_logits.dtype
    lq = F.log_softmax(student_logits / temperature, dim=-1)
    lq_k = lq.gather(-1, top_ids)
    lq_rest = lq.scatter(-1, top_ids, float("-inf")).logsumexp(-1, keepdim=True)
    tlp = top_logprobs.detach().to(dt)
    p_rest = (1.0 - tlp.exp().sum(-1, keepdim=True)).clamp(min=0.0)
    lq_b = torch.cat([lq_k, lq_rest.clamp(min=_LOG_TINY)], -1)
    lp_b = torch.cat([tlp.clamp(min=_LOG_TINY), p_rest.clamp(min=TINY).log()], -1)
    if kind == "forward":  # zero-weight buckets contribute 0 (floored logs would not)
        w = torch.cat([tlp.exp(), p_rest], -1)
        rows = (w * (lp_b - lq_b)).sum(-1)
    else:
        rows = kd_rows_torch(lq_b, lp_b, kind, skew_lambda)
    return masked_mean(rows, mask) * temperature**2


class _SparseKDFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_in, ids, tlp, kind, temperature, lam, mask, inplace, needs_grad):
        s, owned = dispatch.as_f32_contiguous(s_in)
        n, k = ids.shape
        dev = s.device
        ids = ids.to(device=dev, dtype=torch.int64).contiguous()
        tl = tlp.to(device=dev, dtype=torch.float32).contiguous()
        m8 = (torch.ones(n, dtype=torch.uint8, device=dev) if mask is None
              else mask.to(device=dev, dtype=torch.uint8).contiguous())
        lse = torch.zeros(n, dtype=torch.float64, device=dev)
        kl = torch.zeros(n, dtype=torch.float64, device=dev)
        crest = torch.zeros(n, dtype=torch.float64, device=dev)
        gk = torch.zeros(n, k, dtype=torch.float64, device=dev)
        args = (KINDS[kind], np.float32(1.0 / temperature), np.float32(lam))
        if s.is_cuda:
            fwd, _ = cuda_kernels()
            v = dispatch.cuda_view
            lq_buf = torch.empty(n, k, dtype=torch.float64, device=dev)
            tl_buf = torch.empty_like(lq_buf)
            fwd[n, TPB](v(s), v(ids), v(tl), v(m8), *args, v(lse), v(kl), v(crest), v(gk), v(lq_buf), v(tl_buf))
        else:
            v = dispatch.np_view
            _skd_fwd_cpu(v(s), v(ids), v(tl), v(m8), *args, v(lse), v(kl), v(crest), v(gk))
        n_rows = m8.sum()
        loss = (kl.sum() / n_rows * temperature**2).to(s_in.dtype)
        ctx.save_for_backward(s, ids, m8, lse, crest, gk, n_rows)
        ctx.inv_t, ctx.temperature, ctx.in_dtype = args[1], temperature, s_in.dtype
        ctx.overwrite = owned or dispatch.may_overwrite(s_in, inplace)
        # claim only when a backward can follow (not under no_grad / for detached logits)
        ctx.claim = dispatch.claim(s) if (not owned and ctx.overwrite and needs_grad) else None
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        s, ids, m8, lse, crest, gk, n_rows = ctx.saved_tensors
        overwrite = ctx.overwrite
        if ctx.claim is not None and ctx.claim.release() > 0:
            overwrite = False
        g = s if overwrite else torch.empty_like(s)
        if s.is_cuda:
            _, bwd = cuda_kernels()
            v = dispatch.cuda_view
            scale = (grad_out.float() * ctx.temperature / n_rows).reshape(1)
            bwd[s.shape[0], TPB](v(s), v(ids), v(m8), ctx.inv_t, v(lse), v(crest), v(gk), v(scale), v(g))
        else:
            v = dispatch.np_view
            scale = float(grad_out) * ctx.temperature / max(int(n_rows), 1)
            _skd_bwd_cpu(v(s), v(ids), v(m8), ctx.inv_t, v(lse), v(crest), v(gk), scale, v(g))
        if overwrite:
            dispatch.mark_overwritten(s)
            g = g.detach()
        return g.to(ctx.in_dtype), None, None, None, None, None, None, None, None


def sparse_kd_loss(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    kind: str = "forward",
    temperature: float = 1.0,
    skew_lambda: float = 0.1,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    *,
    inplace: bool | None = None,
) -> torch.Tensor:
    """KD loss against a top-k teacher cache over k+1 buckets (see module docstring).

    ``student_logits`` [N, V]; ``top_ids`` long [N, k] (distinct per row); ``top_logprobs``
    [N, k] teacher log-probs (any float dtype); ``mask`` bool [N] or None.  Returns the mean
    row KL over masked rows times temperature**2; gradient w.r.t. the student only.
    """
    check_kd_args(kind, temperature, skew_lambda)
    n, v = student_logits.shape
    if top_ids.dim() != 2 or top_ids.shape[0] != n or top_logprobs.shape != top_ids.shape:
        raise ValueError(f"sparse_kd_loss wants top_ids/top_logprobs [N, k] with N={n}; got "
                         f"{tuple(top_ids.shape)}, {tuple(top_logprobs.shape)}")
    if top_ids.numel() and (int(top_ids.min()) < 0 or int(top_ids.max()) >= v):
        raise ValueError(f"sparse_kd_loss: top_ids out of range [0, {v})")
    which, _ = dispatch.resolve("sparse_kd_loss", student_logits, backend)
    if which == "torch":
        return sparse_kd_loss_torch(student_logits, top_ids.long(), top_logprobs, kind, temperature,
                                    skew_lambda, mask)
    return _SparseKDFn.apply(student_logits, top_ids, top_logprobs.detach(), kind, float(temperature),
                             float(skew_lambda), mask, inplace,
                             torch.is_grad_enabled() and student_logits.requires_grad)


__all__ = ["sparse_kd_loss", "sparse_kd_loss_torch", "cuda_kernels", "TINY"]
