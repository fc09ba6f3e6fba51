"""vnmini.kernels -- Numba kernels (CPU ``@njit(parallel=True)`` and ``numba.cuda``) with
plain-torch references and autograd bridges that dispatch by the tensor's device.

Public API::

    cross_entropy(logits, targets, ignore_index=-100, backend="auto")        # scalar, d/dlogits
    kd_loss(student, teacher, kind="forward", temperature=1.0, skew_lambda=0.1, mask=None, backend="auto")
    sparse_kd_loss(student, top_ids, top_logprobs, kind="forward", temperature=1.0,
                   skew_lambda=0.1, mask=None, backend="auto")
    topk_lse(logits, k, temperature=1.0) -> (logprobs [N,k], ids [N,k], lse [N])
    rms_norm(x, weight, eps) ; apply_rope(x, cos, sin)
    quantize_q8_0 / dequantize_q8_0 / quantize_q4_0 / dequantize_q4_0     # numpy, gguf bit-exact
    kernel_info() -> list[dict]                                           # for `vnmini info --kernels`
    set_threads(n) -> prev ; restore_threads(prev)                        # bound torch's and Numba's CPU threads

``backend``: "auto" (fastest measured per device, see ``dispatch``), "numba", "torch".
The loss kernels write d(logits) into the logits' storage during backward when safe
(contract in ``dispatch``; pass ``inplace=False`` to keep the logits intact).
Every kernel has a ``*_torch`` reference used for fallback and tests.
"""

from .dispatch import kernel_info, restore_threads, set_threads
from .kd import kd_loss, kd_loss_torch
from .norm_rope import apply_rope, apply_rope_torch, rms_norm, rms_norm_torch
from .quant import dequantize_q4_0, dequantize_q8_0, quantize_q4_0, quantize_q8_0
from .sparse_kd import sparse_kd_loss, sparse_kd_loss_torch
from .topk import topk_lse, topk_lse_torch
from .xent import cross_entropy, cross_entropy_torch

__all__ = [
    "cross_entropy", "cross_entropy_torch", "kd_loss", "kd_loss_torch", "sparse_kd_loss",
    "sparse_kd_loss_torch", "topk_lse", "topk_lse_torch", "rms_norm", "rms_norm_torch", "apply_rope",
    "apply_rope_torch", "quantize_q8_0", "dequantize_q8_0", "quantize_q4_0", "dequantize_q4_0", "kernel_info",
    "restore_threads", "set_threads",
]
