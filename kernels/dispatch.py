"""Backend choice, zero-copy views and the in-place gradient contract for every kernel.

Each public kernel (``cross_entropy``, ``kd_loss``, ...) calls :func:`resolve` with the
tensor it works on and the user's ``backend`` ("auto", "numba" or "torch").  The answer
is the backend that will actually run plus a reason; :func:`kernel_info` reports the
same answers for ``vnmini info --kernels``.

"auto" is the fastest version measured per device (``benchmarks/kernels.py``, results in
``benchmarks/results_kernels.md``; 2-core AMD EPYC with AVX-512, torch 2.13 CPU):

* CPU: Numba for cross-entropy, dense KD, sparse KD, top-k, RMSNorm and RoPE -- each ran
  faster than torch eager in the benchmark (see the table for the ratios).
* CUDA: torch.  No GPU was available to measure the Numba CUDA kernels against torch's
  fused CUDA kernels, so "auto" does not bet on them; ``backend="numba"`` runs them.

Numba CUDA is imported lazily (:func:`cuda_ready`), so importing ``vnmini.kernels`` never
fails on a machine without a CUDA toolkit; a CUDA tensor with ``backend="numba"`` falls
back to torch (with a one-time warning) when ``numba.cuda`` cannot serve it.

In-place gradients (the memory contract).  The loss kernels write d(logits) into the
logits' own storage during backward instead of allocating a second (N, V) tensor when
:func:`may_overwrite` says it is safe: the tensor is not a leaf nor a view of one (user
data / parameters are never clobbered), and no other vnmini kernel in the same graph
still needs it (tracked by :func:`claim`).  After writing we bump the
tensor's autograd version counter, so any *other* autograd node that saved the logits
raises "modified by an inplace operation" instead of silently using gradients as logits.
What this cannot detect: user code reading the logits tensor *after* ``backward()``;
pass ``inplace=False`` to keep them.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings

import torch

BACKENDS = ("auto", "numba", "torch")


def set_threads(n: int | None) -> tuple[int, int] | None:
    """Bound torch's and the Numba kernels' CPU threads to ``n``; returns the previous counts for ``restore_threads``.

    Where a ``--threads`` bounds training (the Trainer, the quickstart):
    two jobs sharing a machine (``--threads 1`` each) would otherwise both run their parallel
    kernels on every core and slow each other down. ``None`` or 0 changes nothing.
    """
    if not n:
        return None
    import numba

    prev = (torch.get_num_threads(), numba.get_num_threads())
    torch.set_num_threads(int(n))
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return prev


def restore_threads(prev: tuple[int, int] | None) -> None:
    """Undo ``set_threads`` (given what it returned; ``None`` does nothing)."""
    if prev is None:
        return
    import numba

    torch.set_num_threads(prev[0])
    numba.set_num_threads(prev[1])

# "auto" per device, from the measured benchmark (see module docstring).
AUTO_CPU = {
    "cross_entropy": "numba",
    "kd_loss": "numba",
    "sparse_kd_loss": "numba",
    "topk_lse": "numba",
    "rms_norm": "numba",
    "apply_rope": "numba",
}
AUTO_CPU_REASON = "auto: numba measured faster than torch eager on this CPU class (benchmarks/results_kernels.md)"
AUTO_CUDA_REASON = "auto: torch (Numba CUDA kernels not benchmarked on a GPU yet; pass backend='numba')"
# Kernels with no CUDA version: torch serves CUDA tensors (see each module's docstring).
NO_CUDA = {"topk_lse": "torch.topk on CUDA is a tuned radix select; no Numba CUDA top-k is provided"}


@functools.cache
def cuda_ready() -> tuple[bool, str]:
    """Whether Numba can launch CUDA kernels here (imports numba.cuda lazily)."""
    try:
        from numba import cuda
    except Exception as exc:  # numba built without CUDA support
        return False, f"numba.cuda import failed: {exc}"
    try:
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        if cuda.is_available():
            return True, "numba.cuda available"
        return False, "numba.cuda.is_available() is False (no driver/toolkit)"
    except Exception as exc:
        return False, f"numba.cuda check failed: {exc}"


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def resolve(name: str, t: torch.Tensor, backend: str) -> tuple[str, str]:
    """Return (backend that runs, reason) for kernel ``name`` on tensor ``t``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dev = t.device.type
    if backend == "torch":
        return "torch", "requested backend='torch'"
    if dev == "cpu":
        if backend == "numba":
            return "numba", "requested backend='numba' (CPU @njit parallel)"
        choice = AUTO_CPU.get(name, "torch")
        return choice, AUTO_CPU_REASON if choice == "numba" else "auto: torch measured faster on CPU"
    if dev == "cuda":
        if backend == "auto":
            return "torch", AUTO_CUDA_REASON
        if name in NO_CUDA:
            return "torch", NO_CUDA[name]
        ok, why = cuda_ready()
        if not ok:
            _warn_once(name + ":cuda", f"vnmini.kernels.{name}: Numba CUDA unavailable ({why}); using torch")
            return "torch", f"fallback: {why}"
        return "numba", "requested backend='numba' (numba.cuda, one block per row)"
    return "torch", f"fallback: no Numba kernel for device {dev!r}"


