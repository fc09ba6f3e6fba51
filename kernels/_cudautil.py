"""Shared Numba CUDA pieces: block size and shared-memory block reductions.

Everything is built lazily inside :func:`helpers` so that importing ``vnmini.kernels``
never touches ``numba.cuda`` (which needs a driver/toolkit, or NUMBA_ENABLE_CUDASIM=1).
The CUDA kernels in the other modules run one thread block of ``TPB`` threads per row
and combine per-thread partials with these tree reductions in shared memory.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

TPB = 128  # threads per block (power of two: the tree reductions halve it)
# numba.cuda, bound on first use.  Kernels must reach it as a module global: the CUDA
# simulator swaps in its fake module by patching globals named after it, not closures.
cuda = None


@functools.cache
def helpers() -> SimpleNamespace:
    global cuda
    from numba import cuda as _cuda
    from numba import float32, float64

    cuda = _cuda

    @cuda.jit(device=True)
    def block_max(sh, v):
        tid = cuda.threadIdx.x
        sh[tid] = v
        cuda.syncthreads()
        step = TPB // 2
        while step > 0:
            if tid < step and sh[tid + step] > sh[tid]:
                sh[tid] = sh[tid + step]
            cuda.syncthreads()
            step //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    @cuda.jit(device=True)
    def block_sum(sh, v):
        tid = cuda.threadIdx.x
        sh[tid] = v
        cuda.syncthreads()
        step = TPB // 2
        while step > 0:
            if tid < step:
                sh[tid] += sh[tid + step]
            cuda.syncthreads()
            step //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    return SimpleNamespace(cuda=cuda, float32=float32, float64=float64, block_max=block_max, block_sum=block_sum)

