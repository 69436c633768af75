"""Where a run executes: device, seeds, and the helpers of a ``torchrun`` (DDP) process group.

Single-process runs see rank 0 of a world of 1, so the training code calls these helpers the same
way with and without DistributedDataParallel (DESIGN.md section 6: each rank draws its own
augmentation, rank 0 scores validation and test and writes the run folder). :class:`RankZeroClock`
lets every rank follow rank 0's clock under a time budget (``train.max_minutes``).
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA).

    Args:
        seed: the seed of all three generators.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA (this process's local rank under torchrun) when available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# Added to a loader's seed per DDP rank (worker seeds) and to the global seed (in-process augmentation),
# so that ranks draw different augmentations; a prime, far from the epoch/phase offsets of fit's seeds.
RANK_SEED_STRIDE = 1_000_003


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always True without a process group): it writes the run files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class RankZeroClock:
    """A clock every DDP rank reads alike: rank 0's ``time.monotonic()``, broadcast by :meth:`tick`.

    ``tick`` is a collective that every rank calls at the same point of each training step;
    reading the clock (``clock()``) is local and returns the last broadcast value. Under DDP with
    a time budget the phase's :class:`~ssmt_lib.schedule.BudgetCosine` reads it, so every rank
    sets the same rate and ends the phase at the same step (with each rank's own clock the rates
    differ slightly, so the replicas drift apart, and a rank that stops one step early leaves the
    others waiting in an all-reduce for ever).

    Args:
        device: where the broadcast tensor lives (the CUDA device under NCCL).
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.now = device, 0.0
        self.tick()

    def tick(self) -> None:
        """Broadcast rank 0's time (all ranks call this together)."""
        t = torch.tensor([time.monotonic()], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        self.now = float(t.item())

    def __call__(self) -> float:
        return self.now

