"""What the training loop knows, in a module of its own so that the loop and the wrapper's
hooks both import it (the loop drives a ``ModelWrapper``; the wrapper's hooks read the loop's
state): ``train/loop.py`` -> ``train/wrapper.py`` -> ``train/state.py``, one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
"""What ``ModelWrapper.make_scheduler`` returns: a per-step/epoch schedule or a plateau schedule."""

StopReason = Literal["early_stopped", "diverged", "pruned"]
"""Why the loop ended a trial before its last step: the result's status (a
:data:`~ablator.records.ResultStatus` other than "completed")."""


@dataclass(frozen=True)
class TrainPlan:
    """The shape of a run, computed before the first step (schedulers and ETA need it)."""

    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps (after gradient accumulation)
    total_steps: int
    epochs: int  # training epochs started, the last possibly partial
    eval_every: int  # optimizer steps between evaluations
    total_evals: int


@dataclass
class LoopState:
    """What the loop knows; hooks read it (and may set ``stop`` to end the trial early)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler | None
    config: Any
    plan: TrainPlan
    step: int = 0  # optimizer steps done
    train_epoch: int = 0  # the epoch being trained (0-based)
    batch_in_epoch: int = 0  # batches of that epoch consumed
    evals: int = 0
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    best_loss: float | None = None  # lowest logged train loss after warm-up (divergence)
    latest: dict[str, float] = field(default_factory=dict)  # newest value of every metric
    stop: StopReason | None = None  # set (by the loop or a hook) to end the trial early
    message: str = ""


__all__ = ["LoopState", "Scheduler", "StopReason", "TrainPlan"]
