"""RMSNorm (forward + backward) and rotary embedding apply (forward; backward = inverse rotation).

Use::

    from vnmini.kernels import rms_norm, apply_rope
    h = rms_norm(x, weight, eps=1e-5)             # x [..., D], weight [D]
    q = apply_rope(q, cos, sin)                   # q [B, H, T, Dh], cos/sin [T, Dh]

RMSNorm follows Hugging Face ``LlamaRMSNorm``: ``y = weight * (x * rsqrt(mean(x^2) + eps))``,
computed in float32; differentiable in x and weight.  The CPU kernel does one read + one
write per row forward (torch eager: pow, mean, add, rsqrt, two muls -> five temporaries)
and one fused pass backward with per-thread partial sums for d(weight).

RoPE uses the Llama ``rotate_half`` convention: ``out = x*cos + rotate_half(x)*sin`` with
``rotate_half(x) = cat(-x2, x1)`` and cos/sin = cat(freqs, freqs).  cos/sin may be [T, Dh],
[1 or B, T, Dh] or [1 or B, 1, T, Dh]; they are constants (no gradient).  x may be
non-contiguous (q/k after ``transpose(1, 2)``): the kernel reads strided memory directly
instead of copying.  Backward applies the transposed rotation (the inverse rotation for
the Llama convention).

Versions: CPU ``@njit(parallel=True, cache=True)``; CUDA (``cuda_kernels()``, lazy: RMSNorm
one block per row, RoPE one thread per rotated pair); references ``rms_norm_torch`` and
``apply_rope_torch``; autograd bridges ``_RMSNormFn`` and ``_RopeFn``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import njit, prange

from . import dispatch
from ._cudautil import TPB, helpers
from ._mathf import F32, FM

RMS_DW_CHUNKS = 64
cuda = None  # numba.cuda, bound by cuda_kernels() (a module global so the simulator can patch it)


@njit(parallel=True, cache=True, fastmath=FM)
def _rms_fwd_cpu(x, w, eps, y, rstd):
    n, d = x.shape
    for i in prange(n):
        ss = F32(0.0)
        for j in range(d):
            ss += x[i, j] * x[i, j]
        r = F32(1.0) / np.sqrt(ss / F32(d) + eps)
        rstd[i] = r
        for j in range(d):
            y[i, j] = w[j] * (x[i, j] * r)


@njit(parallel=True, cache=True, fastmath=FM)
def _rms_bwd_cpu(x, w, rstd, gy, gx, dw_part):
    n, d = x.shape
    nchunk = dw_part.shape[0]
    per = (n + nchunk - 1) // nchunk
    for c in prange(nchunk):
        acc = dw_part[c]
        for i in range(c * per, min(n, (c + 1) * per)):
            r = rstd[i]
            dot = F32(0.0)
            for j in range(d):
                dot += gy[i, j] * w[j] * x[i, j]
            k = r * r * r * dot / F32(d)
            for j in range(d):
                gx[i, j] = r * gy[i, j] * w[j] - x[i, j] * k
                acc[j] += gy[i, j] * x[i, j] * r


@njit(parallel=True, cache=True, fastmath=FM)
def _rope_cpu(x, cos, sin, out, transpose):
    b, h, t, dh = x.shape
    half = dh // 2
    bc = cos.shape[0]
    for bh in prange(b * h):
        bi = bh // h
        hi = bh % h
        cb = bi if bc > 1 else 0
        for ti in range(t):
            for j in range(half):
                x1 = x[bi, hi, ti, j]
                x2 = x[bi, hi, ti, j + half]
                c1, c2 = cos[cb, ti, j], cos[cb, ti, j + half]
                s1, s2 = sin[cb, ti, j], sin[cb, ti, j + half]
                if transpose:  # gradient: R^T g
                    out[bi, hi, ti, j] = x1 * c1 + x2 * s2
                    out[bi, hi, ti, j + half] = x2 * c2 - x1 * s1
                else:
                    out[bi, hi, ti, j] = x1 * c1 - x2 * s1
                    out[bi, hi, ti, j + half] = x2 * c2 + x1 * s2


@functools.cache
def cuda_kernels():
    """Build the CUDA kernels on first use."""
    h = helpers()
    global cuda
    cuda, f32 = h.cuda, h.float32
    block_sum = h.block_sum

    @cuda.jit
    def rms_fwd(x, w, eps, y, rstd):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(TPB, f32)
        d = x.shape[1]
        acc = f32(0.0)
        for j in range(tid, d, TPB):
            acc += x[i, j] * x[i, j]
        r = f32(1.0) / math.sqrt(block_sum(sh, acc) / d + eps)
        if tid == 0:
            rstd[i] = r
        for j in range(tid, d, TPB):
            y[i, j] = w[j] * (x[i, j] * r)

    @cuda.jit
    def rms_bwd(x, w, rstd, gy, gx, dw):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(TPB, f32)
        d = x.shape[1]
        r = rstd[i]
        acc = f32(0.0)
        for j in range(tid, d, TPB):
            acc += gy[i, j] * w[j] * x[i, j]
        k = r * r * r * block_sum(sh, acc) / d
        for j in range(tid, d, TPB):
            gx[i, j] = r * gy[i, j] * w[j] - x[i, j] * k
            cuda.atomic.add(dw, j, gy[i, j] * x[i, j] * r)

    @cuda.jit
    def rope(x, cos, sin, out, transpose):
        b, hh, t, dh = x.shape
        half = dh // 2
        p = cuda.grid(1)
        if p >= b * hh * t * half:
            return
        j = p % half
        ti = (p // half) % t
        hi = (p // (half * t)) % hh
        bi = p // (half * t * hh)
        cb = bi if cos.shape[0] > 1 else 0
        x1 = x[bi, hi, ti, j]
        x2 = x[bi, hi, ti, j + half]
        c1, c2 = cos[cb, ti, j], cos[cb, ti, j + half]
        s1, s2 = sin[cb, ti, j], sin[cb, ti, j + half]
        if transpose:
            out[bi, hi, ti, j] = x1 * c1 + x2 * s2
            out[bi, hi, ti, j + half] = x2 * c2 - x1 * s1
        else:
            out[bi, hi, ti, j] = x1 * c1 - x2 * s1
            out[bi, hi, ti, j + half] = x2 * c2 + x1 * s2

    return rms_fwd, rms_bwd, rope


# ---- references ------------------------------------------------------------------------

def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain-torch reference (Hugging Face LlamaRMSNorm)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference (Hugging Face ``apply_rotary_pos_emb`` for one tensor)."""
    c, s = _cos_sin_4d(cos, x), _cos_sin_4d(sin, x)
    return x * c + _rotate_half(x) * s


