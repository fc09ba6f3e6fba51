"""Fused cross-entropy (module `xent`, named so it does not shadow the `cross_entropy` function): loss and
d(logits) with an online log-sum-exp, no (N, V) temporaries.

Use::

    from vnmini.kernels import cross_entropy
    loss = cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    loss.backward()

Forward reads each row once (chunked online log-sum-exp: chunk max, rescale the running
sum, add the chunk's exponentials) and keeps only the row's LSE.  Backward writes
``(softmax - onehot) * grad / n_valid`` in one pass per row, into the logits' own storage
when that is safe (see ``dispatch`` for the contract; ``inplace=False`` opts out), so the
peak extra memory is O(N) instead of torch eager's three (N, V) float tensors
(log-softmax output, its gradient, the logits gradient).  Rows whose target is
``ignore_index`` get a zero gradient; the loss is the mean over valid rows (NaN when no row
is valid, like torch).

Versions: CPU ``@njit(parallel=True, cache=True)`` over rows (``_ce_fwd_cpu``/``_ce_bwd_cpu``),
CUDA one block per row (``cuda_kernels()``, built lazily), the plain-torch reference
``cross_entropy_torch``, and the ``_CrossEntropyFn`` autograd bridge that picks by device.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from numba import njit, prange

from . import dispatch
from ._cudautil import TPB, helpers
from ._mathf import F32, FM, fexp

cuda = None  # numba.cuda, bound by cuda_kernels() (a module global so the simulator can patch it)

CHUNK = 2048  # online-LSE chunk: fits in L1 next to the row's other streams

_LOWEST = F32(-3.0e38)


@njit(parallel=True, cache=True, fastmath=FM)
def _ce_fwd_cpu(x, y, ignore, lse_out, loss_out):
    n, v = x.shape
    for i in prange(n):
        row = x[i]
        m = _LOWEST
        s = 0.0  # float64 running sum across chunks
        for c0 in range(0, v, CHUNK):
            c1 = min(c0 + CHUNK, v)
            cm = row[c0]
            for j in range(c0, c1):
                cm = max(cm, row[j])
            if cm > m:
                s *= math.exp(float(m) - float(cm))
                m = cm
            cs = F32(0.0)
            for j in range(c0, c1):
                cs += fexp(row[j] - m)
            s += cs
        lse = float(m) + math.log(s)
        lse_out[i] = lse
        t = y[i]
        loss_out[i] = 0.0 if t == ignore else lse - float(row[t])


@njit(parallel=True, cache=True, fastmath=FM)
def _ce_bwd_cpu(x, y, ignore, lse, scale, g):
    # g may be x itself: each g[i, j] depends only on x[i, j], so aliasing is safe.
    n, v = x.shape
    sc = F32(scale)
    for i in prange(n):
        t = y[i]
        if t == ignore:
            for j in range(v):
                g[i, j] = F32(0.0)
            continue
        li = F32(lse[i])
        for j in range(v):
            g[i, j] = fexp(x[i, j] - li) * sc
        g[i, t] -= sc


@functools.cache
def cuda_kernels():
    """Build the CUDA kernels on first use (one block of TPB threads per row)."""
    h = helpers()
    global cuda
    cuda, f32 = h.cuda, h.float32
    block_max, block_sum = h.block_max, h.block_sum

    @cuda.jit
    def fwd(x, y, ignore, lse_out, loss_out):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        v = x.shape[1]
        sh = cuda.shared.array(TPB, f32)
        m = f32(-3.0e38)
        s = f32(0.0)
        for j in range(tid, v, TPB):  # per-thread online LSE
            xv = x[i, j]
            if xv > m:
                s = s * math.exp(m - xv) + f32(1.0)
                m = xv
            else:
                s += math.exp(xv - m)
        mm = block_max(sh, m)
        tot = block_sum(sh, s * math.exp(m - mm))
        if tid == 0:
            lse = mm + math.log(tot)
            lse_out[i] = lse
            t = y[i]
            loss_out[i] = 0.0 if t == ignore else lse - x[i, t]

    @cuda.jit
    def bwd(x, y, ignore, lse, scale, g):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        v = x.shape[1]
        t = y[i]
        sc = scale[0]
        li = lse[i]
        for j in range(tid, v, TPB):
            if t == ignore:
                g[i, j] = 0.0
            else:
                gv = math.exp(x[i, j] - li) * sc
                g[i, j] = gv - sc if j == t else gv

    return fwd, bwd


def cross_entropy_torch(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Plain-torch reference: mean cross-entropy over rows whose target != ignore_index."""
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="mean")


