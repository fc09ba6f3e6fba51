"""Fused dense KD loss (forward / reverse / skew KL with temperature), forward + backward.

Use::

    from vnmini.kernels import kd_loss
    loss = kd_loss(student_logits, teacher_logits, kind="forward", temperature=2.0, mask=valid)

Per row, with u = student/T, w = teacher/T, q = softmax(u), p = softmax(w):

* forward: KL(p || q) = sum p (log p - log q);      d/du = q - p
* reverse: KL(q || p) = sum q (log q - log p);      d/du = q (log q - log p - KL)
* skew (DistiLLM skew forward KL), m = lam p + (1 - lam) q:
  KL(p || m) = sum p (log p - log m);                d/du = (1 - lam) q (R - p/m), R = sum q p/m

The loss is the mean of the row KLs over rows where ``mask`` is True (all rows when None),
times T**2; the gradient flows to the student only.  Neither softmax is materialized:
forward reads both rows to get their LSEs (max pass, exp-sum pass) and the row KL (and R);
backward recomputes p and q on the fly and writes d(student) -- into the student logits'
storage when the ``dispatch`` in-place contract allows (``inplace=False`` opts out).

Versions: CPU ``@njit(parallel=True, cache=True)``; CUDA one block per row
(``cuda_kernels()``, lazy); plain-torch reference ``kd_loss_torch``; autograd bridge
``_KDFn``.
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
from ._mathf import F32, FM, fexp, flog

cuda = None  # numba.cuda, bound by cuda_kernels() (a module global so the simulator can patch it)

KINDS = {"forward": 0, "reverse": 1, "skew": 2}
CHUNK = 2048
_LOWEST = F32(-3.0e38)
_ZERO = F32(0.0)


@njit(inline="always", fastmath=FM)
def row_lse(row, inv_t):
    """log-sum-exp of row * inv_t (float64), two sweeps over an L2-resident row."""
    m = _LOWEST
    for j in range(row.shape[0]):
        m = max(m, row[j])
    ms = m * inv_t
    s = 0.0
    for c0 in range(0, row.shape[0], CHUNK):
        cs = _ZERO
        for j in range(c0, min(c0 + CHUNK, row.shape[0])):
            cs += fexp(row[j] * inv_t - ms)
        s += cs
    return float(ms) + math.log(s)


@njit(parallel=True, cache=True, fastmath=FM)
def _kd_fwd_cpu(s, t, mask, kind, inv_t, lam, lse_s, lse_t, kl_out, r_out):
    n, v = s.shape
    oml = F32(1.0) - lam
    for i in prange(n):
        if not mask[i]:
            kl_out[i] = 0.0
            continue
        ls = row_lse(s[i], inv_t)
        lt = row_lse(t[i], inv_t)
        lse_s[i] = ls
        lse_t[i] = lt
        ls32, lt32 = F32(ls), F32(lt)
        kl = 0.0
        rr = 0.0
        for c0 in range(0, v, CHUNK):
            ck = _ZERO
            cr = _ZERO
            for j in range(c0, min(c0 + CHUNK, v)):
                lq = s[i, j] * inv_t - ls32
                lp = t[i, j] * inv_t - lt32
                if kind == 0:
                    ck += fexp(lp) * (lp - lq)
                elif kind == 1:
                    ck += fexp(lq) * (lq - lp)
                else:
                    p = fexp(lp)
                    q = fexp(lq)
                    mix = lam * p + oml * q
                    ck += p * (lp - flog(mix))
                    cr += q * p / mix if mix > _ZERO else _ZERO
            kl += ck
            rr += cr
        kl_out[i] = kl
        r_out[i] = rr


@njit(parallel=True, cache=True, fastmath=FM)
def _kd_bwd_cpu(s, t, mask, kind, inv_t, lam, lse_s, lse_t, kl, r, scale, g):
    # g may alias s: g[i, j] depends only on s[i, j], t[i, j] and per-row scalars.
    n, v = s.shape
    oml = F32(1.0) - lam
    for i in prange(n):
        if not mask[i]:
            for j in range(v):
                g[i, j] = _ZERO
            continue
        ls32, lt32 = F32(lse_s[i]), F32(lse_t[i])
        sc = F32(scale)
        kli = F32(kl[i])
        ri = F32(r[i])
        for j in range(v):
            lq = s[i, j] * inv_t - ls32
            lp = t[i, j] * inv_t - lt32
            q = fexp(lq)
            if kind == 0:
                d = q - fexp(lp)
            elif kind == 1:
                d = q * (lq - lp - kli)
            else:
                p = fexp(lp)
                mix = lam * p + oml * q
                d = oml * q * (ri - (p / mix if mix > _ZERO else _ZERO))
            g[i, j] = d * sc


@functools.cache
def cuda_kernels():
    """Build the CUDA kernels on first use (one block of TPB threads per row)."""
    h = helpers()
    global cuda
    cuda, f32 = h.cuda, h.float32
    block_max, block_sum = h.block_max, h.block_sum

    @cuda.jit(device=True)
    def lse_row(sh, row, inv_t):
        tid = cuda.threadIdx.x
        m = f32(-3.0e38)
        for j in range(tid, row.shape[0], TPB):
            m = max(m, row[j])
        mm = block_max(sh, m) * inv_t
        acc = f32(0.0)
        for j in range(tid, row.shape[0], TPB):
            acc += math.exp(row[j] * inv_t - mm)
        return mm + math.log(block_sum(sh, acc))

    @cuda.jit
    def fwd(s, t, mask, kind, inv_t, lam, lse_s, lse_t, kl_out, r_out):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(TPB, f32)
        if not mask[i]:
            if tid == 0:
                kl_out[i] = 0.0
            return
        ls = lse_row(sh, s[i], inv_t)
        lt = lse_row(sh, t[i], inv_t)
        oml = f32(1.0) - lam
        ck = f32(0.0)
        cr = f32(0.0)
        for j in range(tid, s.shape[1], TPB):
            lq = s[i, j] * inv_t - ls
            lp = t[i, j] * inv_t - lt
            if kind == 0:
                ck += math.exp(lp) * (lp - lq)
            elif kind == 1:
                ck += math.exp(lq) * (lq - lp)
            else:
                p = math.exp(lp)
                q = math.exp(lq)
                mix = lam * p + oml * q
                if mix > 0:
                    ck += p * (lp - math.log(mix))
                    cr += q * p / mix
        klv = block_sum(sh, ck)
        rv = block_sum(sh, cr)
        if tid == 0:
            lse_s[i] = ls
            lse_t[i] = lt
            kl_out[i] = klv
            r_out[i] = rv

    @cuda.jit
    def bwd(s, t, mask, kind, inv_t, lam, lse_s, lse_t, kl, r, scale, g):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        oml = f32(1.0) - lam
        sc = scale[0]
        for j in range(tid, s.shape[1], TPB):
            if not mask[i]:
                g[i, j] = 0.0
                continue
            lq = s[i, j] * inv_t - lse_s[i]
            lp = t[i, j] * inv_t - lse_t[i]
            q = math.exp(lq)
            if kind == 0:
                d = q - math.exp(lp)
            elif kind == 1:
                d = q * (lq - lp - kl[i])
            else:
                p = math.exp(lp)
                mix = lam * p + oml * q
                d = oml * q * (r[i] - (p / mix if mix > 0 else f32(0.0)))
            g[i, j] = d * sc

    return fwd, bwd


def kd_rows_torch(lq: torch.Tensor, lp: torch.Tensor, kind: str, skew_lambda: float) -> torch.Tensor:
    """Per-row KL from student/teacher log-probs (shared by the dense and sparse references)."""
    if kind == "forward":
        return (lp.exp() * (lp - lq)).sum(-1)
    if kind == "reverse":
        return (lq.exp() * (lq - lp)).sum(-1)
    if kind == "skew":
        lam = torch.tensor(skew_lambda, dtype=lq.dtype, device=lq.device)
        lm = torch.logaddexp(lp + torch.log(lam), lq + torch.log1p(-lam))
        return (lp.exp() * (lp - lm)).sum(-1)
    raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")


def masked_mean(rows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return rows.mean()
    m = mask.to(rows.dtype)
    return (rows * m).sum() / m.sum()


def kd_loss_torch(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward",
                  temperature: float = 1.0, skew_lambda: float = 0.1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch reference of :func:`kd_loss` (materializes both log-softmaxes)."""
    lq = F.log_softmax(student_logits / temperature, dim=-1)
    lp = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)
    return masked_mean(kd_rows_torch(lq, lp, kind, skew_lambda), mask) * temperature**2


