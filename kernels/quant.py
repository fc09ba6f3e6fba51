"""GGUF block quantizers Q8_0 and Q4_0 (and dequantizers), bit-exact with ``gguf.quants``.

Use::

    from vnmini.kernels import quantize_q8_0, dequantize_q8_0
    raw = quantize_q8_0(w)            # w float32 [rows, cols], cols % 32 == 0 -> uint8 [rows, cols//32*34]

Block layouts (32 values per block): Q8_0 = fp16 scale d + 32 int8; Q4_0 = fp16 scale d +
16 bytes of nibbles (value j in the low nibble of byte j, value j+16 in the high nibble).

Bit-exactness with gguf-py's numpy reference (the oracle in the tests) means repeating its
float32 arithmetic step by step, without fastmath and without FMA contraction:

* Q8_0: ``d = max|x| / 127``; ``id = 0 if d == 0 else 1/d``; ``q = roundf(x * id)`` with
  round-half-away-from-zero done as gguf does (``floor(a) + floor(2 (a - floor(a)))``).
* Q4_0: ``max`` = the signed value with the largest magnitude (first one on ties);
  ``d = max / -8``; ``q = min(15, uint8(trunc(x * id + 8.5)))``.  An all-zero block
  therefore stores d = -0.0 (bytes 00 80), exactly like gguf.
* The float32 -> fp16 conversion of d is round-to-nearest-even with subnormals and
  overflow to inf, done with integer bit operations (Numba has no float16 scalar type).
* numpy's float -> int8/uint8 cast of inf/NaN/out-of-range values (reachable only when
  d is subnormal, so 1/d overflows) is reproduced as x86 does it: convert to int32, where
  invalid becomes INT32_MIN, then keep the low byte.

The CPU kernels run ``@njit(parallel=True, cache=True)`` over rows.  There is no CUDA
version: the GGUF exporter works on numpy arrays on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._mathf import F32, f32_as_i32, i32_as_f32

QK = 32
_INV_127 = F32(127.0)
_M8 = F32(-8.0)
_B85 = F32(8.5)
_INF = F32(np.inf)


@njit(inline="always")
def _f32_to_f16_bits(f):
    b = np.int64(f32_as_i32(f)) & 0xFFFFFFFF
    sign = (b >> 16) & 0x8000
    e = b & 0x7F800000
    m = b & 0x007FFFFF
    if e == 0x7F800000:  # inf / nan
        if m == 0:
            return sign | 0x7C00
        r = 0x7C00 + (m >> 13)
        return sign | (r + 1 if r == 0x7C00 else r)
    if e >= 0x47800000:  # too large: inf
        return sign | 0x7C00
    if e <= 0x38000000:  # half subnormal or zero: round |f| * 2^24 to nearest even (exact in float64)
        y = abs(float(f)) * 16777216.0
        fl = np.floor(y)
        rem = y - fl
        q = np.int64(fl)
        if rem > 0.5 or (rem == 0.5 and (q & 1) == 1):
            q += 1
        return sign | q
    h = ((e - 0x38000000) >> 13) + (m >> 13)
    rest = m & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and (h & 1) == 1):
        h += 1  # a carry into the exponent is correct, up to inf
    return sign | h


@njit(inline="always")
def _f16_bits_to_f32(h):
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = F32(m) * F32(5.960464477539063e-08)  # m * 2^-24, exact
        return -v if sign else v
    if e == 31:
        bits = sign | 0x7F800000 | (m << 13)
    else:
        bits = sign | ((e + 112) << 23) | (m << 13)
    return i32_as_f32(np.int32(np.int64(bits) - (np.int64(1) << 32) if bits >= 0x80000000 else bits))


@njit(inline="always")
def _x86_int32(v):
    """float32 -> int32 as the C cast does on x86: NaN/out-of-range give INT32_MIN."""
    if v != v or v >= F32(2147483648.0) or v < F32(-2147483648.0):
        return np.int64(-2147483648)
    return np.int64(v)


@njit(parallel=True, cache=True)
def _q8_0_cpu(a, out):
    rows, cols = a.shape
    nb = cols // QK
    for r in prange(rows):
        for bi in range(nb):
            x = a[r, bi * QK:(bi + 1) * QK]
            amax = F32(0.0)
            for j in range(QK):
                amax = max(amax, abs(x[j]))
            d = amax / _INV_127
            idv = F32(0.0) if d == 0 else F32(1.0) / d
            o = bi * 34
            hb = _f32_to_f16_bits(d)
            out[r, o] = hb & 0xFF
            out[r, o + 1] = (hb >> 8) & 0xFF
            if abs(idv) < _INF:  # common case: |x * id| <= 127.x, a plain cast is exact
                for j in range(QK):
                    v = x[j] * idv
                    av = abs(v)
                    fl = np.floor(av)
                    q = fl + np.floor(F32(2.0) * (av - fl))
                    out[r, o + 2 + j] = np.int32(-q if v < 0 else q) & 0xFF
                continue
            for j in range(QK):  # d subnormal: 1/d = inf, reproduce numpy's invalid casts
                v = x[j] * idv
                av = abs(v)
                fl = np.floor(av)
                q = fl + np.floor(F32(2.0) * (av - fl))
                q = -q if v < 0 else (q if v > 0 else v * F32(0.0))
                out[r, o + 2 + j] = _x86_int32(q) & 0xFF


@njit(parallel=True, cache=True)
def _q4_0_cpu(a, out):
    rows, cols = a.shape
    nb = cols // QK
    for r in prange(rows):
        for bi in range(nb):
            x = a[r, bi * QK:(bi + 1) * QK]
            amax = F32(-1.0)
            mx = F32(0.0)
            for j in range(QK):
                if abs(x[j]) > amax:  # strict: first index wins, as numpy argmax
                    amax = abs(x[j])
                    mx = x[j]
            d = mx / _M8
            idv = F32(0.0) if d == 0 else F32(1.0) / d
            o = bi * 18
            hb = _f32_to_f16_bits(d)
            out[r, o] = hb & 0xFF
            out[r, o + 1] = (hb >> 8) & 0xFF
            if abs(idv) < _INF:  # common case: 0 <= x * id + 8.5 <= 16.5, a plain cast is exact
                for j in range(16):
                    q0 = min(np.int32(x[j] * idv + _B85), 15)
                    q1 = min(np.int32(x[j + 16] * idv + _B85), 15)
                    out[r, o + 2 + j] = q0 | (q1 << 4)
                continue
            for j in range(16):
                q0 = min(_x86_int32(np.trunc(x[j] * idv + _B85)) & 0xFF, 15)
                q1 = min(_x86_int32(np.trunc(x[j + 16] * idv + _B85)) & 0xFF, 15)
                out[r, o + 2 + j] = q0 | (q1 << 4)


@njit(parallel=True, cache=True)
def _dq8_0_cpu(raw, out):
    rows = raw.shape[0]
    nb = raw.shape[1] // 34
    for r in prange(rows):
        for bi in range(nb):
            o = bi * 34
            d = _f16_bits_to_f32(np.int64(raw[r, o]) | (np.int64(raw[r, o + 1]) << 8))
            for j in range(QK):
                q = np.int64(raw[r, o + 2 + j])
                out[r, bi * QK + j] = F32(q - 256 if q > 127 else q) * d


@njit(parallel=True, cache=True)
def _dq4_0_cpu(raw, out):
    rows = raw.shape[0]
    nb = raw.shape[1] // 18
    for r in prange(rows):
        for bi in range(nb):
            o = bi * 18
            d = _f16_bits_to_f32(np.int64(raw[r, o]) | (np.int64(raw[r, o + 1]) << 8))
            for j in range(16):
                b = np.int64(raw[r, o + 2 + j])
                out[r, bi * QK + j] = d * F32((b & 0xF) - 8)
                out[r, bi * QK + j + 16] = d * F32((b >> 4) - 8)


def _check(a: np.ndarray, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{name}: want a 2-D float32 array, got shape {a.shape}")
    if a.shape[1] % QK:
        raise ValueError(f"{name}: row length {a.shape[1]} is not a multiple of {QK}")
    return a


def quantize_q8_0(a: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols // 32 * 34], identical to gguf.quants (Q8_0)."""
    a = _check(a, "quantize_q8_0")
    out = np.empty((a.shape[0], a.shape[1] // QK * 34), dtype=np.uint8)
    _q8_0_cpu(a, out)
    return out


def quantize_q4_0(a: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols // 32 * 18], identical to gguf.quants (Q4_0)."""
    a = _check(a, "quantize_q4_0")
    out = np.empty((a.shape[0], a.shape[1] // QK * 18), dtype=np.uint8)
    _q4_0_cpu(a, out)
    return out


def _check_raw(raw: np.ndarray, size: int, name: str) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim == 1:
        raw = raw.reshape(1, -1)
    if raw.ndim != 2 or raw.shape[1] % size:
        raise ValueError(f"{name}: want uint8 [rows, n*{size}], got shape {raw.shape}")
    return raw


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """uint8 [rows, n*34] -> float32 [rows, n*32] (same values as gguf.quants.dequantize)."""
    raw = _check_raw(raw, 34, "dequantize_q8_0")
    out = np.empty((raw.shape[0], raw.shape[1] // 34 * QK), dtype=np.float32)
    _dq8_0_cpu(raw, out)
    return out


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """uint8 [rows, n*18] -> float32 [rows, n*32] (same values as gguf.quants.dequantize)."""
    raw = _check_raw(raw, 18, "dequantize_q4_0")
    out = np.empty((raw.shape[0], raw.shape[1] // 18 * QK), dtype=np.float32)
    _dq4_0_cpu(raw, out)
    return out


__all__ = ["quantize_q8_0", "quantize_q4_0", "dequantize_q8_0", "dequantize_q4_0"]
