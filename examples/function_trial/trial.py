"""A PyTorch Lightning model run by ablator as a trial function, ``trial(config, ctx)``.

Lightning keeps its own training loop; ablator only sees what the trial tells ``ctx``:

* ``ctx.report(step, metrics)`` after every validation: metric rows in the store, best tracking,
  early stopping (``config.train.early_stopping_patience``);
* ``ctx.save_checkpoint(state, step)``: Lightning's own checkpoint (weights, optimizer, loop
  state) goes into the store, and ``ctx.load_checkpoint()`` hands it back to a resumed attempt
  (after a crash, a takeover or a drain), which ``Trainer.fit(ckpt_path=...)`` continues;
* ``ctx.should_stop``: early stopping fired or the agent is draining; Lightning stops cleanly;
* ``ctx.device`` and ``ctx.seed``: where to train and the trial's seed (python, numpy and torch
  are already seeded with it; the batch order below is derived from it per epoch);
* ``ctx.smoke``: ``ablator run --smoke`` wants a wiring check of a few batches.

Run one trial here:  python -m ablator run examples/function_trial/experiment.yaml
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ablator import ModelConfig, RunConfig, TrialContext
from ablator.config import optimizer_class


class LitDigitsModel(ModelConfig):
    hidden: int = 64
    dropout: float = 0.1


class LitDigitsConfig(RunConfig[LitDigitsModel]):
    pass


class LitDigits(L.LightningModule):
    """An MLP on scikit-learn's 8x8 handwritten digits: a plain LightningModule, unaware of ablator."""

    def __init__(self, config: LitDigitsConfig) -> None:
        super().__init__()
        self.config = config
        m = config.model
        self.net = nn.Sequential(
            nn.Linear(64, m.hidden), nn.ReLU(), nn.Dropout(m.dropout), nn.Linear(m.hidden, 10)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.config.train.optimizer
        return optimizer_class(o.name)(self.parameters(), lr=o.lr, weight_decay=o.weight_decay, **o.args)


class EpochSeededSampler(Sampler[int]):
    """A shuffle whose order is a function of (seed, epoch): Lightning calls ``set_epoch`` with its
    restored epoch counter, so a resumed attempt sees the same batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def digits_loaders(batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """A fixed 80/20 split of the bundled digits (no download), standardised with training stats."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[: int(0.8 * len(y))], perm[int(0.8 * len(y)) :]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    # Each loader gets a generator of its own: creating an iterator draws a seed from it, and from
    # torch's global generator otherwise, which would shift dropout's random numbers on resume.
    train = DataLoader(
        TensorDataset(x[tr], y[tr]),
        batch_size=batch_size,
        sampler=EpochSeededSampler(len(tr), seed),
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(TensorDataset(x[va], y[va]), batch_size=512, generator=torch.Generator().manual_seed(0))
    return train, val


class ToAblator(L.Callback):
    """Reports Lightning's metrics to ablator and puts Lightning's checkpoint into the store."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        self.ctx.report(step, {k: float(v) for k, v in trainer.callback_metrics.items()})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "last.ckpt")
            trainer.save_checkpoint(path, weights_only=False)
            state = torch.load(path, weights_only=True)  # only plain data goes to the store
        self.ctx.save_checkpoint(state, step)
        if self.ctx.should_stop:
            trainer.should_stop = True


def trial(config: LitDigitsConfig, ctx: TrialContext) -> dict[str, float]:
    # the val loader is one batch and the data is in memory: no loader workers needed
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # On a host with Slurm installed, Lightning advises running under `srun` (it checks at
    # Trainer() and again in fit()). That advice is for one distributed run across a job's tasks;
    # an ablator trial is deliberately one process, so the advice does not apply here.
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
    train, val = digits_loaders(config.train.batch_size, ctx.seed)
    cuda = ctx.device.type == "cuda"
    trainer = L.Trainer(
        max_epochs=1 if ctx.smoke else config.train.epochs,
        limit_train_batches=3 if ctx.smoke else None,
        limit_val_batches=2 if ctx.smoke else None,
        accelerator="gpu" if cuda else "cpu",
        devices=[ctx.device.index or 0] if cuda else 1,
        callbacks=[ToAblator(ctx)],
        logger=False,  # the store is the log
        enable_checkpointing=False,  # checkpoints go to the store through ctx
        enable_progress_bar=False,  # ablator shows progress
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # ablator schedules trials: this one is a single process on ctx.device, even inside a
        # Slurm job or on a host with `srun`. Saying so stops Lightning's cluster detection from
        # taking the job's ranks (or warning that srun is unused); see docs/engines.md.
        plugins=[LightningEnvironment()],
    )
    module = LitDigits(config)
    with tempfile.TemporaryDirectory() as d:
        ckpt_path = None
        if (loaded := ctx.load_checkpoint()) is not None:  # a resumed attempt
            ckpt_path = os.path.join(d, "resume.ckpt")
            torch.save(loaded[0], ckpt_path)
        trainer.fit(module, train, val, ckpt_path=ckpt_path, weights_only=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