class _KDFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_in, t_in, kind, temperature, lam, mask, inplace, needs_grad):
        s, owned = dispatch.as_f32_contiguous(s_in)
        t, _ = dispatch.as_f32_contiguous(t_in)
        n = s.shape[0]
        dev = s.device
        m8 = (torch.ones(n, dtype=torch.uint8, device=dev) if mask is None
              else mask.to(device=dev, dtype=torch.uint8).contiguous())
        lse_s = torch.zeros(n, dtype=torch.float32, device=dev)
        lse_t = torch.zeros(n, dtype=torch.float32, device=dev)
        kl = torch.zeros(n, dtype=torch.float32 if s.is_cuda else torch.float64, device=dev)
        r = torch.zeros_like(kl)
        args = (KINDS[kind], np.float32(1.0 / temperature), np.float32(lam))
        if s.is_cuda:
            fwd, _ = cuda_kernels()
            v = dispatch.cuda_view
            fwd[n, TPB](v(s), v(t), v(m8), *args, v(lse_s), v(lse_t), v(kl), v(r))
        else:
            v = dispatch.np_view
            _kd_fwd_cpu(v(s), v(t), v(m8), *args, v(lse_s), v(lse_t), v(kl), v(r))
        n_rows = m8.sum()
        loss = (kl.double().sum() / n_rows * temperature**2).to(s_in.dtype)
        ctx.save_for_backward(s, t, m8, lse_s, lse_t, kl, r, n_rows)
        ctx.args, ctx.temperature, ctx.in_dtype = args, temperature, s_in.dtype
        ctx.overwrite = owned or dispatch.may_overwrite(s_in, inplace)
        # claim only when a backward can follow (not under no_grad / for detached logits)
        ctx.claim = dispatch.claim(s) if (not owned and ctx.overwrite and needs_grad) else None
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        s, t, m8, lse_s, lse_t, kl, r, n_rows = ctx.saved_tensors
        overwrite = ctx.overwrite
        if ctx.claim is not None and ctx.claim.release() > 0:
            overwrite = False
        g = s if overwrite else torch.empty_like(s)
        # d(T^2 * KL(u = z/T))/dz = T * dKL/du, averaged over the masked rows.
        if s.is_cuda:
            _, bwd = cuda_kernels()
            v = dispatch.cuda_view
            scale = (grad_out.float() * ctx.temperature / n_rows).reshape(1)
            bwd[s.shape[0], TPB](v(s), v(t), v(m8), *ctx.args, v(lse_s), v(lse_t), v(kl), v(r), v(scale), v(g))
        else:
            v = dispatch.np_view
            scale = float(grad_out) * ctx.temperature / max(int(n_rows), 1)
            _kd_bwd_cpu(v(s), v(t), v(m8), *ctx.args, v(lse_s), v(lse_t), v(kl), v(r), scale, v(g))
        if overwrite:
            dispatch.mark_overwritten(s)
            g = g.detach()
        return g.to(ctx.in_dtype), None, None, None, None, None, None, None


