"""One code path for a single CPU process and ``torchrun`` (DDP, or FSDP for 7B)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Runtime:
    """Read torchrun's environment; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, local, device)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, runtime: Runtime, strategy: str) -> nn.Module:
    """DDP (unused parameters allowed: each step trains one task's modules) or FSDP."""
    if not runtime.distributed:
        return module
    if strategy == "fsdp":
        # FSDP2: each Llama decoder layer is its own shard group, the rest one root group.
        # It runs on CPU (gloo) as on GPUs, so the CI exercises the same path as a 7B run.
        from torch.distributed.fsdp import fully_shard
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        for sub in module.modules():
            if isinstance(sub, LlamaDecoderLayer):
                fully_shard(sub)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state on the CPU, whatever the strategy (FSDP shards are gathered)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(module, options=options)
    optim_state = get_optimizer_state_dict(module, optimizer, options=options) if optimizer is not None else None
    return model_state, optim_state


def load_full_state(module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """The inverse of :func:`full_state` (each rank keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(module, model_state, options=StateDictOptions(full_state_dict=True))
    # Parameters no step has touched yet (a task not sampled so far) have no AdamW state: not an error.
    set_optimizer_state_dict(module, optimizer, optim_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def mean_over_ranks(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """Average logged losses over ranks (logging only; gradients are averaged by DDP)."""
    if not runtime.distributed:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / runtime.world_size for k, v in zip(keys, tensor, strict=False)}