class _CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, inplace, needs_grad):
        x, owned = dispatch.as_f32_contiguous(logits)
        y = targets.contiguous()
        n, v = x.shape
        valid = y != ignore_index
        bad = valid & ((y < 0) | (y >= v))
        if bool(bad.any()):
            raise ValueError(f"cross_entropy: target out of range [0, {v}) at row {int(bad.nonzero()[0])}")
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        rows = torch.empty(n, dtype=torch.float32 if x.is_cuda else torch.float64, device=x.device)
        if x.is_cuda:
            fwd, _ = cuda_kernels()
            fwd[n, TPB](dispatch.cuda_view(x), dispatch.cuda_view(y), ignore_index,
                        dispatch.cuda_view(lse), dispatch.cuda_view(rows))
        else:
            _ce_fwd_cpu(dispatch.np_view(x), dispatch.np_view(y), ignore_index,
                        dispatch.np_view(lse), dispatch.np_view(rows))
        n_valid = valid.sum()
        loss = (rows.double().sum() / n_valid).to(logits.dtype)
        ctx.save_for_backward(x, y, lse, n_valid)
        ctx.ignore = ignore_index
        ctx.in_dtype = logits.dtype
        # Overwrite only our private copy, or the caller's tensor when the contract allows.
        ctx.overwrite = owned or dispatch.may_overwrite(logits, inplace)
        # claim only when a backward can follow (not under no_grad / for detached logits)
        ctx.claim = dispatch.claim(x) if (not owned and ctx.overwrite and needs_grad) else None
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        x, y, lse, n_valid = ctx.saved_tensors
        overwrite = ctx.overwrite
        if ctx.claim is not None and ctx.claim.release() > 0:
            overwrite = False  # another vnmini kernel still needs these logits
        g = x if overwrite else torch.empty_like(x)
        if x.is_cuda:
            _, bwd = cuda_kernels()
            scale = (grad_out.float() / n_valid).reshape(1)
            bwd[x.shape[0], TPB](dispatch.cuda_view(x), dispatch.cuda_view(y), ctx.ignore,
                                 dispatch.cuda_view(lse), dispatch.cuda_view(scale), dispatch.cuda_view(g))
        else:
            scale = float(grad_out) / max(int(n_valid), 1)
            _ce_bwd_cpu(dispatch.np_view(x), dispatch.np_view(y), ctx.ignore, dispatch.np_view(lse), scale,
                        dispatch.np_view(g))
        if overwrite:
            dispatch.mark_overwritten(x)
            g = g.detach()
        return g.to(ctx.in_dtype), None, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    backend: str = "auto",
    *,
    inplace: bool | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, V] against ``targets`` [N] over rows != ignore_index.

    ``backend``: "auto" (fastest measured for the device), "numba" or "torch".
    ``inplace``: None = write d(logits) into the logits' storage when safe (non-leaf, not
    needed by another vnmini kernel); False = never; True = always (caller guarantees
    nothing reads the logits after backward).  Differentiable w.r.t. ``logits`` only.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy wants logits [N, V] and targets [N]; got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}")
    which, _ = dispatch.resolve("cross_entropy", logits, backend)
    if which == "torch" or not logits.dtype.is_floating_point:
        return cross_entropy_torch(logits, targets, ignore_index)
    return _CrossEntropyFn.apply(logits, targets.long(), ignore_index, inplace,
                                 torch.is_grad_enabled() and logits.requires_grad)


__all__ = ["cross_entropy", "cross_entropy_torch", "cuda_kernels"]
