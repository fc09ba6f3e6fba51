"""CUDA kernels of vnmini.kernels: under the Numba simulator (always) and on a real GPU (when present).

The simulator must be switched on before ``numba.cuda`` is first imported, so the checks
run in a fresh subprocess (``python tests/test_kernels_cuda.py`` with
NUMBA_ENABLE_CUDASIM=1) and leave the CPU tests' process untouched.  The simulator runs
every thread as Python code, so shapes are tiny (but odd: V not a multiple of the block).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

TPB_ODD = 131  # > one block-stride of 128 threads, not a multiple of anything


def _sim_checks() -> None:
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    import torch.nn.functional as F

    from vnmini.kernels import cross_entropy_torch, kd_loss_torch, sparse_kd_loss_torch
    from vnmini.kernels import kd as kd_mod
    from vnmini.kernels import norm_rope as nr_mod
    from vnmini.kernels import sparse_kd as skd_mod
    from vnmini.kernels import xent as ce_mod
    from vnmini.kernels._cudautil import TPB

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    n, v = 3, TPB_ODD
    x = (rng.standard_normal((n, v)) * 3).astype(np.float32)
    y = rng.integers(0, v, n).astype(np.int64)
    y[1] = -100

    # cross-entropy
    fwd, bwd = ce_mod.cuda_kernels()
    lse = np.zeros(n, np.float32)
    rows = np.zeros(n, np.float32)
    fwd[n, TPB](x, y, -100, lse, rows)
    xd = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = cross_entropy_torch(xd, torch.tensor(y))
    (gref,) = torch.autograd.grad(ref, xd)
    np.testing.assert_allclose(rows.sum() / 2, ref.item(), rtol=1e-5, atol=1e-5)
    g = np.zeros_like(x)
    bwd[n, TPB](x, y, -100, lse, np.array([0.5], np.float32), g)
    np.testing.assert_allclose(g, gref.numpy(), atol=1e-6)

    # dense KD, all kinds, with a mask
    t = (rng.standard_normal((n, v)) * 3).astype(np.float32)
    mask = np.array([1, 0, 1], np.uint8)
    fwd, bwd = kd_mod.cuda_kernels()
    for kind, code in kd_mod.KINDS.items():
        outs = [np.zeros(n, np.float32) for _ in range(4)]
        fwd[n, TPB](x, t, mask, code, np.float32(0.5), np.float32(0.2), *outs)
        sd = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        ref = kd_loss_torch(sd, torch.tensor(t, dtype=torch.float64), kind, 2.0, 0.2, torch.tensor(mask.astype(bool)))
        (gref,) = torch.autograd.grad(ref, sd)
        np.testing.assert_allclose(outs[2].sum() / 2 * 4, ref.item(), rtol=1e-4, atol=1e-5)
        g = np.zeros_like(x)
        bwd[n, TPB](x, t, mask, code, np.float32(0.5), np.float32(0.2), *outs, np.array([2.0 / 2], np.float32), g)
        np.testing.assert_allclose(g, gref.numpy(), atol=2e-6)

    # sparse KD
    k = 7
    tl = F.log_softmax(torch.tensor(t, dtype=torch.float64) / 2.0, -1)
    vals, ids = tl.topk(k, -1)
    ids_np = ids.numpy().astype(np.int64)
    vals_np = vals.numpy().astype(np.float32)
    fwd, bwd = skd_mod.cuda_kernels()
    for kind, code in kd_mod.KINDS.items():
        lse64, kl, crest = (np.zeros(n) for _ in range(3))
        gk, lq_buf, tl_buf = (np.zeros((n, k)) for _ in range(3))
        fwd[n, TPB](x, ids_np, vals_np, mask, code, np.float32(0.5), np.float32(0.2), lse64, kl, crest, gk,
                    lq_buf, tl_buf)
        sd = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        ref = sparse_kd_loss_torch(sd, ids, torch.tensor(vals_np), kind, 2.0, 0.2, torch.tensor(mask.astype(bool)))
        (gref,) = torch.autograd.grad(ref, sd)
        np.testing.assert_allclose(kl.sum() / 2 * 4, ref.item(), rtol=1e-4, atol=1e-5)
        g = np.zeros_like(x)
        bwd[n, TPB](x, ids_np, mask, np.float32(0.5), lse64, crest, gk, np.array([1.0], np.float32), g)
        np.testing.assert_allclose(g, gref.numpy(), atol=2e-6)

    # RMSNorm
    d = TPB_ODD
    w = rng.standard_normal(d).astype(np.float32)
    xr = rng.standard_normal((n, d)).astype(np.float32)
    rms_fwd, rms_bwd, rope = nr_mod.cuda_kernels()
    out = np.zeros_like(xr)
    rstd = np.zeros(n, np.float32)
    rms_fwd[n, TPB](xr, w, np.float32(1e-5), out, rstd)
    xd = torch.tensor(xr, dtype=torch.float64, requires_grad=True)
    wd = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    yref = nr_mod.rms_norm_torch(xd, wd, 1e-5)
    gy = rng.standard_normal((n, d)).astype(np.float32)
    gx_ref, gw_ref = torch.autograd.grad(yref, [xd, wd], torch.tensor(gy, dtype=torch.float64))
    np.testing.assert_allclose(out, yref.detach().numpy(), atol=1e-5)
    gx = np.zeros_like(xr)
    dw = np.zeros_like(w)
    rms_bwd[n, TPB](xr, w, rstd, gy, gx, dw)
    np.testing.assert_allclose(gx, gx_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(dw, gw_ref.numpy(), atol=1e-5)

    # RoPE (forward and transposed rotation)
    b, h, tt, dh = 2, 3, 5, 8
    q = rng.standard_normal((b, h, tt, dh)).astype(np.float32)
    f = rng.standard_normal((tt, dh // 2))
    cos = np.concatenate([np.cos(f), np.cos(f)], -1).astype(np.float32)[None]
    sin = np.concatenate([np.sin(f), np.sin(f)], -1).astype(np.float32)[None]
    qd = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    oref = nr_mod.apply_rope_torch(qd, torch.tensor(cos[0], dtype=torch.float64),
                                   torch.tensor(sin[0], dtype=torch.float64))
    go = rng.standard_normal(q.shape).astype(np.float32)
    (gq_ref,) = torch.autograd.grad(oref, qd, torch.tensor(go, dtype=torch.float64))
    total = b * h * tt * (dh // 2)
    o = np.zeros_like(q)
    rope[(total + 63) // 64, 64](q, cos, sin, o, False)
    np.testing.assert_allclose(o, oref.detach().numpy(), atol=1e-5)
    gq = np.zeros_like(q)
    rope[(total + 63) // 64, 64](go, cos, sin, gq, True)
    np.testing.assert_allclose(gq, gq_ref.numpy(), atol=1e-5)
    print("cudasim ok")


def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "cudasim ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU lent to this run")
def test_cuda_bridges_on_gpu():
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("torch sees a GPU but numba.cuda cannot use it (install numba-cuda)")
    from vnmini import kernels as K

    dev = "cuda"
    n, v = 37, 1001
    x = torch.randn(n, v, device=dev) * 3
    y = torch.randint(0, v, (n,), device=dev)
    t = torch.randn(n, v, device=dev) * 3
    mask = torch.rand(n, device=dev) > 0.3
    mask[0] = True
    cases = [
        (lambda z: K.cross_entropy(z, y, backend="numba"), lambda z: K.cross_entropy_torch(z, y)),
        (lambda z: K.kd_loss(z, t, "reverse", 2.0, mask=mask, backend="numba"),
         lambda z: K.kd_loss_torch(z, t.double(), "reverse", 2.0, mask=mask)),
    ]
    vals, ids = torch.log_softmax(t.double(), -1).topk(17, -1)
    cases.append((lambda z: K.sparse_kd_loss(z, ids, vals.half(), "skew", 1.0, 0.1, mask, backend="numba"),
                  lambda z: K.sparse_kd_loss_torch(z, ids, vals.half(), "skew", 1.0, 0.1, mask)))
    for ours, ref in cases:
        z = x.clone().requires_grad_()
        zz = z * 1
        loss = ours(zz)
        (g,) = torch.autograd.grad(loss, zz)
        zd = x.double().requires_grad_()
        lr = ref(zd)
        (gr,) = torch.autograd.grad(lr, zd)
        assert abs(loss.item() - lr.item()) < 1e-4 * max(1.0, abs(lr.item()))
        assert (g.double() - gr).abs().max().item() < 1e-5
    w = torch.randn(v, device=dev, requires_grad=True)
    xr = torch.randn(n, v, device=dev, requires_grad=True)
    yk = K.rms_norm(xr, w, 1e-5, backend="numba")
    yt = K.rms_norm_torch(xr, w, 1e-5)
    assert (yk - yt).abs().max().item() < 1e-4


if __name__ == "__main__":
    _sim_checks()