def _cos_sin_4d(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _cos_sin_3d(c).unsqueeze(1).to(x.dtype)


def _cos_sin_3d(c: torch.Tensor) -> torch.Tensor:
    if c.dim() == 2:
        return c.unsqueeze(0)
    if c.dim() == 4:
        return c[:, 0]
    return c


# ---- autograd bridges --------------------------------------------------------------------

class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2, _ = dispatch.as_f32_contiguous(x.reshape(-1, shape[-1]))
        w, _ = dispatch.as_f32_contiguous(weight)
        y = torch.empty_like(x2)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device)
        if x2.is_cuda:
            v = dispatch.cuda_view
            cuda_kernels()[0][x2.shape[0], TPB](v(x2), v(w), np.float32(eps), v(y), v(rstd))
        else:
            v = dispatch.np_view
            _rms_fwd_cpu(v(x2), v(w), np.float32(eps), v(y), v(rstd))
        ctx.save_for_backward(x2, w, rstd)
        ctx.shape, ctx.dtypes = shape, (x.dtype, weight.dtype)
        return y.reshape(shape).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x2, w, rstd = ctx.saved_tensors
        g2, _ = dispatch.as_f32_contiguous(gy.reshape(x2.shape))
        gx = torch.empty_like(x2)
        if x2.is_cuda:
            dw = torch.zeros_like(w)
            v = dispatch.cuda_view
            cuda_kernels()[1][x2.shape[0], TPB](v(x2), v(w), v(rstd), v(g2), v(gx), v(dw))
        else:
            # A fixed chunk count (not one per thread) keeps dw bit-identical whatever the
            # thread count, so a resumed or re-run training run reproduces exactly.
            nchunk = max(1, min(x2.shape[0], RMS_DW_CHUNKS))
            part = torch.zeros(nchunk, w.shape[0], dtype=torch.float32)
            v = dispatch.np_view
            _rms_bwd_cpu(v(x2), v(w), v(rstd), v(g2), v(gx), v(part))
            dw = part.sum(0)
        return gx.reshape(ctx.shape).to(ctx.dtypes[0]), dw.to(ctx.dtypes[1]), None


class _RopeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        xf = x if x.dtype == torch.float32 else x.float()
        c = _cos_sin_3d(cos).to(device=x.device, dtype=torch.float32).contiguous()
        s = _cos_sin_3d(sin).to(device=x.device, dtype=torch.float32).contiguous()
        out = _rope_run(xf.detach(), c, s, False)
        ctx.save_for_backward(c, s)
        ctx.dtype = x.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        c, s = ctx.saved_tensors
        gf = g if g.dtype == torch.float32 else g.float()
        return _rope_run(gf, c, s, True).to(ctx.dtype), None, None


def _rope_run(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, transpose: bool) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if x.is_cuda:
        v = dispatch.cuda_view
        total = x.shape[0] * x.shape[1] * x.shape[2] * (x.shape[3] // 2)
        cuda_kernels()[2][(total + 255) // 256, 256](v(x), v(c), v(s), v(out), transpose)
    else:
        _rope_cpu(dispatch.np_view(x), dispatch.np_view(c), dispatch.np_view(s), dispatch.np_view(out), transpose)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """LlamaRMSNorm of x [..., D] with weight [D]; differentiable in x and weight."""
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match x [..., {x.shape[-1]}]")
    which, _ = dispatch.resolve("rms_norm", x, backend)
    if which == "torch":
        return rms_norm_torch(x, weight, eps)
    return _RMSNormFn.apply(x, weight, float(eps))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Rotate x [B, H, T, Dh] by cos/sin [T, Dh] (Llama rotate_half convention); differentiable in x."""
    if x.dim() != 4 or x.shape[-1] % 2 or cos.shape[-2:] != (x.shape[2], x.shape[3]) or sin.shape != cos.shape:
        raise ValueError(f"apply_rope wants x [B, H, T, Dh] (Dh even) and cos/sin [..., T, Dh]; got "
                         f"{tuple(x.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}")
    which, _ = dispatch.resolve("apply_rope", x, backend)
    if which == "torch":
        return apply_rope_torch(x, cos, sin)
    return _RopeFn.apply(x, cos, sin)


__all__ = ["rms_norm", "rms_norm_torch", "apply_rope", "apply_rope_torch", "cuda_kernels"]
