"""What one training step consumes: the :class:`Batch`, where batches come from
(:class:`BatchSource`) and the loss hooks the :class:`~vnmini.training.trainer.Trainer` calls.

A :class:`Batch` carries ``input_ids``/``targets`` ``[B, T]`` (targets -100 =
no loss) and ``positions`` ``[B]``: the offset, in the split's token stream, of
each row's first input token, so a teacher cache aligned with the token shards
is looked up at ``positions[b] + t`` (the target of row b, column t is token
``positions[b] + t + 1``).

A loss hook is ``(module, batch) -> (loss, {"name": float, ...})``; :func:`ce_loss`
is the default, :mod:`vnmini.training.distill` and :mod:`vnmini.training.sft` bring
their own::

    from vnmini.training.batch import ce_loss, cross_entropy_fn
    loss_fn = ce_loss(kernels="auto")          # next-token CE (vnmini.kernels or torch)
    ce = cross_entropy_fn("torch")             # the bare (logits [N, V], targets [N]) -> mean CE
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] long
    targets: torch.Tensor  # [B, T] long, -100 = no loss
    positions: np.ndarray  # [B] int64 offset of each row in the split's token stream (-1: not a stream window)
    step: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. sft segment ids

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(self.input_ids.to(device, non_blocking=nb), self.targets.to(device, non_blocking=nb),
                     self.positions, self.step, {k: v.to(device, non_blocking=nb) for k, v in self.extra.items()})


class BatchSource(Protocol):
    train_rows: int
    val_rows: int
    seq_len: int

    def rows(self, split: str, idx: np.ndarray, step: int) -> Batch: ...


LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
ForwardFn = Callable[[nn.Module, Batch], torch.Tensor]


def default_forward(module: nn.Module, batch: Batch) -> torch.Tensor:
    return module(batch.input_ids)


def cross_entropy_fn(kernels: str = "auto") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean CE over targets != -100: ``vnmini.kernels.cross_entropy`` (numba|auto) or torch's."""
    if kernels != "torch":
        from vnmini.kernels import cross_entropy

        return functools.partial(cross_entropy, ignore_index=-100, backend=kernels)
    return functools.partial(F.cross_entropy, ignore_index=-100)


def ce_loss(kernels: str = "auto", forward: ForwardFn = default_forward) -> LossFn:
    """The default loss: next-token cross-entropy on the batch's targets."""
    ce = cross_entropy_fn(kernels)

    def loss_fn(module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = forward(module, batch)
        return ce(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1)), {}

    return loss_fn
