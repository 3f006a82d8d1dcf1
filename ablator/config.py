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

This module also hashes configs canonically and diffs them, and loads and saves config files.
The machinery lives in modules of its own and is re-exported here: ``formats`` (YAML, TOML,
JSON), ``overrides`` (``--set a.b=value``) and ``validation`` (data against a config type,
reporting *every* problem at once; msgspec stops at the first). See ``docs/config.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import sys
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from ablator import _typing_utils as tu
from ablator._typing_utils import Problem, join_path
from ablator.errors import ConfigError
from ablator.formats import SUFFIXES, parse_yaml, read_data, write_data
from ablator.overrides import (
    apply_collecting,
    apply_overrides,
    field_type,
    parse_value,
    set_path,
    split_override,
    typed_value,
)
from ablator.validation import check_data, from_dict

Stateless = tu.Role("Stateless", "stateless")
"""Marks a field that may differ between runs of the same trial (workers, log frequency)."""

Derived = tu.Role("Derived", "derived")
"""Marks a field that is None in the file and filled by code (e.g. from the data set)."""


class BaseConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config Struct: frozen, keyword-only, unknown keys rejected."""

    def check(self) -> Iterable[Problem]:
        """Cross-field validation beyond types, run on every nested config after it decoded.

        Override it to add your own rules; yield ``(relative_path, message)`` pairs, e.g.
        ``yield "hidden", "must be a multiple of heads"``. Every problem of a file is reported at
        once, together with the type errors of its other parts.
        """
        return ()


class ModelConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Subclass with your model's hyperparameters."""


# torch.optim's optimizer classes (torch 2.13). Used to validate names without importing torch;
# a name not in this list is looked up in torch itself before it is refused, and once torch is
# imported its own classes are the authority (see ``optimizer_names``).
KNOWN_OPTIMIZERS = (
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
)


def _torch_optimizers() -> dict[str, type] | None:
    torch = sys.modules.get("torch")
    optim = getattr(torch, "optim", None) if torch is not None else None
    base = getattr(optim, "Optimizer", None)
    if optim is None or base is None:
        return None
    return {
        name: obj
        for name, obj in vars(optim).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base and not name.startswith("_")
    }


def optimizer_names() -> list[str]:
    """The ``torch.optim`` optimizer class names that ``OptimizerConfig.name`` accepts
    (case-insensitively). Taken from torch when it is imported already, else from a built-in
    list, so that validating a config does not import torch."""
    found = _torch_optimizers()
    return sorted(found) if found is not None else sorted(KNOWN_OPTIMIZERS)


def _optimizer_known(name: str) -> bool:
    lower = name.lower()
    if any(n.lower() == lower for n in optimizer_names()):
        return True
    if "torch" not in sys.modules:  # a newer torch may have it: ask torch itself (rare path)
        try:
            import torch.optim  # noqa: F401
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
        return any(n.lower() == lower for n in optimizer_names())
    return False


def optimizer_class(name: str) -> type:
    """The ``torch.optim`` class named ``name`` (case-insensitive). Imports torch.

    >>> optimizer_class("adamw")
    <class 'torch.optim.adamw.AdamW'>
    """
    import torch.optim  # noqa: F401  (fills sys.modules for _torch_optimizers)

    found = _torch_optimizers() or {}
    for cls_name, cls in found.items():
        if cls_name.lower() == name.lower():
            return cls
    raise ConfigError(_unknown_optimizer(name))


def _unknown_optimizer(name: str) -> str:
    valid = [n.lower() for n in optimizer_names()]
    return f"unknown torch.optim optimizer {name!r}{tu.suggest(name.lower(), valid)}; valid names: {', '.join(valid)}"


def _finite_note(value: float | None, message: str) -> str:
    """``message``, or for an infinite or NaN value what to write instead (they pass no range
    check by accident: a NaN compares false, an infinity silently disables a rule)."""
    if value is not None and not math.isfinite(value):
        return f"must be a finite number, found {value!r} (.inf and .nan mean nothing here; use null to turn a rule off where it takes null)"
    return message


class OptimizerConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Any ``torch.optim`` optimizer by (case-insensitive) class name, e.g. ``adam``, ``adamw``,
    ``sgd``. ``args`` holds extra constructor arguments (``momentum``, ``betas``...)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    args: dict[str, Any] = {}

    def check(self) -> Iterable[Problem]:
        if not _optimizer_known(self.name):
            yield "name", _unknown_optimizer(self.name)
        if not 0 <= self.lr < math.inf:  # also catches NaN
            yield "lr", _finite_note(self.lr, f"must be >= 0, found {self.lr!r}")
        if not 0 <= self.weight_decay < math.inf:
            yield (
                "weight_decay",
                _finite_note(self.weight_decay, f"must be >= 0, found {self.weight_decay!r}"),
            )
        for reserved in ("lr", "weight_decay", "params"):
            if reserved in self.args:
                yield "args", f"{reserved!r} belongs in its own field, not in args"


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

    def check(self) -> Iterable[Problem]:
        if self.warmup_steps < 0:
            yield "warmup_steps", f"must be >= 0, found {self.warmup_steps}"
        if self.step_size < 1:
            yield "step_size", f"must be >= 1, found {self.step_size}"
        if not 0 < self.gamma < math.inf:
            yield "gamma", _finite_note(self.gamma, f"must be > 0, found {self.gamma!r}")
        if not 0 <= self.min_lr < math.inf:
            yield "min_lr", _finite_note(self.min_lr, f"must be >= 0, found {self.min_lr!r}")
        if self.max_lr is not None and not 0 < self.max_lr < math.inf:
            yield "max_lr", _finite_note(self.max_lr, f"must be > 0 (or null), found {self.max_lr!r}")
        if self.patience < 0:
            yield "patience", f"must be >= 0, found {self.patience}"
        if self.name == "plateau" and self.step_when not in (None, "val"):
            yield "step_when", f"plateau reacts to evaluations: use 'val' (or null), found {self.step_when!r}"


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
    # True: deterministic kernels or an error; "warn": report the operations that have none
    deterministic: bool | Literal["warn"] = False
    log_every: Annotated[int, Stateless] = 50  # steps between metric rows
    num_workers: Annotated[int, Stateless] = 0

    def check(self) -> Iterable[Problem]:
        if self.epochs is None and self.max_steps is None:
            yield "", "set epochs or max_steps (both are null, so training would never stop)"
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "grad_accum": self.grad_accum,
            "eval_every": self.eval_every,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "early_stopping_patience": self.early_stopping_patience,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                yield name, f"must be >= 1, found {value}"
        for name, fvalue in {
            "eval_every_epochs": self.eval_every_epochs,
            "grad_clip": self.grad_clip,
            "checkpoint_every_minutes": self.checkpoint_every_minutes,
        }.items():
            if fvalue is not None and not 0 < fvalue < math.inf:
                yield name, _finite_note(fvalue, f"must be > 0, found {fvalue!r}")
        if not 0 <= self.early_stopping_min_delta < math.inf:
            yield (
                "early_stopping_min_delta",
                _finite_note(
                    self.early_stopping_min_delta, f"must be >= 0, found {self.early_stopping_min_delta!r}"
                ),
            )
        if not (self.grad_clip_norm_type > 0 or self.grad_clip_norm_type == math.inf):  # inf: the max norm
            yield (
                "grad_clip_norm_type",
                f"must be > 0 (or .inf for the max norm), found {self.grad_clip_norm_type!r}",
            )
        if self.diverge_factor is not None and not 1 < self.diverge_factor < math.inf:
            yield (
                "diverge_factor",
                f"must be > 1 (loss above factor x best loss), found {self.diverge_factor!r}",
            )
        if self.num_workers < 0:
            yield "num_workers", f"must be >= 0, found {self.num_workers}"
        if self.diverge_warmup_steps < 0:
            yield "diverge_warmup_steps", f"must be >= 0, found {self.diverge_warmup_steps}"


