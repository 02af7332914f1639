"""Distributed training helpers for `torchrun`: process-group set-up, seeding and the sampler.

`torchrun --nproc_per_node=N [--nnodes=M --node_rank=K --rdzv_endpoint=HOST:PORT] -m bifit train ...`
sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; `init_distributed`
reads them (env:// initialisation) and picks NCCL on GPUs and gloo on CPUs. Without them the run
is a single process.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..devices import resolve_device

__all__ = [
    "DistInfo",
    "ResumableDistributedSampler",
    "all_reduce_mean",
    "cleanup_distributed",
    "init_distributed",
    "seed_everything",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size` processes and its device."""

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


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment, or run as one process.

    Args:
        device: a name `bifit.devices.resolve_device` accepts; under torchrun `auto` and `cuda`
            mean the GPU `LOCAL_RANK`.
        timeout_s: how long collective operations wait for the other ranks.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank=local_rank)
    if world_size > 1:
        if resolved.type not in ("cuda", "cpu"):
            raise ValueError(f"several processes train on CUDA (NCCL) or the CPU (gloo), not on {resolved.type}")
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                init_method="env://",
                world_size=world_size,
                rank=rank,
                timeout=timedelta(seconds=timeout_s),
            )
    return DistInfo(rank, world_size, local_rank, resolved)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of every value (the values themselves on a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


class ResumableDistributedSampler(Sampler[int]):
    """Shuffled indices split over ranks, reproducible by epoch and resumable mid-epoch.

    Epoch e uses the permutation of `torch.Generator().manual_seed(seed + e)` (identical on every
    rank, whatever the world size), padded by wrapping to a multiple of `num_replicas`; rank r takes
    positions r, r + W, r + 2W, ... So a one-process run with global batch B*W sees, step by step,
    exactly the clips that W ranks with batch B see together.

    `skip` drops the first indices of this rank's share (the clips consumed before a checkpoint).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("the training dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.size = size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        self.per_rank = math.ceil(size / num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and how many of this rank's first indices to drop."""
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, before `skip`."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.num_replicas
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)
