"""``ModelWrapper``: what a researcher subclasses so that ablator's loop can train a model.

Two methods are required (``make_model``, ``make_dataloaders``); every other one has a default
that fits the common case (a classifier or a regressor fed ``(x, y)`` batches)::

    class DigitsWrapper(ModelWrapper[DigitsConfig]):
        config_type = DigitsConfig

        def make_model(self, config):
            return build_mlp(config.model)

        def make_dataloaders(self, config):
            return train_loader, val_loader          # or (train, val, test); val is optional

The optimizer and the learning-rate schedule come from ``config.train`` (see
:class:`ablator.config.TrainConfig`); override :meth:`ModelWrapper.make_optimizer` or
:meth:`ModelWrapper.make_scheduler` for anything else.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ablator.config import OptimizerConfig, SchedulerConfig, TrainConfig, optimizer_class
from ablator.errors import ConfigError
from ablator.train.state import LoopState, Scheduler, TrainPlan

C = TypeVar("C")


def train_config(config: Any) -> TrainConfig:
    """``config.train``, or the defaults when the config has none."""
    tc = getattr(config, "train", None)
    if tc is None:
        return TrainConfig()
    if not isinstance(tc, TrainConfig):
        raise ConfigError(f"$.train: expected ablator.config.TrainConfig, got {type(tc).__name__}")
    return tc


# --- optimizers and schedules from the config ------------------------------------------------


def build_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer named by ``cfg.name`` (case-insensitive)."""
    try:
        cls = optimizer_class(cfg.name)
    except ConfigError as exc:
        raise ConfigError(f"$.train.optimizer.name: {'; '.join(exc.problems)}") from exc
    kwargs: dict[str, Any] = {"lr": cfg.lr, **cfg.args}
    if cfg.weight_decay:
        kwargs["weight_decay"] = cfg.weight_decay
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"$.train.optimizer: {cls.__name__}({', '.join(sorted(kwargs))}) failed: {exc}"
        ) from exc


_NATURAL_UNIT = {
    "step": "epoch",
    "cosine": "train",
    "onecycle": "train",
    "plateau": "val",
    "linear": "train",
    "warmup_cosine": "train",
}


def scheduler_unit(cfg: SchedulerConfig) -> str:
    """When the schedule steps: ``train`` (every optimizer step), ``epoch`` or ``val``."""
    return cfg.step_when or _NATURAL_UNIT.get(cfg.name, "train")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: TrainPlan, mode: str = "min"
) -> Scheduler | None:
    """The schedule ``cfg.name``, sized to the run (``plan``) in the unit of ``step_when``."""
    unit = scheduler_unit(cfg)
    total = {"train": plan.total_steps, "epoch": plan.epochs, "val": plan.total_evals}[unit]
    total = max(1, total)
    base_lr = optimizer.param_groups[0]["lr"]
    args = dict(cfg.args)
    lr_sched = torch.optim.lr_scheduler
    try:
        if cfg.name == "none":
            return None
        if cfg.name == "step":
            return lr_sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma, **args)
        if cfg.name == "cosine":
            return lr_sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr, **args)
        if cfg.name == "onecycle":
            if unit != "train":
                raise ConfigError(
                    f"$.train.scheduler.step_when: onecycle steps every optimizer step, not {unit!r}"
                )
            max_lr = cfg.max_lr if cfg.max_lr is not None else 10 * base_lr
            return lr_sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, **args)
        if cfg.name == "plateau":
            if unit != "val":
                raise ConfigError(
                    f"$.train.scheduler.step_when: plateau steps after evaluations ('val'), not {unit!r}"
                )
            return lr_sched.ReduceLROnPlateau(
                optimizer,
                mode="max" if mode == "max" else "min",
                factor=cfg.gamma,
                patience=cfg.patience,
                min_lr=cfg.min_lr,
                **args,
            )
        if cfg.name in ("linear", "warmup_cosine"):
            warm = max(0, cfg.warmup_steps)
            floor = cfg.min_lr / base_lr if base_lr else 0.0
            return lr_sched.LambdaLR(
                optimizer, _warmup_decay(warm, total, floor, cosine=cfg.name == "warmup_cosine")
            )
    except TypeError as exc:
        raise ConfigError(f"$.train.scheduler.args: {exc}") from exc
    raise ConfigError(f"$.train.scheduler.name: unknown schedule {cfg.name!r}")


def _warmup_decay(warmup: int, total: int, floor: float, *, cosine: bool) -> Callable[[int], float]:
    def factor(u: int) -> float:
        if u < warmup:
            return (u + 1) / warmup
        span = max(1, total - warmup)
        frac = min(1.0, (u - warmup) / span)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if cosine else 1.0 - frac
        return floor + (1.0 - floor) * shape

    return factor


# --- batches ---------------------------------------------------------------------------------


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``batch`` (tuples, lists, dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device, non_blocking) for b in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


def batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, tuple | list) and batch:
        return batch_size(batch[0])
    if isinstance(batch, Mapping) and batch:
        return batch_size(next(iter(batch.values())))
    return 1


def _xy(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"the default ModelWrapper.loss expects (x, y) batches, got {type(batch).__name__}; "
        "override loss(model, batch) for other batches"
    )


