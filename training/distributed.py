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
        from functools import partial

        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        policy = partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        return FullyShardedDataParallel(module, auto_wrap_policy=policy, use_orig_params=True,
                                        device_id=runtime.device if runtime.device.type == "cuda" else None)
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def mean_over_ranks(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """Average logged losses over ranks (logging only; gradients are averaged by DDP)."""
    if not runtime.distributed:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / runtime.world_size for k, v in zip(keys, tensor)}
