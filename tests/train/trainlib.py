"""Tiny models, wrappers and trial functions for the train tests (also imported by the child
processes of the kill/resume tests, so nothing here depends on pytest)."""

from __future__ import annotations

import os
import time
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
    step_sleep: float = 0.0  # seconds per training batch (a slow trial, for signal tests)
    # After ``hold_after`` training batches (of this process), wait until ``hold_file`` exists:
    # a holder that stays alive and renewing, not done, for as long as a test needs.
    hold_file: str = ""
    hold_after: int = 0


class TinyConfig(RunConfig[TinyModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, learnable 3-class problem (independent of the trial seed)."""
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(1234))  # one problem for every split
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
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
        return nn.Sequential(
            nn.Linear(8, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, m.n_classes)
        )

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


class SlowWrapper(TinyWrapper):
    """Sleeps ``model.step_sleep`` per training batch; holds at ``model.hold_file``."""

    def loss(self, model: nn.Module, batch: Any) -> Any:
        if model.training:
            self.batches += 1
            if self.hold_file and self.batches > self.hold_after:
                while not os.path.exists(self.hold_file):
                    time.sleep(0.05)
            if self.step_sleep:
                time.sleep(self.step_sleep)
        return super().loss(model, batch)

    def make_model(self, config: TinyConfig) -> nn.Module:
        self.step_sleep = config.model.step_sleep
        self.hold_file, self.hold_after = config.model.hold_file, config.model.hold_after
        self.batches = 0
        return super().make_model(config)


class Crash(RuntimeError):
    """Raised by :class:`CrashingWrapper` to end an attempt the way an exception would."""


class CrashingWrapper(TinyWrapper):
    """Raises after optimizer step ``crash_at`` (an attempt that fails mid-run)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at

    def on_step_end(self, state: Any) -> None:
        if state.step == self.crash_at:
            raise Crash(f"crash at step {state.step}")


class CrashAtTwoWrapper(CrashingWrapper):
    """A user bug: always raises at step 2 (constructed by the entry point with no arguments)."""

    def __init__(self) -> None:
        super().__init__(crash_at=2)


class NanWrapper(TinyWrapper):
    """The loss turns NaN from optimizer step ``at`` on."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def loss(self, model: nn.Module, batch: Any) -> Any:
        loss, out = super().loss(model, batch)
        if model.training:
            self.calls += 1
            if self.calls > self.at:
                loss = loss * float("nan")
        return loss, out


class BlowUpWrapper(TinyWrapper):
    """The loss is multiplied by 1000 after ``at`` training batches (a blow-up, still finite)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def loss(self, model: nn.Module, batch: Any) -> Any:
        loss, out = super().loss(model, batch)
        if model.training:
            self.calls += 1
            if self.calls > self.at:
                loss = loss * 1000.0
        return loss, out


class RegressionWrapper(ModelWrapper[TinyConfig]):
    """Float targets: the default loss is MSE and there is no accuracy."""

    config_type = TinyConfig

    def make_model(self, config: TinyConfig) -> nn.Module:
        return nn.Linear(8, 1)

    def make_dataloaders(self, config: TinyConfig) -> tuple[Any, ...]:
        x, _ = make_data(64)
        y = x.sum(dim=1)
        return DataLoader(TensorDataset(x, y), batch_size=config.train.batch_size, shuffle=True), None


def lightning_trial(config: TinyConfig, ctx: TrialContext) -> dict[str, float]:
    """A LightningModule trained by a Lightning Trainer inside a trial function: Lightning's own
    checkpoint (weights, optimizer, loop state) travels through the store via ``ctx``."""
    import os
    import tempfile

    import lightning as L
    from lightning.pytorch.plugins.environments import LightningEnvironment

    m = config.model
    lr = config.train.optimizer.lr

    class LitTiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, m.hidden), nn.ReLU(), nn.Linear(m.hidden, 3))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_accuracy", (self.net(x).argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr)

    class ToAblator(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            step = trainer.global_step
            ctx.report(step, {k: float(v) for k, v in trainer.callback_metrics.items()})
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "last.ckpt")
                trainer.save_checkpoint(path, weights_only=False)
                state = torch.load(path, weights_only=True)
            ctx.save_checkpoint(state, step)
            if ctx.should_stop:
                trainer.should_stop = True

    x, y = make_data(m.n_samples)
    xv, yv = make_data(48, seed=1)
    g = torch.Generator().manual_seed(ctx.seed)
    train = DataLoader(TensorDataset(x, y), batch_size=config.train.batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    module = LitTiny()
    trainer = L.Trainer(
        max_epochs=config.train.epochs,
        limit_train_batches=2 if ctx.smoke else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ToAblator()],
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=1,
        plugins=[LightningEnvironment()],  # one process, even on a host with Slurm (docs/engines.md)
    )
    with tempfile.TemporaryDirectory() as d:
        ckpt_path = None
        if (loaded := ctx.load_checkpoint()) is not None:
            ckpt_path = os.path.join(d, "resume.ckpt")
            torch.save(loaded[0], ckpt_path)
        trainer.fit(module, train, val, ckpt_path=ckpt_path, weights_only=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


class WorkersWrapper(TinyWrapper):
    """The train loader uses two worker processes (noise is then drawn in the workers)."""

    def make_dataloaders(self, config: TinyConfig) -> tuple[Any, ...]:
        train, val = super().make_dataloaders(config)[:2]
        return DataLoader(train.dataset, batch_size=config.train.batch_size, shuffle=True, num_workers=2), val


class CrashingWorkersWrapper(WorkersWrapper):
    def __init__(self, crash_at: int) -> None:
        self.crash_at = crash_at

    def on_step_end(self, state: Any) -> None:
        if state.step == self.crash_at:
            raise Crash(f"crash at step {state.step}")


class EndCrashWrapper(TinyWrapper):
    """Crashes after its final checkpoint (before a result could be written)."""

    def on_train_end(self, state: Any) -> None:
        raise Crash("after the final checkpoint")