def _is_classification(outputs: Any, y: Any) -> bool:
    return (
        isinstance(outputs, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and not y.is_floating_point()
        and not y.is_complex()
        and outputs.ndim == y.ndim + 1
    )


class ModelWrapper(Generic[C]):
    """Subclass with ``config_type``, :meth:`make_model` and :meth:`make_dataloaders`.

    The loop sets ``self.device`` (a ``torch.device``) before it calls any method but
    :meth:`derive`; :meth:`autocast` gives the trial's mixed-precision context.

    Hooks (``on_*``) run at named points of the loop with its :class:`~ablator.train.state.LoopState`;
    the defaults do nothing.
    """

    config_type: ClassVar[type[Any]]
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    metric_mode: str = "min"  # the experiment metric's direction (ReduceLROnPlateau follows it)

    # -- required ---------------------------------------------------------------------------
    def make_model(self, config: C) -> nn.Module:
        """The model to train (on the CPU; the loop moves it)."""
        raise NotImplementedError(f"{type(self).__name__}.make_model(config) is not implemented")

    def make_dataloaders(self, config: C) -> Sequence[Any]:
        """``(train, val)`` or ``(train, val, test)`` DataLoaders; ``val`` and ``test`` may be None.

        The train loader must have a length. Its order is ablator's: the loop gives its sampler
        (and the loader) a generator seeded per epoch, which is what lets a resumed trial rebuild
        the batch order."""
        raise NotImplementedError(f"{type(self).__name__}.make_dataloaders(config) is not implemented")

    # -- optional ---------------------------------------------------------------------------
    def derive(self, config: C) -> C:
        """Fill ``Derived`` fields (e.g. from the data set) and return the config. Runs first."""
        return config

    def make_optimizer(self, model: nn.Module, config: C) -> torch.optim.Optimizer:
        """Default: ``config.train.optimizer`` (any ``torch.optim`` class by name)."""
        return build_optimizer(model.parameters(), train_config(config).optimizer)

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, config: C, plan: TrainPlan
    ) -> Scheduler | None:
        """Default: ``config.train.scheduler``, stepped as its ``step_when`` says."""
        return build_scheduler(optimizer, train_config(config).scheduler, plan, self.metric_mode)

    def to_device(self, batch: Any) -> Any:
        """Move a batch to ``self.device``."""
        return to_device(batch, self.device, non_blocking=self.device.type == "cuda")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The trial's autocast context (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The training loss, or ``(loss, outputs)`` so that :meth:`metrics` sees the outputs.

        Default for ``(x, y)`` batches: ``model(x)``, then cross-entropy for integer targets
        (classification) and mean squared error otherwise."""
        x, y = _xy(batch)
        outputs = model(x)
        if _is_classification(outputs, y):
            return F.cross_entropy(outputs, y), outputs
        if isinstance(outputs, torch.Tensor) and isinstance(y, torch.Tensor) and outputs.shape != y.shape:
            if outputs.numel() == y.numel():
                return F.mse_loss(outputs.reshape(y.shape).float(), y.float()), outputs
            raise ValueError(
                f"default loss: outputs of shape {tuple(outputs.shape)} do not match targets of shape "
                f"{tuple(y.shape)}; override loss(model, batch)"
            )
        return F.mse_loss(outputs.float(), y.float()), outputs

    def metrics(self, outputs: Any, batch: Any) -> Mapping[str, torch.Tensor | float]:
        """Per-batch evaluation metrics (means over the batch), averaged by the loop weighted by
        batch size, on the device. Default: ``accuracy`` for classification."""
        if outputs is None:
            return {}
        try:
            _, y = _xy(batch)
        except TypeError:
            return {}
        if _is_classification(outputs, y):
            return {"accuracy": (outputs.argmax(dim=-1) == y).float().mean()}
        return {}

    def evaluate(self, model: nn.Module, loader: Any) -> Mapping[str, torch.Tensor | float]:
        """Metrics over ``loader`` (unprefixed: the loop adds ``val_`` / ``test_``).

        Default: the mean :meth:`loss` and :meth:`metrics`, accumulated on the device and synced
        once by the loop."""
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        with torch.no_grad():
            for raw in loader:
                batch = self.to_device(raw)
                with self.autocast():
                    out = self.loss(model, batch)
                loss, outputs = out if isinstance(out, tuple) else (out, None)
                n = batch_size(batch)
                values: dict[str, torch.Tensor | float] = {"loss": loss}
                values.update(self.metrics(outputs, batch))
                for name, v in values.items():
                    t = (
                        v.detach().float()
                        if isinstance(v, torch.Tensor)
                        else torch.tensor(float(v), device=self.device)
                    )
                    sums[name] = sums[name] + t * n if name in sums else t * n
                seen += n
        if not seen:
            return {}
        return {name: s / seen for name, s in sums.items()}

    # -- hooks --------------------------------------------------------------------------------
    def on_train_start(self, state: LoopState) -> None:
        """After setup and resume, before the first step."""

    def on_step_end(self, state: LoopState) -> None:
        """After every optimizer step (keep it cheap: it runs every step)."""

    def on_evaluate(self, state: LoopState, metrics: Mapping[str, float]) -> None:
        """After each evaluation, with its (prefixed, host) metrics."""

    def on_checkpoint(self, state: LoopState, key: str) -> None:
        """After checkpoint ``key`` was queued for writing."""

    def on_train_end(self, state: LoopState) -> None:
        """After the last step and the final checkpoint, before the outcome is returned."""
