"""Training: the :class:`ModelWrapper` style with ablator's loop, the trial-function style with
:class:`TrialContext`, and :func:`execute_trial`, which runs one attempt of either against a store.
"""

from __future__ import annotations

from ablator.train.context import TrialContext
from ablator.train.execute import collect_environment, execute_trial, resolve_device
from ablator.train.outcome import Fence, NoFence, Outcome
from ablator.train.progress import Progress
from ablator.train.state import LoopState, TrainPlan
from ablator.train.wrapper import ModelWrapper

__all__ = [
    "Fence",
    "LoopState",
    "ModelWrapper",
    "NoFence",
    "Outcome",
    "Progress",
    "TrainPlan",
    "TrialContext",
    "collect_environment",
    "execute_trial",
    "resolve_device",
]