def check_kd_args(kind: str, temperature: float, skew_lambda: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= skew_lambda < 1.0:
        raise ValueError(f"skew_lambda must be in [0, 1), got {skew_lambda}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward",
    temperature: float = 1.0,
    skew_lambda: float = 0.1,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    *,
    inplace: bool | None = None,
) -> torch.Tensor:
    """Mean over masked rows of the per-row KL (see module docstring) times temperature**2.

    ``student_logits``, ``teacher_logits``: [N, V]; ``mask``: bool [N] or None (all rows).
    Gradient w.r.t. the student only.  ``backend`` and ``inplace`` as in ``cross_entropy``.
    """
    check_kd_args(kind, temperature, skew_lambda)
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"kd_loss wants two [N, V] tensors; got {tuple(student_logits.shape)}, "
                         f"{tuple(teacher_logits.shape)}")
    which, _ = dispatch.resolve("kd_loss", student_logits, backend)
    if which == "torch":
        return kd_loss_torch(student_logits, teacher_logits, kind, temperature, skew_lambda, mask)
    return _KDFn.apply(student_logits, teacher_logits.detach(), kind, float(temperature), float(skew_lambda),
                       mask, inplace, torch.is_grad_enabled() and student_logits.requires_grad)


__all__ = ["kd_loss", "kd_loss_torch", "kd_rows_torch", "masked_mean", "cuda_kernels"]
