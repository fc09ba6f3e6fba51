"""Top-k + LSE, RMSNorm and RoPE kernels on CPU against float64 torch references (fresh random inputs)."""

from __future__ import annotations

import os

import pytest
import torch

from vnmini.kernels import apply_rope, apply_rope_torch, rms_norm, rms_norm_torch, topk_lse, topk_lse_torch

SEED = int.from_bytes(os.urandom(4), "little")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(SEED)


@pytest.mark.parametrize("n,v,k", [(37, 1001, 13), (2, 65536, 64), (5, 9, 9), (3, 17, 1)])
def test_topk_lse(gen, n, v, k):
    x = torch.randn(n, v, generator=gen) * 3
    temp = 0.5 + torch.rand(1, generator=gen).item()
    vals, ids, lse = topk_lse(x, k, temp, backend="numba")
    rv, ri, rl = topk_lse_torch(x.double(), k, temp)
    assert vals.shape == (n, k) and ids.dtype == torch.int64
    assert torch.equal(ids, ri), f"seed {SEED}"  # random floats: no ties
    assert (vals.double() - rv).abs().max() < 2e-5 and (lse.double() - rl).abs().max() < 2e-5, f"seed {SEED}"
    assert (vals[:, 1:] <= vals[:, :-1]).all()


def test_topk_ties_prefer_lower_index():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    _, ids, _ = topk_lse(x, 2, backend="numba")
    assert ids.tolist() == [[1, 2]]
    with pytest.raises(ValueError):
        topk_lse(x, 6)


@pytest.mark.parametrize("shape", [(3, 7, 37), (5, 1001), (1, 1, 4096)])
def test_rms_norm(gen, shape):
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(shape[-1], generator=gen)
    gy = torch.randn(*shape, generator=gen)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = rms_norm(xa, wa, 1e-5, backend="numba")
    y.backward(gy)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    yr = rms_norm_torch(xd, wd, 1e-5)
    yr.backward(gy.double())
    assert (y.double() - yr).abs().max() < 1e-5, f"seed {SEED}"
    assert (xa.grad.double() - xd.grad).abs().max() < 1e-4, f"seed {SEED}"
    assert (wa.grad.double() - wd.grad).abs().max() < 1e-3 * max(1.0, wd.grad.abs().max().item()), f"seed {SEED}"


@pytest.mark.parametrize("cos_shape", ["2d", "3d", "4d"])
def test_apply_rope_strided_input(gen, cos_shape):
    b, t, h, dh = 2, 11, 3, 18
    base = torch.randn(b, t, h, dh, generator=gen)
    f = torch.randn(t, dh // 2, generator=gen)
    cos = torch.cat([f.cos(), f.cos()], -1)
    sin = torch.cat([f.sin(), f.sin()], -1)
    if cos_shape == "3d":
        cos, sin = cos[None], sin[None]
    elif cos_shape == "4d":
        cos, sin = cos[None, None], sin[None, None]
    q = base.clone().requires_grad_()
    qt = q.transpose(1, 2)  # [B, H, T, Dh], non-contiguous like HF's q after the projection
    out = apply_rope(qt, cos, sin, backend="numba")
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    qd = base.double().requires_grad_()
    ref = apply_rope_torch(qd.transpose(1, 2), cos.double(), sin.double())
    ref.backward(g.double())
    assert (out.double() - ref).abs().max() < 1e-5, f"seed {SEED}"
    assert (q.grad.double() - qd.grad).abs().max() < 1e-5, f"seed {SEED}"