def kernel_info() -> list[dict]:
    """One dict per (kernel, device): name, device, active backend under "auto", reason."""
    rows = []
    cuda_ok, cuda_why = cuda_ready()
    for name in AUTO_CPU:
        choice = AUTO_CPU[name]
        rows.append({"name": name, "device": "cpu", "backend": choice,
                     "reason": AUTO_CPU_REASON if choice == "numba" else "auto: torch measured faster on CPU"})
        numba_cuda = "no" if name in NO_CUDA else ("yes" if cuda_ok else "no")
        rows.append({"name": name, "device": "cuda", "backend": "torch",
                     "reason": NO_CUDA.get(name, AUTO_CUDA_REASON) + f"; numba CUDA usable: {numba_cuda} ({cuda_why})"})
    rows.append({"name": "quantize_q8_0/q4_0", "device": "cpu", "backend": "numba",
                 "reason": "always numba (bit-exact with gguf.quants, which is the test oracle)"})
    return rows


# ---- zero-copy views -------------------------------------------------------------------

def np_view(t: torch.Tensor):
    """A numpy view sharing ``t``'s CPU memory (no copy; strides kept)."""
    return t.detach().numpy()


def cuda_view(t: torch.Tensor):
    """A numba device-array view of a CUDA tensor via ``__cuda_array_interface__`` (no copy)."""
    from numba import cuda

    return cuda.as_cuda_array(t.detach())


# ---- in-place gradient claims ------------------------------------------------------------

_claims: dict[int, int] = {}
_lock = threading.Lock()


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Claim:
    """One kernel's claim on a logits storage; released in backward, or when the graph dies.

    The ``__del__`` release matters: a forward whose graph is dropped without backward
    (an exception, a loss that is only logged) must not leave a stale claim that would
    silently disable the in-place path for a later tensor at the same address.
    """

    def __init__(self, t: torch.Tensor):
        self.key = _key(t)
        self.live = True
        with _lock:
            _claims[self.key] = _claims.get(self.key, 0) + 1

    def release(self) -> int:
        """Drop this claim (idempotent); return how many other claims remain on the storage."""
        with _lock:
            n = _claims.get(self.key, 0)
            if self.live:
                self.live = False
                n -= 1
                if n <= 0:
                    _claims.pop(self.key, None)
                else:
                    _claims[self.key] = n
            return max(n, 0)

    def __del__(self):
        self.release()


def claim(t: torch.Tensor) -> Claim:
    """Record that a kernel's backward will read ``t`` (called in forward when a gradient is needed)."""
    return Claim(t)


def may_overwrite(t: torch.Tensor, inplace: bool | None) -> bool:
    """Whether the forward input ``t`` (the original tensor) may be reused as its gradient."""
    if inplace is False:
        return False
    if inplace is None:
        base = t._base if t._base is not None else t
        if t.is_leaf or base.is_leaf:
            return False
    return True


def mark_overwritten(t: torch.Tensor) -> None:
    """Bump the autograd version so other saved users of ``t`` fail loudly."""
    torch.autograd.graph.increment_version(t)


def as_f32_contiguous(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(float32 contiguous tensor, owned) -- owned=True when a private copy had to be made."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t, False
    return t.detach().to(torch.float32).contiguous(), True
