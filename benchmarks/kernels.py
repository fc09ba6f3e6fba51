"""Benchmark vnmini.kernels against torch eager (and gguf.quants): time and peak extra memory.

Run::

    python benchmarks/kernels.py                 # full table (N=4096, V=16384), a few minutes on 2 cores
    python benchmarks/kernels.py --quick         # small shapes, smoke test

Prints a markdown table; ratios compare the two versions measured in the same run.

Time: median wall time of ``--repeats`` runs of forward + backward (``torch.autograd.grad``
w.r.t. the logits, which are a non-leaf tensor as in training), the two versions
interleaved so background load hits both alike.  Numba compile time is excluded by a
warm-up call (and ``cache=True`` makes it a one-time cost anyway).

Peak extra memory: torch's CPU allocator is invisible to ``tracemalloc``, so each
(case, version) runs in a fresh subprocess that builds its inputs, warms up on a tiny
input, then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``) and
reads ``VmHWM - VmRSS`` after one forward + backward: every byte the operation touched
beyond its inputs -- temporaries, saved tensors and the returned gradient.  Large torch
CPU tensors are mmap-ed and returned to the OS when freed, so the high-water mark is the
true peak.  Where clear_refs is not writable, ru_maxrss deltas are used (less exact).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from vnmini import kernels as K

# ---- cases ---------------------------------------------------------------------------------


def _loss_case(name, shape, k=64):
    n, v = shape
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, v, generator=g) * 2
    t = torch.randn(n, v, generator=g) * 2
    y = torch.randint(0, v, (n,), generator=g)
    vals, ids = K.topk_lse_torch(t, k)[:2]
    vals = vals.half()
    kind = name.split("_")[-1]
    fns = {
        "ce": (lambda z: K.cross_entropy(z, y, backend="numba"), lambda z: K.cross_entropy_torch(z, y)),
        "kd": (lambda z: K.kd_loss(z, t, kind, 2.0, backend="numba"),
               lambda z: K.kd_loss_torch(z, t, kind, 2.0)),
        "skd": (lambda z: K.sparse_kd_loss(z, ids, vals, kind, 1.0, backend="numba"),
                lambda z: K.sparse_kd_loss_torch(z, ids, vals, kind, 1.0)),
    }[name.split("_")[0]]
    leaf = base.requires_grad_()

    def make(fn):
        state = {}

        def setup():
            state["z"] = leaf * 1  # fresh non-leaf logits, outside the timed region

        def run():
            z = state["z"]
            torch.autograd.grad(fn(z), z)

        return setup, run

    return make(fns[0]), make(fns[1])


def _topk_case(shape, k=64):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return (lambda: None, lambda: K.topk_lse(x, k, backend="numba")), (lambda: None, lambda: K.topk_lse_torch(x, k))


def _rms_case(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).requires_grad_()
    w = torch.randn(shape[-1], generator=g).requires_grad_()
    gy = torch.randn(*shape, generator=g)

    def mk(be):
        return lambda: None, lambda: torch.autograd.grad(K.rms_norm(x, w, 1e-5, backend=be), [x, w], gy)

    return mk("numba"), mk("torch")


def _rope_case(shape):
    b, h, t, dh = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, t, h, dh, generator=g).requires_grad_()
    f = torch.randn(t, dh // 2, generator=g)
    cos, sin = torch.cat([f.cos(), f.cos()], -1), torch.cat([f.sin(), f.sin()], -1)
    go = torch.randn(b, h, t, dh, generator=g)

    def mk(be):
        return lambda: None, lambda: torch.autograd.grad(K.apply_rope(q.transpose(1, 2), cos, sin, backend=be), q, go)

    return mk("numba"), mk("torch")


def _quant_case(qname, shape):
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = {"q8_0": K.quantize_q8_0, "q4_0": K.quantize_q4_0}[qname]
    qt = {"q8_0": T.Q8_0, "q4_0": T.Q4_0}[qname]
    if not np.array_equal(ours(a), quantize(a, qt)):
        raise SystemExit(f"{qname}: NOT bit-exact with gguf.quants")
    return (lambda: None, lambda: ours(a)), (lambda: None, lambda: quantize(a, qt))


def cases(quick: bool):
    n, v = (512, 4096) if quick else (4096, 16384)
    out = [(f"{nm}", f"N={n} V={v}", (lambda nm=nm: _loss_case(nm, (n, v))), "≥2x, mem ≤1/4")
           for nm in ["ce", "kd_forward", "kd_reverse", "kd_skew", "skd_forward", "skd_reverse", "skd_skew"]]
    out.append(("topk_lse k=64", f"N={n} V={v}", lambda: _topk_case((n, v)), "(none)"))
    rs = (1024, 512) if quick else (8192, 512)
    out.append(("rms_norm", f"{rs[0]}x{rs[1]}", lambda: _rms_case(rs), "not slower"))
    rp = (2, 8, 128, 64) if quick else (8, 8, 512, 64)
    out.append(("apply_rope", "B,H,T,Dh=" + ",".join(map(str, rp)), lambda: _rope_case(rp), "not slower"))
    qs = (256, 5632) if quick else (2048, 5632)
    for q in ("q8_0", "q4_0"):
        out.append((f"quantize {q}", f"{qs[0]}x{qs[1]}", (lambda q=q: _quant_case(q, qs)), "≥20x vs gguf, bit-exact"))
    return out


# ---- measurement ---------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _measure_mem(idx: int, which: int, quick: bool) -> float:
    """In this (fresh) process: peak extra MiB of one call of case idx, version which (0 ours, 1 ref)."""
    _, _, build, _ = cases(quick)[idx]
    setup, run = build()[which]
    setup()
    run()  # warm-up (numba: load from cache / compile; torch: first-touch)
    setup()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        run()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _time(pair, repeats: int) -> tuple[float, float]:
    times = ([], [])
    for w in (0, 1):  # warm-up both
        pair[w][0]()
        pair[w][1]()
    for _ in range(repeats):
        for w in (0, 1):
            setup, run = pair[w]
            setup()
            t0 = time.perf_counter()
            run()
            times[w].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="substring filter on case names")
    ap.add_argument("--_mem", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._mem:
        print(json.dumps(_measure_mem(args._mem[0], args._mem[1], args.quick)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}\n")
    print("| kernel | shape | torch eager ms | numba ms | speedup | torch peak extra MiB | numba peak extra MiB "
          "| mem ratio | target |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for idx, (name, shape, build, target) in enumerate(cases(args.quick)):
        if args.only and args.only not in name:
            continue
        pair = build()
        t_ours, t_ref = _time(pair, args.repeats if "quantize" not in name else max(3, args.repeats // 2))
        del pair
        mem = []
        for which in (0, 1):
            cmd = [sys.executable, __file__, "--_mem", str(idx), str(which)] + (["--quick"] if args.quick else [])
            r = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
            mem.append(json.loads(r.stdout.strip().splitlines()[-1]))
        ratio = mem[0] / mem[1] if mem[1] > 0.5 else float("nan")
        ref_name = "gguf.quants" if "quantize" in name else "torch"
        print(f"| {name} | {shape} | {t_ref * 1e3:.1f}{'' if ref_name == 'torch' else ' (gguf)'} | {t_ours * 1e3:.1f} "
              f"| {t_ref / t_ours:.2f}x | {mem[1]:.0f} | {mem[0]:.0f} | {ratio:.3f} | {target} |", flush=True)


if __name__ == "__main__":
    main()
