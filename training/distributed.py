"""Data-parallel training through ``torchrun``: NCCL on GPUs, gloo on CPUs.

A plain ``python -m training.train`` is a world of one and none of this does anything. Under
``torchrun --nproc_per_node N`` every process trains on its own share of each epoch's slices;
DistributedDataParallel averages the gradients, so the weights stay identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> World:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a world of one.

    Args:
        device_name: the configured device; ``cuda``/``auto``-with-GPU uses NCCL and one GPU per
            local rank, anything else gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name.lower() not in ("cpu",)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local_rank)


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank takes its own GPU (``cuda:LOCAL_RANK``)."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def shard(indices: np.ndarray, world: World) -> np.ndarray:
    """This rank's share; every rank gets the same count (wrapping around) so steps stay in lockstep."""
    if not world.distributed:
        return indices
    per_rank = -(-indices.size // world.size)
    padded = np.resize(indices, per_rank * world.size) if indices.size else indices
    return padded[world.rank::world.size]


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when any rank says True (e.g. "the time budget is spent")."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to all ranks.

    DDP broadcasts buffers at the start of each forward, but the last forward of an epoch leaves
    every rank with statistics of its own batch; a checkpoint must not depend on which rank wrote it.
    """
    if not world.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
