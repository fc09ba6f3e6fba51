"""Loss kernels (cross-entropy, dense KD, sparse KD) on CPU against float64 torch references.

Fresh random inputs every run (the seed is in the failure message), odd shapes (N and V
not multiples of anything, one V = 65,536 case), gradients, ignore_index, masks,
temperatures, and the in-place gradient contract.  Tolerances: the kernels compute in
float32 with float64 row accumulators, so losses match to 1e-5 relative and gradients to
2e-6 absolute (gradient entries are O(1/N)).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vnmini.kernels import (
    cross_entropy,
    cross_entropy_torch,
    kd_loss,
    kd_loss_torch,
    kernel_info,
    sparse_kd_loss,
    sparse_kd_loss_torch,
)

SEED = int.from_bytes(os.urandom(4), "little")
SHAPES = [(37, 1001), (3, 65536), (1, 7)]
KINDS = ["forward", "reverse", "skew"]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(SEED)


def _grad(fn, x):
    """Loss and gradient of fn at a non-leaf copy of x (the in-place path may overwrite it)."""
    leaf = x.clone().requires_grad_()
    z = leaf * 1
    loss = fn(z)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach().double(), g.double()


def _ref_grad(fn, x):
    xd = x.double().requires_grad_()
    loss = fn(xd)
    (g,) = torch.autograd.grad(loss, xd)
    return loss.detach(), g


def _close(a, b, ga, gb, what):
    msg = f"{what} (seed {SEED})"
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"loss {a} vs {b}: {msg}"
    assert (ga - gb).abs().max().item() < 2e-6, f"grad err {(ga - gb).abs().max().item()}: {msg}"


@pytest.mark.parametrize("n,v", SHAPES)
def test_cross_entropy_matches_float64(gen, n, v):
    x = torch.randn(n, v, generator=gen) * 4
    y = torch.randint(0, v, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.25] = -100
    y[0] = v - 1  # at least one valid row
    a, ga = _grad(lambda z: cross_entropy(z, y, backend="numba"), x)
    b, gb = _ref_grad(lambda z: cross_entropy_torch(z, y), x)
    _close(a, b, ga, gb, f"CE n={n} v={v}")
    assert (ga[y == -100] == 0).all()


def test_cross_entropy_custom_ignore_index_and_errors(gen):
    x = torch.randn(11, 53, generator=gen)
    y = torch.randint(0, 53, (11,), generator=gen)
    y[3] = 7
    a, ga = _grad(lambda z: cross_entropy(z, y, ignore_index=7, backend="numba"), x)
    b, gb = _ref_grad(lambda z: cross_entropy_torch(z, y, ignore_index=7), x)
    _close(a, b, ga, gb, "CE ignore_index=7")
    # no valid row: NaN loss like torch, and a zero (not NaN) gradient
    loss, g = _grad(lambda z: cross_entropy(z, torch.full((11,), -100), backend="numba"), x)
    assert torch.isnan(loss) and torch.isnan(cross_entropy_torch(x, torch.full((11,), -100)))
    assert (g == 0).all()
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(x, torch.full((11,), 53), backend="numba")
    with pytest.raises(ValueError):
        cross_entropy(x, y, backend="cuda")


def test_cross_entropy_bf16_and_grad_output_scale(gen):
    x = torch.randn(19, 301, generator=gen)
    y = torch.randint(0, 301, (19,), generator=gen)
    leaf = x.to(torch.bfloat16).requires_grad_()
    (3.0 * cross_entropy(leaf, y, backend="numba")).backward()
    xd = x.to(torch.bfloat16).double().requires_grad_()
    (3.0 * cross_entropy_torch(xd, y)).backward()
    assert leaf.grad.dtype == torch.bfloat16
    assert (leaf.grad.double() - xd.grad).abs().max().item() < 1e-3 * 3


@pytest.mark.parametrize("n,v", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kd_loss_matches_float64(gen, n, v, kind):
    s = torch.randn(n, v, generator=gen) * 3
    t = torch.randn(n, v, generator=gen) * 3
    mask = torch.rand(n, generator=gen) > 0.3
    mask[0] = True
    temp = 0.7 + 2 * torch.rand(1, generator=gen).item()
    a, ga = _grad(lambda z: kd_loss(z, t, kind, temp, 0.25, mask, backend="numba"), s)
    b, gb = _ref_grad(lambda z: kd_loss_torch(z, t.double(), kind, temp, 0.25, mask), s)
    _close(a, b, ga, gb, f"KD {kind} n={n} v={v} T={temp}")
    assert (ga[~mask] == 0).all()


def test_kd_forward_equals_torch_kl_div(gen):
    s, t = torch.randn(13, 97, generator=gen), torch.randn(13, 97, generator=gen)
    ours = kd_loss(s, t, "forward", 2.0, backend="numba")
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean") * 4
    assert abs(ours.item() - ref.item()) < 1e-5


@pytest.mark.parametrize("n,v,k", [(37, 1001, 13), (3, 65536, 64), (5, 23, 1)])
@pytest.mark.parametrize("kind", KINDS)
def test_sparse_kd_matches_float64(gen, n, v, k, kind):
    s = torch.randn(n, v, generator=gen) * 2
    t = torch.randn(n, v, generator=gen) * 2
    vals, ids = torch.log_softmax(t.double() / 1.5, -1).topk(k, -1)
    vals = vals.half()  # the cache stores fp16
    mask = torch.rand(n, generator=gen) > 0.3
    mask[0] = True
    a, ga = _grad(lambda z: sparse_kd_loss(z, ids, vals, kind, 1.5, 0.1, mask, backend="numba"), s)
    b, gb = _ref_grad(lambda z: sparse_kd_loss_torch(z, ids, vals, kind, 1.5, 0.1, mask), s)
    _close(a, b, ga, gb, f"sparse KD {kind} n={n} v={v} k={k}")


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_kd_with_full_vocab_equals_dense(gen, kind):
    n, v = 9, 211
    s = torch.randn(n, v, generator=gen) * 2
    t = torch.randn(n, v, generator=gen) * 2
    vals, ids = torch.log_softmax(t.double() / 2.0, -1).topk(v, -1)
    a, ga = _grad(lambda z: sparse_kd_loss(z, ids, vals.float(), kind, 2.0, 0.1, backend="numba"), s)
    b, gb = _ref_grad(lambda z: kd_loss_torch(z, t.double(), kind, 2.0, 0.1), s)
    _close(a, b, ga, gb, f"sparse(k=V) vs dense {kind}")


def test_inplace_contract(gen):
    x = torch.randn(17, 129, generator=gen)
    y = torch.randint(0, 129, (17,), generator=gen)
    t = torch.randn(17, 129, generator=gen)
    # non-leaf logits: the gradient is written into their storage (no second N x V tensor)
    z = x.clone().requires_grad_() * 1
    (g,) = torch.autograd.grad(cross_entropy(z, y, backend="numba"), z)
    assert g.data_ptr() == z.data_ptr()
    # leaf logits are user data: never overwritten
    leaf = x.clone().requires_grad_()
    cross_entropy(leaf, y, backend="numba").backward()
    assert torch.equal(leaf.detach(), x) and leaf.grad.data_ptr() != leaf.data_ptr()
    # inplace=False keeps non-leaf logits intact
    z = x.clone().requires_grad_() * 1
    torch.autograd.grad(cross_entropy(z, y, backend="numba", inplace=False), z)
    assert torch.equal(z.detach(), x)
    # two vnmini losses on the same logits: the first backward must not clobber the second's input
    leaf = x.clone().requires_grad_()
    z = leaf * 1
    (cross_entropy(z, y, backend="numba") + kd_loss(z, t, "reverse", 2.0, backend="numba")).backward()
    ref = x.double().requires_grad_()
    (cross_entropy_torch(ref, y) + kd_loss_torch(ref, t.double(), "reverse", 2.0)).backward()
    assert (leaf.grad.double() - ref.grad).abs().max().item() < 2e-6
    # another autograd user of the logits fails loudly instead of reading gradients
    z = x.clone().requires_grad_() * 1
    other = (z * z).sum()
    loss = cross_entropy(z, y, backend="numba") + other
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_backend_torch_and_info():
    x = torch.randn(4, 9, requires_grad=True)
    y = torch.tensor([1, 2, 3, -100])
    assert torch.allclose(cross_entropy(x, y, backend="torch"), F.cross_entropy(x, y))
    info = kernel_info()
    names = {(r["name"], r["device"]) for r in info}
    assert ("cross_entropy", "cpu") in names and ("kd_loss", "cuda") in names
    assert all(r["backend"] in ("numba", "torch") and r["reason"] for r in info)


def test_claims_do_not_leak(gen):
    from vnmini.kernels import dispatch

    x = torch.randn(5, 33, generator=gen)
    y = torch.randint(0, 33, (5,), generator=gen)
    z = x.clone().requires_grad_() * 1
    with torch.no_grad():
        cross_entropy(z, y, backend="numba")  # no backward can follow: no claim
    loss = kd_loss(z, x, "forward", backend="numba")
    del loss  # graph dropped without backward: its claim goes with it
    assert not dispatch._claims
    (g,) = torch.autograd.grad(cross_entropy(z, y, backend="numba"), z)
    assert g.data_ptr() == z.data_ptr() and not dispatch._claims
