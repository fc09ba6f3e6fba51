"""bits per byte and parity metrics against direct float64 formulas."""

import math

import numpy as np
import torch

from vnmini.metrics import bits_per_byte, kl_divergence, max_relative_error, nll_and_bytes, top1_agreement


def test_nll_and_bytes_matches_manual():
    rng = np.random.default_rng()
    logits = rng.normal(size=(3, 7, 11))
    targets = rng.integers(0, 11, size=(3, 7))
    targets[0, 0] = -100
    tb = rng.integers(0, 4, size=11)
    nll, nb = nll_and_bytes(logits, targets, tb)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = targets != -100
    ref = -sum(lp[i, j, targets[i, j]] for i in range(3) for j in range(7) if mask[i, j])
    assert math.isclose(nll, ref, rel_tol=1e-12)
    assert nb == tb[targets[mask]].sum()
    assert math.isclose(bits_per_byte(nll, nb), ref / math.log(2) / nb)


def test_kl_top1_relerr():
    rng = np.random.default_rng()
    a = rng.normal(size=(5, 9))
    assert abs(kl_divergence(a, a)) < 1e-12
    b = a + rng.normal(size=a.shape)
    p = torch.softmax(torch.tensor(a), -1)
    q = torch.softmax(torch.tensor(b), -1)
    ref = float((p * (p.log() - q.log())).sum(-1).mean())
    assert math.isclose(kl_divergence(a, b), ref, rel_tol=1e-9)
    assert top1_agreement(a, a) == 1.0
    assert max_relative_error(a * 1.001, a) <= 1.001e-3
