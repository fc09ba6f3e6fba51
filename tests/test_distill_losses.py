"""KD losses against float64 references written from the math (not the kernels' own references).

Covers forward / reverse / skew KL with τ ≠ 1 (dense and the top-k + leftover sparse
form), the distill loss hooks (α·KD + (1 − α)·CE) and the fp16 cache encoding:
sparse KL equals dense KL when k = vocab.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from vnmini.kernels import kd_loss, sparse_kd_loss, topk_lse
from vnmini.training.batch import Batch
from vnmini.training.distill import cache_loss, dense_vs_sparse, online_loss
from vnmini.training.teacher_cache import Teacher, decode_topk, encode_topk

TINY = 1e-30


def ref_kl(p: np.ndarray, q: np.ndarray, kind: str, lam: float) -> np.ndarray:
    """Row KLs of probability rows p (teacher) and q (student), float64, 0·log 0 = 0, logs floored at 1e-30."""
    def kl(a, b):
        return np.where(a > 0, a * (np.log(np.maximum(a, TINY)) - np.log(np.maximum(b, TINY))), 0.0).sum(-1)

    if kind == "forward":
        return kl(p, q)
    if kind == "reverse":
        return kl(q, p)
    return kl(p, lam * p + (1 - lam) * q)


def softmax64(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ref_dense(s: np.ndarray, t: np.ndarray, kind: str, temp: float, lam: float, mask=None) -> float:
    rows = ref_kl(softmax64(t / temp), softmax64(s / temp), kind, lam)
    m = np.ones(len(rows), bool) if mask is None else mask
    return float(rows[m].mean() * temp**2)


def ref_sparse(s: np.ndarray, ids: np.ndarray, logp: np.ndarray, kind: str, temp: float, lam: float) -> float:
    """k cached teacher probs + one rest bucket 1 - sum; the student collapsed onto the same k + 1 buckets."""
    q = softmax64(s / temp)
    p_top = np.exp(logp.astype(np.float64))
    p = np.concatenate([p_top, np.maximum(0.0, 1 - p_top.sum(-1, keepdims=True))], -1)
    q_top = np.take_along_axis(q, ids, -1)
    inside = np.zeros_like(q, dtype=bool)
    np.put_along_axis(inside, ids, True, -1)
    q_rest = np.where(inside, 0.0, q).sum(-1, keepdims=True)
    return float(ref_kl(p, np.concatenate([q_top, q_rest], -1), kind, lam).mean() * temp**2)


def _grad64(fn, s: np.ndarray) -> np.ndarray:
    x = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    fn(x).backward()
    return x.grad.numpy()


def torch_dense64(x, t, kind, temp, lam):
    lq = torch.log_softmax(x / temp, -1)
    lp = torch.log_softmax(torch.as_tensor(t, dtype=torch.float64) / temp, -1)
    p, q = lp.exp(), lq.exp()
    if kind == "forward":
        rows = (p * (lp - lq)).sum(-1)
    elif kind == "reverse":
        rows = (q * (lq - lp)).sum(-1)
    else:
        rows = (p * (lp - torch.log(lam * p + (1 - lam) * q))).sum(-1)
    return rows.mean() * temp**2


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_dense_kd_matches_float64(kind, temp, backend):
    rng = np.random.default_rng(zlib.crc32(repr((kind, temp, backend)).encode()))  # fixed across PYTHONHASHSEED
    n, v = 37, 211  # odd shapes
    s = rng.normal(0, 3, (n, v)).astype(np.float32)
    t = rng.normal(0, 3, (n, v)).astype(np.float32)
    lam = 0.3
    x = torch.tensor(s, requires_grad=True)
    got = kd_loss(x, torch.tensor(t), kind, temp, lam, backend=backend, inplace=False)
    assert float(got.detach()) == pytest.approx(ref_dense(s.astype(np.float64), t.astype(np.float64), kind, temp, lam),
                                       rel=2e-5, abs=1e-6)
    got.backward()
    want = _grad64(lambda z: torch_dense64(z, t.astype(np.float64), kind, temp, lam), s.astype(np.float64))
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-3, atol=2e-6)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_sparse_kd_matches_float64_k_below_vocab(kind, temp, backend):
    rng = np.random.default_rng(zlib.crc32(repr((kind, temp, backend, "s")).encode()))
    n, v, k = 29, 173, 11
    s = rng.normal(0, 2, (n, v)).astype(np.float32)
    t = rng.normal(0, 2, (n, v)).astype(np.float32)
    lp, ids, _ = topk_lse(torch.tensor(t), k, temp, backend="torch")
    got = sparse_kd_loss(torch.tensor(s), ids, lp, kind, temp, 0.2, backend=backend, inplace=False)
    want = ref_sparse(s.astype(np.float64), ids.numpy(), lp.numpy(), kind, temp, 0.2)
    assert float(got) == pytest.approx(want, rel=2e-5, abs=1e-6)
    # The ids are the teacher's top-k at temperature temp, log-probs are its log-softmax.
    lp64 = np.log(softmax64(t.astype(np.float64) / temp))
    np.testing.assert_array_equal(np.sort(ids.numpy(), -1), np.sort(np.argsort(-lp64, -1)[:, :k], -1))
    np.testing.assert_allclose(lp.numpy(), np.take_along_axis(lp64, ids.numpy(), -1), atol=1e-5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_sparse_equals_dense_when_k_is_vocab(kind, temp):
    rng = np.random.default_rng(7)
    n, v = 23, 97
    s = torch.tensor(rng.normal(0, 2, (n, v)), dtype=torch.float32)
    t = torch.tensor(rng.normal(0, 2, (n, v)), dtype=torch.float32)
    # Exact log-probs: sparse == dense to float32 accuracy.
    lp, ids, _ = topk_lse(t, v, temp)
    dense = float(kd_loss(s, t, kind, temp, 0.1, inplace=False))
    assert float(sparse_kd_loss(s, ids, lp, kind, temp, 0.1, inplace=False)) == pytest.approx(dense, rel=1e-4)
    # Through the cache's fp16 encoding (renormalized on read): close to dense.
    r = dense_vs_sparse(t, s, v, kind, temp, 0.1)
    assert r["dense"] == pytest.approx(dense, rel=1e-4)
    assert r["rel_gap"] < 3e-3 and r["teacher_mass_in_topk"] == pytest.approx(1.0, abs=1e-5)


def test_cache_encoding_keeps_the_leftover_mass():
    rng = np.random.default_rng(3)
    t = torch.tensor(rng.normal(0, 4, (50, 300)), dtype=torch.float32)
    for k in (1, 5, 40, 300):
        lp, _, _ = topk_lse(t, k)
        lp16, rest16 = encode_topk(lp, 300)
        assert lp16.dtype == torch.float16 and rest16.dtype == torch.float16
        read = decode_topk(lp16, rest16).double()
        p64 = softmax64(t.double().numpy())
        true_rest = 1 - np.sort(p64, -1)[:, ::-1][:, :k].sum(-1)
        got_rest = 1 - read.exp().sum(-1).numpy()
        np.testing.assert_allclose(got_rest, true_rest, rtol=2e-3, atol=1e-6)
        # fp16: half an ulp is ~5e-4 relative (plus the renormalizing shift).
        np.testing.assert_allclose(read.numpy(), lp.double().numpy(), rtol=1e-3, atol=1e-3)


class _Lin(torch.nn.Module):
    """A bigram 'LM': logits = E[input] (enough to exercise the hooks with gradients)."""

    def __init__(self, v: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(v, v, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb[x]


class _FakeCache:
    def __init__(self, ids, lp, temperature):
        self.ids, self.lp, self.temperature = ids, lp, temperature
        self.positions = 1 << 40  # covers every row

    def lookup(self, positions, length):
        return self.ids, self.lp


@pytest.mark.parametrize("kind", ["forward", "skew"])
def test_loss_hooks_are_alpha_kd_plus_ce(kind):
    v, b, t, temp, alpha = 61, 3, 7, 1.5, 0.3
    student, teacher_m = _Lin(v, 0), _Lin(v, 1)
    x = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(3))
    y[0, :2] = -100  # ignored targets are masked out of KD and CE alike
    batch = Batch(x, y, np.arange(b, dtype=np.int64) * t)
    mask = (y != -100).reshape(-1).numpy()
    s64 = student.emb.detach().double()[x].reshape(-1, v).numpy()
    t64 = teacher_m.emb.detach().double()[x].reshape(-1, v).numpy()
    ls = s64 - s64.max(-1, keepdims=True)
    ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
    ce = -ls[np.arange(len(mask)), y.reshape(-1).clamp_min(0).numpy()][mask].mean()

    teacher = Teacher(teacher_m, None, "fake", torch.device("cpu"))
    loss, mets = online_loss(teacher, alpha, kind, temp, 0.2)(student, batch)
    want = alpha * ref_dense(s64, t64, kind, temp, 0.2, mask) + (1 - alpha) * ce
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert mets["ce"] == pytest.approx(ce, rel=1e-5)

    k = 9
    lp, ids, _ = topk_lse(torch.tensor(t64, dtype=torch.float32), k, temp)
    cache = _FakeCache(ids.reshape(b, t, k), lp.reshape(b, t, k), temp)
    loss_c, _ = cache_loss(cache, alpha, kind, 0.2)(student, batch)
    sp = ref_sparse(s64[mask], ids.numpy()[mask], lp.numpy()[mask], kind, temp, 0.2)
    assert float(loss_c.detach()) == pytest.approx(alpha * sp + (1 - alpha) * ce, rel=1e-5)
    loss_c.backward()  # gradients reach the student
    assert student.emb.grad is not None and torch.isfinite(student.emb.grad).all()
