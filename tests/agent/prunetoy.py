"""Trials with known learning curves for the pruning tests with agent processes: at step ``s`` of
``steps`` the metric is ``x * s / steps``, so a higher ``x`` is ahead at every rung. Both styles:
:func:`trial` reports through ``ctx`` (metric ``score``), :class:`CurveWrapper` is a ModelWrapper
whose evaluation returns ``score`` (metric ``val_score``) while it trains a tiny linear model.
(torch at import: the agent imports this module to validate the entry; only these tests use it.)

``trace_dir``: every attempt appends ``trial epoch start_step`` to ``<trace_dir>/<trial>.txt``.
``sleep``: seconds per step (a slow trial, for the takeover test).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablator.config import BaseConfig, ModelConfig, RunConfig
from ablator.train import ModelWrapper


class CurveConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.5
    steps: int = 9
    sleep: float = 0.0
    trace_dir: str = ""


def trial(config: CurveConfig, ctx: Any) -> dict[str, float]:
    start = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        _, start = loaded
    if config.trace_dir:
        with open(os.path.join(config.trace_dir, f"{ctx.trial}.txt"), "a") as f:
            f.write(f"{ctx.trial} {ctx.epoch} {start}\n")
    score = config.x * start / config.steps
    for step in range(start + 1, config.steps + 1):
        if config.sleep:
            time.sleep(config.sleep)
        score = config.x * step / config.steps
        ctx.report(step, {"score": score})
        ctx.save_checkpoint({"step": step}, step)
        if ctx.should_stop:
            break
    return {"score": score}


class CurveModel(ModelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.5


class CurveRunConfig(RunConfig[CurveModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class CurveWrapper(ModelWrapper[CurveRunConfig]):
    """Trains a tiny linear model; its evaluation returns the known curve as ``score``."""

    config_type = CurveRunConfig

    def make_model(self, config: CurveRunConfig) -> nn.Module:
        self.x = config.model.x
        self.total = config.train.max_steps or 1
        return nn.Linear(2, 2)

    def make_dataloaders(self, config: CurveRunConfig) -> tuple[Any, ...]:
        x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        return DataLoader(TensorDataset(x, y), batch_size=2), DataLoader(TensorDataset(x, y), batch_size=8)

    def on_train_start(self, state: Any) -> None:
        self.state = state

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        return {"score": self.x * self.state.step / self.total}
