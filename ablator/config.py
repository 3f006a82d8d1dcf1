"""Typed configuration: msgspec Structs for the model, training and run configs.

Users subclass :class:`ModelConfig` and :class:`RunConfig`::

    class DigitsModel(ModelConfig):
        hidden: int = 64
        dropout: float = 0.2
        num_workers: Annotated[int, Stateless] = 0      # may differ between runs; not hashed
        n_classes: Annotated[int | None, Derived] = None  # filled by code before training

    class DigitsConfig(RunConfig[DigitsModel]):
        pass

Field roles (as in the original ABLATOR): *stateful* (the default: part of the trial's identity
and hash), *stateless* (``Annotated[T, Stateless]``: left out of the hash), *derived*
(``Annotated[T | None, Derived]``: None in the file, filled by ``ModelWrapper.derive``).
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

from ablator.errors import ConfigError

try:  # Annotated lives in typing from 3.9; keep the import explicit for readers
    from typing import Annotated
except ImportError:  # pragma: no cover
    from typing_extensions import Annotated


class _Role:
    """A field-role marker for ``typing.Annotated``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


Stateless = _Role("Stateless")
"""Marks a field that may differ between runs of the same trial (workers, log frequency)."""

Derived = _Role("Derived")
"""Marks a field that is None in the file and filled by code (e.g. from the data set)."""


class BaseConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config Struct: frozen, keyword-only, unknown keys rejected."""


class ModelConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Subclass with your model's hyperparameters."""


class OptimizerConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Any ``torch.optim`` optimizer by (case-insensitive) class name, e.g. ``adam``, ``adamw``,
    ``sgd``. ``args`` holds extra constructor arguments (``momentum``, ``betas``...)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    args: dict[str, Any] = {}


SchedulerName = Literal["none", "step", "cosine", "onecycle", "plateau", "linear", "warmup_cosine"]


class SchedulerConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Learning-rate schedule.

    * ``step``: multiply by ``gamma`` every ``step_size`` units of ``step_when``.
    * ``cosine``: cosine decay to ``min_lr`` over the run.
    * ``onecycle``: one-cycle to ``max_lr`` (default 10 x lr), stepped per batch.
    * ``plateau``: reduce by ``gamma`` after ``patience`` evaluations without improvement.
    * ``linear``: linear warm-up over ``warmup_steps``, then linear decay to ``min_lr``.
    * ``warmup_cosine``: linear warm-up, then cosine decay.

    ``step_when``: ``train`` (every optimizer step), ``epoch`` or ``val`` (after evaluation).
    """

    name: SchedulerName = "none"
    step_when: Literal["train", "epoch", "val"] | None = None  # None: the schedule's natural unit
    warmup_steps: int = 0
    step_size: int = 1
    gamma: float = 0.1
    min_lr: float = 0.0
    max_lr: float | None = None
    patience: int = 5
    args: dict[str, Any] = {}


class TrainConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The training loop's settings. Training stops at ``epochs`` or ``max_steps``, whichever
    comes first (at least one must be set)."""

    batch_size: int = 32
    epochs: int | None = 1
    max_steps: int | None = None
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    amp: Literal["none", "fp16", "bf16"] = "none"
    grad_clip: float | None = None  # max gradient norm; None disables clipping
    grad_clip_norm_type: float = 2.0
    grad_accum: int = 1
    eval_every: int | None = None  # optimizer steps between evaluations; None: use eval_every_epochs
    eval_every_epochs: float = 1.0  # evaluation every this fraction (or multiple) of an epoch
    checkpoint_every: int | None = None  # optimizer steps; None: at every evaluation
    checkpoint_every_minutes: Annotated[float | None, Stateless] = None
    keep_checkpoints: Annotated[int, Stateless] = 2  # newest K of this attempt, plus the best
    early_stopping_patience: int | None = None  # evaluations without improvement
    early_stopping_min_delta: float = 0.0
    diverge_on_nonfinite: bool = True  # a NaN/inf loss ends the trial as "diverged"
    diverge_factor: float | None = None  # loss > factor x best loss after warm-up -> diverged
    diverge_warmup_steps: int = 0
    deterministic: bool = False
    log_every: Annotated[int, Stateless] = 50  # steps between metric rows
    num_workers: Annotated[int, Stateless] = 0


M = TypeVar("M", bound=ModelConfig)


class RunConfig(BaseConfig, Generic[M], frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A trial's whole config: your ``ModelConfig`` subclass plus ``train``. Subclass it as
    ``class MyConfig(RunConfig[MyModel]): ...`` and add fields of your own."""

    model: M
    train: TrainConfig = TrainConfig()


__all__ = [
    "Annotated",
    "BaseConfig",
    "ConfigError",
    "Derived",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "SchedulerConfig",
    "Stateless",
    "TrainConfig",
]
