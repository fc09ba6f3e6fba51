"""Process-group plumbing for :mod:`vnmini.training.trainer`.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup` joins the process group
(nccl on CUDA, gloo on CPU) and :func:`wrap` puts the model in
DistributedDataParallel, or with ``fsdp=True`` shards it with FSDP2
(``fully_shard`` per decoder layer, then the root). The state-dict helpers
gather a full (unsharded) model / optimizer state so a checkpoint stays one HF
folder however many processes wrote it. Single-process runs pass through
untouched: every helper is a no-op when the world has one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from vnmini.errors import VnminiError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# Dense bf16 peak FLOP/s for MFU on the GPUs this project targets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA ``device`` from :data:`PEAK_FLOPS` (None on CPU or an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VnminiError(f"--device {device}: CUDA is not available here; use --device cpu.")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device, join the process group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    return DistEnv(rank, world, local, dev, created)


def teardown(env: DistEnv) -> None:
    if env.created_group and tdist.is_initialized():
        tdist.destroy_process_group()
        env.created_group = False


def wrap(module: nn.Module, model: nn.Module, env: DistEnv, fsdp: bool, amp_dtype: torch.dtype | None) -> nn.Module:
    """DDP (or FSDP2 with ``fsdp``) around ``module``; ``model`` is the decoder whose layers get sharded."""
    if fsdp:
        if not tdist.is_initialized():
            raise VnminiError("--fsdp needs a process group: run under `torchrun --nproc-per-node N`.")
        if module is not model:
            raise VnminiError("--fsdp shards the plain decoder only (pretrain/distill); drop --fsdp for sft.")
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype
              else MixedPrecisionPolicy())
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> None:
    if env.distributed:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)


def any_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop together)."""
    if not env.distributed:
        return bool(flag)
    t = torch.tensor([int(flag)], device=env.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_floats(values: list[float], env: DistEnv, src: int = 0) -> list[float]:
    """Rank ``src``'s ``values`` on every rank (float64, so integers up to 2**53 survive)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    tdist.broadcast(t, src=src)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        tdist.barrier()


def grad_norm_clip(model: nn.Module, max_norm: float) -> float:
    """Clip to ``max_norm`` (0 = no clipping) and return the pre-clip global norm (DTensor-aware)."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _full_options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model(model: nn.Module, env: DistEnv, fsdp: bool) -> nn.Module | None:
    """The model with every weight whole, on rank 0 (None elsewhere). Collective under FSDP."""
    if not fsdp:
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from vnmini.models import LlamaForCausalLM

    sd = get_model_state_dict(model, options=_full_options())
    if env.rank != 0:
        return None
    cpu = LlamaForCausalLM(model.config)
    cpu.load_state_dict(sd)
    return cpu


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, env: DistEnv, fsdp: bool) -> dict:
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_full_options())


def load_model(model: nn.Module, sd: dict[str, torch.Tensor], env: DistEnv, fsdp: bool) -> None:
    if not fsdp:
        model.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))


def load_optimizer(model: nn.Module, opt: torch.optim.Optimizer, sd: dict, env: DistEnv, fsdp: bool) -> None:
    if not fsdp:
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, sd, options=StateDictOptions(full_state_dict=True))
