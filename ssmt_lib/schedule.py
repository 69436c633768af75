"""Cosine learning-rate annealing that ends inside a step budget or a wall-clock budget.

The paper (SSMT-Net, Sec. 3.1) anneals Adam's rate with a cosine from ``lr = 1e-3`` to
``min_lr = 1e-6`` over training. With a fixed number of steps that is

    lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * s / S)) / 2.

A CPU run of the workbook is usually limited by time, not by epochs (``train.max_minutes``): a
cosine over a 400-epoch plan stopped after 10 minutes is still at ~0.98 lr, so the run never
reaches the small steps where the weights settle. Here the *progress* of the schedule is the
larger of the step fraction and the time fraction,

    p = max(s / S, t / T),     lr = min_lr + (lr - min_lr) * (1 + cos(pi * min(p, 1))) / 2,

so whichever budget runs out first ends the schedule at ``min_lr``, and ``done`` says that the
phase is over. The clock is injectable (tests use a simulated one), and the elapsed time is part
of the state, so a resumed run continues the same schedule.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch


class BudgetCosine:
    """Per-step cosine annealing over ``total_steps`` and/or ``budget_seconds``.

    Args:
        optimizer: its param groups' ``lr`` are set on every :meth:`step`.
        lr: starting rate (``train.lr``).
        min_lr: final rate (``train.min_lr``).
        total_steps: optimizer steps of the plan (epochs x steps per epoch, or ``train.steps``).
        budget_seconds: wall-clock budget of this phase; None = steps only.
        clock: seconds since an arbitrary origin (``time.monotonic``; tests pass a fake).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, min_lr: float, total_steps: int,
                 budget_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if budget_seconds is not None and budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be > 0 or None, got {budget_seconds}")
        self.optimizer, self.lr, self.min_lr = optimizer, lr, min_lr
        self.total_steps, self.budget_seconds, self.clock = total_steps, budget_seconds, clock
        self.steps = 0  # optimizer steps taken
        self.elapsed_before = 0.0  # seconds spent before the last (re)start, from the checkpoint
        self.started = clock()
        self._set(lr)

    @property
    def elapsed(self) -> float:
        """Seconds this phase has trained, across resumes."""
        return self.elapsed_before + (self.clock() - self.started)

    @property
    def progress(self) -> float:
        """Share of the schedule used: ``max(steps / total_steps, elapsed / budget)``, at most 1."""
        p = self.steps / self.total_steps
        if self.budget_seconds is not None:
            p = max(p, self.elapsed / self.budget_seconds)
        return min(p, 1.0)

    @property
    def done(self) -> bool:
        """True once either budget is spent: the phase should stop."""
        return self.progress >= 1.0

    def current_lr(self) -> float:
        """The rate for the current progress."""
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * self.progress))

    def _set(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self) -> None:
        """Count one optimizer step and set the rate for the next one."""
        self.steps += 1
        self._set(self.current_lr())

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "elapsed": self.elapsed, "total_steps": self.total_steps,
                "budget_seconds": self.budget_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule: its steps and elapsed time (the plan comes from the config)."""
        self.steps = int(state["steps"])
        self.elapsed_before = float(state["elapsed"])
        self.started = self.clock()
        self._set(self.current_lr())