M = TypeVar("M", bound=ModelConfig)


class RunConfig(BaseConfig, Generic[M], frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A trial's whole config: your ``ModelConfig`` subclass plus ``train``. Subclass it as
    ``class MyConfig(RunConfig[MyModel]): ...`` and add fields of your own."""

    model: M
    train: TrainConfig = TrainConfig()


T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (dicts, lists, str, int, float, bool, None): what JSON, YAML,
    TOML and MessagePack give back, so that a stored config compares equal to a fresh one."""
    out = _lists(msgspec.to_builtins(cfg))
    if not isinstance(out, dict):
        raise TypeError(f"to_dict expects a config Struct or a mapping, got {type(cfg).__name__}")
    return out


def _lists(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_lists(v) for v in data]
    if isinstance(data, (set, frozenset)):
        return sorted((_lists(v) for v in data), key=lambda v: json.dumps(v, sort_keys=True))
    return data


def load_config(path: str | os.PathLike[str], type_: type[T], overrides: Sequence[str] = ()) -> T:
    """Load a config file (YAML/TOML/JSON) as ``type_``, after ``--set``-style overrides.

    Raises :class:`ConfigError` with every problem of the file and of the overrides.
    """
    data = read_data(path)
    data, problems = apply_collecting(data, overrides, type_)
    obj, more = check_data(data, type_)
    problems += more
    if problems:
        raise ConfigError(problems, source=f"{path} (with --set overrides)" if overrides else str(path))
    return typing.cast(T, obj)


def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Save a config as YAML, TOML or JSON (by suffix). ``load_config`` reads it back equal.

    TOML has no null: null fields are left out, which is exact when their default is null too;
    otherwise this raises :class:`ConfigError` naming the fields (use YAML or JSON).
    """
    data = to_dict(cfg)
    if Path(path).suffix.lower() == ".toml":
        data = _drop_none(data)
        if isinstance(cfg, msgspec.Struct):
            try:
                back = msgspec.convert(data, type(cfg))
            except msgspec.ValidationError:
                back = None
            if back != cfg:
                lost = [p for p, old, _ in diff(cfg, back)] if back is not None else ["$"]
                raise ConfigError(
                    f"TOML has no null, and {', '.join('$.' + p for p in lost)} are null where the "
                    "default is not; save as YAML or JSON instead",
                    source=str(path),
                )
    write_data(data, path)


def _drop_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data


# --- roles, hash, diff -----------------------------------------------------------------------


def field_roles(type_: Any) -> dict[str, str]:
    """Dotted path -> ``"stateful"``, ``"stateless"`` or ``"derived"`` for every field of
    ``type_`` and of the configs nested in it. A nested config marked stateless (or derived)
    passes its role to all of its fields."""
    out: dict[str, str] = {}

    def walk(tp: Any, prefix: str, inherited: str | None) -> None:
        for f in tu.struct_fields(tp):
            path = f"{prefix}{f.encode_name}"
            role = inherited or tu.role_of(f.type) or "stateful"
            out[path] = role
            inner = tu.unwrap_optional(f.type)
            if tu.is_struct_type(inner):
                walk(inner, path + ".", role if role != "stateful" else None)

    walk(type_, "", None)
    return out


def _stateful_view(obj: Any) -> Any:
    """Plain data of ``obj`` without its stateless and derived fields, with sets sorted."""
    if isinstance(obj, msgspec.Struct):
        out = {}
        for f in tu.struct_fields(type(obj)):
            if tu.role_of(f.type) is None:
                out[f.encode_name] = _stateful_view(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(_stateful_view(k)): _stateful_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_stateful_view(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [_stateful_view(v) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, enum.Enum):
        return _stateful_view(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _stateful_view(dataclasses.asdict(obj))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return msgspec.to_builtins(obj)


HASH_VERSION = "ablator-config-v1"


def canonical_json(data: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, floats as Python's shortest round-trip
    repr (``0.1``, ``1e-05``), NaN and infinities as ``NaN``/``Infinity`` (not null)."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    ).encode()


def config_hash(cfg: msgspec.Struct) -> str:
    """sha256 (64 hex digits) of the config's stateful fields, canonically encoded.

    Stable across processes, machines and Python versions: keys sorted, floats in their shortest
    round-trip form; stateless fields (workers, logging) and derived fields (filled in later)
    are left out, so a trial's hash is the same before and after ``derive``.
    """
    if not isinstance(cfg, msgspec.Struct):
        raise TypeError(f"config_hash expects a config Struct, got {type(cfg).__name__}")
    payload = HASH_VERSION.encode() + b"\n" + canonical_json(_stateful_view(cfg))
    return hashlib.sha256(payload).hexdigest()


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for an absent key in :func:`diff` (a key of a free-form mapping set on one side only)."""


def diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """Leaves that differ between two configs (Structs or plain data), as (dotted path, old,
    new); an absent key is :data:`MISSING`. Lists compare as whole values.

    >>> diff(base, variant)
    [('model.dropout', 0.2, 0.0)]
    """
    out: list[tuple[str, Any, Any]] = []

    def plain(x: Any) -> Any:
        return _lists(msgspec.to_builtins(x)) if isinstance(x, msgspec.Struct) else _lists(x)

    def walk(x: Any, y: Any, prefix: str) -> None:
        x, y = plain(x), plain(y)
        if isinstance(x, dict) and isinstance(y, dict):
            for key in list(x) + [k for k in y if k not in x]:
                walk(
                    x.get(key, MISSING),
                    y.get(key, MISSING),
                    f"{prefix}{key}" if not prefix else f"{prefix}.{key}",
                )
            return
        if not tu.same_value(x, y):
            out.append((prefix or "$", x, y))

    walk(a, b, "")
    return out


def fill_derived(cfg: T, **values: Any) -> T:
    """Return ``cfg`` with derived fields filled in; keys are dotted paths
    (``fill_derived(cfg, **{"model.n_classes": 10})``) or top-level field names.

    Only fields marked ``Derived`` may be filled (others are part of the trial's identity);
    values are converted to the field's type. Raises :class:`ConfigError` listing every problem.
    """
    roles = field_roles(type(cfg))
    problems: list[str] = []
    for dotted, value in values.items():
        role = roles.get(dotted)
        if role is None:
            segs = dotted.split(".")
            try:
                tu.field_type(type(cfg), segs)
            except tu.PathError as exc:
                problems.append(str(exc))
                continue
        if role != "derived":
            problems.append(
                f"$.{dotted}: is {role or 'not a field'}, not derived; only Derived fields can be filled"
            )
            continue
        try:
            cfg = _replace_path(cfg, dotted.split("."), value)
        except msgspec.ValidationError as exc:
            tp = tu.field_type(type(cfg), dotted.split("."))
            problems.append(tu.leaf_problem(f"$.{dotted}", tp, value, exc))
    if problems:
        raise ConfigError(problems)
    return cfg


def _replace_path(obj: Any, segments: list[str], value: Any) -> Any:
    fields = {f.encode_name: f for f in tu.struct_fields(type(obj))}
    f = fields[segments[0]]
    if len(segments) == 1:
        new = msgspec.convert(value, f.type)
    else:
        new = _replace_path(getattr(obj, f.name), segments[1:], value)
    return msgspec.structs.replace(obj, **{f.name: new})


__all__ = [
    "MISSING",
    "SUFFIXES",
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
    "apply_overrides",
    "canonical_json",
    "check_data",
    "config_hash",
    "diff",
    "field_roles",
    "field_type",
    "fill_derived",
    "from_dict",
    "join_path",
    "load_config",
    "optimizer_class",
    "optimizer_names",
    "parse_value",
    "parse_yaml",
    "read_data",
    "save_config",
    "set_path",
    "split_override",
    "to_dict",
    "typed_value",
    "write_data",
]
