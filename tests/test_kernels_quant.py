"""Q8_0 / Q4_0 block quantizers: byte-for-byte equal to gguf.quants on random and adversarial blocks."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from vnmini.kernels import dequantize_q4_0, dequantize_q8_0, quantize_q4_0, quantize_q8_0

SEED = int.from_bytes(os.urandom(4), "little")
OURS = {T.Q8_0: (quantize_q8_0, dequantize_q8_0), T.Q4_0: (quantize_q4_0, dequantize_q4_0)}
F32MAX = np.finfo(np.float32).max


def _adversarial() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    blocks = [
        np.zeros(32), -np.zeros(32), np.full(32, F32MAX), np.full(32, -F32MAX),
        np.tile([F32MAX, -F32MAX], 16), np.full(32, 1e-40), np.full(32, 1e-38), np.full(32, 3e-39),
        np.full(32, 6e-8), np.full(32, 65504.0), np.full(32, 65520.0), np.full(32, 1e6),
        np.arange(32) - 16.0, np.tile([1.0, -1.0], 16) * 3.0, np.r_[np.zeros(31), -5.0], np.r_[7.0, np.zeros(31)],
        np.r_[-2.0, 2.0, np.zeros(30)],  # |max| tie: the first (negative) one sets the sign of d
        (np.arange(32) - 16) / 16 * 127 / 2,  # exact .5 cases after scaling
        rng.standard_normal(32) * 1e-30, rng.standard_normal(32) * 1e30,
    ]
    return np.stack(blocks).astype(np.float32).reshape(1, -1)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0])
def test_bit_exact_random_and_adversarial(qtype):
    q, dq = OURS[qtype]
    rng = np.random.default_rng(SEED)
    scales = rng.choice([1e-6, 1.0, 1e3, 6e4], size=(37, 1)).astype(np.float32)
    cases = [
        (rng.standard_normal((37, 32 * 13)) * scales).astype(np.float32),
        rng.uniform(-1, 1, (5, 4096)).astype(np.float32),
        _adversarial(),
    ]
    for a in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # gguf's own invalid casts
            ref = quantize(a, qtype)
            ref_dq = dequantize(ref, qtype)  # inf * 0 in the F32MAX blocks gives NaN in both
        ours = q(a)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape
        bad = np.argwhere(ours != ref)
        assert bad.size == 0, f"{qtype.name} differs at {bad[:5].tolist()} (seed {SEED})"
        np.testing.assert_array_equal(dq(ref), ref_dq)


def test_shapes_and_errors():
    a = np.ones((3, 64), np.float32)
    assert quantize_q8_0(a).shape == (3, 68) and quantize_q4_0(a).shape == (3, 36)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.ones((2, 33), np.float32))
    with pytest.raises(ValueError):
        dequantize_q4_0(np.zeros((2, 19), np.uint8))
