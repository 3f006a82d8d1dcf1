"""Trials for the preemption tests with real processes, whose metric says how far they got: a
run to the end scores exactly 1.0, a partial one less (what a trial recorded ``completed``
after a stop would wrongly report).

:func:`trial` is a function trial that returns as soon as it is asked to stop (the documented
way), checkpointing only every ``checkpoint_every`` steps; :class:`StopWrapper` is a
ModelWrapper that sleeps ``step_sleep`` per batch and whose evaluation returns
``score = step / max_steps``. Both print ``stoptoy step N`` after each step (the tests wait for
it). torch at import: only these tests use the module.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablator.config import BaseConfig, ModelConfig, RunConfig
from ablator.train import ModelWrapper


class StopConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 40
    checkpoint_every: int = 1000  # by default, never before the end
    sleep: float = 0.1
    x: float = 0.0  # a design dimension (unused)


def trial(config: StopConfig, ctx: Any) -> dict[str, float]:
    start = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        _, start = loaded
    score = start / config.steps
    for step in range(start + 1, config.steps + 1):
        time.sleep(config.sleep)
        score = step / config.steps
        ctx.report(step, {"score": score})
        print(f"stoptoy step {step}", flush=True)
        if step % config.checkpoint_every == 0:
            ctx.save_checkpoint({"step": step}, step)
        if ctx.should_stop:
            break  # as documented: return when asked to stop
    return {"score": score}


class StopModel(ModelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    step_sleep: float = 0.1
    x: float = 0.0  # a design dimension (unused)


class StopRunConfig(RunConfig[StopModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class StopWrapper(ModelWrapper[StopRunConfig]):
    """A tiny linear model; slow steps; its evaluation's ``score`` is the fraction of steps done."""

    config_type = StopRunConfig

    def make_model(self, config: StopRunConfig) -> nn.Module:
        self.sleep = config.model.step_sleep
        self.total = config.train.max_steps or 1
        return nn.Linear(2, 2)

    def make_dataloaders(self, config: StopRunConfig) -> tuple[Any, ...]:
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        return DataLoader(TensorDataset(x, y), batch_size=2), DataLoader(TensorDataset(x, y), batch_size=32)

    def on_train_start(self, state: Any) -> None:
        self.state = state

    def loss(self, model: nn.Module, batch: Any) -> Any:
        if model.training:
            time.sleep(self.sleep)
        return super().loss(model, batch)

    def on_step_end(self, state: Any) -> None:
        print(f"stoptoy step {state.step}", flush=True)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        return {"score": self.state.step / self.total}
