"""Data parallelism through torchrun: which process this is, and the collectives training needs.

Started with plain `python`, or by torchrun with one process, everything here
is a no-op, so one code path serves one process and several.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE_PROCESS = Dist()


def init_from_env(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment: NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ONE_PROCESS
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), world_size, local_rank)


def wrap(model: nn.Module, d: Dist, sync_bn: bool) -> nn.Module:
    """The module to train: DistributedDataParallel over `model` when there are several ranks."""
    if not d.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def sum_over_ranks(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(tensor)
    return tensor


def gather(obj: object, d: Dist) -> list:
    """`obj` from every rank, in rank order."""
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def close(d: Dist) -> None:
    if d.enabled:
        dist.destroy_process_group()
