"""Tiny models, wrappers and trial functions for the train tests (also imported by the child
processes of the kill/resume tests, so nothing here depends on pytest)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ablator import config as C
from ablator.config import Derived, ModelConfig, RunConfig
from ablator.records import TrialSpec
from ablator.train import ModelWrapper, TrialContext


class TinyModel(ModelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hidden: int = 16
    dropout: float = 0.1
    noise: float = 0.0  # input noise drawn in __getitem__ from the global torch RNG
    n_samples: int = 96
    n_classes: C.Annotated[int | None, Derived] = None
    with_test: bool = False


class TinyConfig(RunConfig[TinyModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, learnable 3-class problem (independent of the trial seed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    return x, (x @ w).argmax(dim=1)


class Noisy(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, std: float) -> None:
        self.x, self.y, self.std = x, y, std

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + self.std * torch.randn(8), self.y[i]


class TinyWrapper(ModelWrapper[TinyConfig]):
    config_type = TinyConfig

    def derive(self, config: TinyConfig) -> TinyConfig:
        return C.fill_derived(config, **{"model.n_classes": 3})

    def make_model(self, config: TinyConfig) -> nn.Module:
        m = config.model
        assert m.n_classes is not None  # derive ran first
        return nn.Sequential(nn.Linear(8, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, m.n_classes))

    def make_dataloaders(self, config: TinyConfig) -> tuple[Any, ...]:
        m = config.model
        x, y = make_data(m.n_samples)
        xv, yv = make_data(48, seed=1)
        train_set: Dataset[Any] = Noisy(x, y, m.noise) if m.noise else TensorDataset(x, y)
        train = DataLoader(train_set, batch_size=config.train.batch_size, shuffle=True)
        val = DataLoader(TensorDataset(xv, yv), batch_size=16)
        if m.with_test:
            xt, yt = make_data(32, seed=2)
            return train, val, DataLoader(TensorDataset(xt, yt), batch_size=16)
        return train, val


def tiny_trial(config: TinyConfig, ctx: TrialContext) -> dict[str, float]:
    """The function style: its own loop, its own checkpoint content, exact resume through ctx."""
    m = config.model
    x, y = make_data(m.n_samples)
    xv, yv = make_data(48, seed=1)
    model = nn.Sequential(nn.Linear(8, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, 3))
    model.to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=config.train.optimizer.lr, momentum=0.9)
    bs = config.train.batch_size
    per_epoch = len(y) // bs
    total = (config.train.epochs or 1) * per_epoch
    if ctx.smoke:
        total = min(total, 2)
    step = 0
    if (ckpt := ctx.load_checkpoint()) is not None:
        state, step = ckpt
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    acc = 0.0
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(ctx.seed * 1000 + epoch))
        idx = order[pos * bs : (pos + 1) * bs]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 4 == 0 or step == total:
            model.eval()
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            model.train()
            ctx.report(step, {"train_loss": loss.item(), "val_accuracy": acc})
        if step % 5 == 0 or step == total:
            ctx.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict()}, step)
        if ctx.should_stop:
            break
    return {"val_accuracy": acc}


def spec_for(cfg: Any, seed: int = 7, index: int = 0) -> TrialSpec:
    return TrialSpec(index=index, config=C.to_dict(cfg), config_hash=C.config_hash(cfg), seed=seed)


def tiny_config(**train: Any) -> TinyConfig:
    model = train.pop("model", {})
    return C.from_dict({"model": model, "train": train}, TinyConfig)
