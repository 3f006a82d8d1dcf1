"""ablator: coordinator-free ablation studies and hyperparameter sweeps for PyTorch.

The names users need are importable from here. ``import ablator`` does not import torch: the
names that need it (``ModelWrapper``, ``TrialContext``, ``run``, ``launch``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ablator.config import (
    Derived,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    Stateless,
    TrainConfig,
)
from ablator.errors import AblatorError, ConfigError
from ablator.planning import plan

__version__ = "0.1.0"
"""ablator's version: the one place it is written (pyproject.toml reads it from here)."""

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ablator.store import open_store
    from ablator.train import ModelWrapper, TrialContext

# name -> module that defines it; imported on first access (module-level __getattr__, PEP 562)
_LAZY = {
    "ModelWrapper": "ablator.train",
    "TrialContext": "ablator.train",
    "launch": "ablator.ops",
    "open_store": "ablator.store",
    "run": "ablator.agent.run",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ablator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AblatorError",
    "ConfigError",
    "Derived",
    "ModelConfig",
    "ModelWrapper",
    "OptimizerConfig",
    "RunConfig",
    "SchedulerConfig",
    "Stateless",
    "TrainConfig",
    "TrialContext",
    "__version__",
    "launch",
    "open_store",
    "plan",
    "run",
]
