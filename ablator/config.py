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

This module also reads and writes config files (YAML, TOML, JSON), applies ``--set a.b=value``
overrides, validates data against a config type reporting *every* problem at once (msgspec stops
at the first), hashes configs canonically and diffs them. See ``docs/config.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import hashlib
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import msgspec
import yaml

from ablator.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


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

Problem = tuple[str, str]
"""A semantic problem found by :meth:`BaseConfig.check`: (dotted path relative to the config that
reports it, or ``""`` for the config itself; message)."""


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
_KNOWN_OPTIMIZERS = (
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
    return sorted(found) if found is not None else sorted(_KNOWN_OPTIMIZERS)


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
    return f"unknown torch.optim optimizer {name!r}{_suggest(name.lower(), valid)}; valid names: {', '.join(valid)}"


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
        if not self.lr >= 0:  # also catches NaN
            yield "lr", f"must be >= 0, found {self.lr!r}"
        if not self.weight_decay >= 0:
            yield "weight_decay", f"must be >= 0, found {self.weight_decay!r}"
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
        if not self.gamma > 0:
            yield "gamma", f"must be > 0, found {self.gamma!r}"
        if not self.min_lr >= 0:
            yield "min_lr", f"must be >= 0, found {self.min_lr!r}"
        if self.max_lr is not None and not self.max_lr > 0:
            yield "max_lr", f"must be > 0 (or null), found {self.max_lr!r}"
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
    deterministic: bool = False
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
            if fvalue is not None and not fvalue > 0:
                yield name, f"must be > 0, found {fvalue!r}"
        if self.diverge_factor is not None and not self.diverge_factor > 1:
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

# --- files -----------------------------------------------------------------------------------

SUFFIXES = (".yaml", ".yml", ".toml", ".json")

_YAML_BOOL = "tag:yaml.org,2002:bool"
_YAML_INT = "tag:yaml.org,2002:int"
_YAML_FLOAT = "tag:yaml.org,2002:float"
_YAML_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_YAML_VALUE = "tag:yaml.org,2002:value"


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars, and duplicate keys refused.

    PyYAML implements YAML 1.1, where ``1e-3`` is a *string*, ``no``/``off`` are booleans,
    ``010`` is octal and ``2024-01-01`` a date: classic config typos that would only crash at
    training time. YAML 1.2 (and JSON, TOML) read them the way people mean them.
    """


_YamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in (_YAML_BOOL, _YAML_INT, _YAML_FLOAT, _YAML_TIMESTAMP, _YAML_VALUE)
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(
    _YAML_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_YamlLoader.add_implicit_resolver(
    _YAML_FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, typing.Hashable):
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (the later value would silently win)", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_YamlLoader.add_constructor(_YAML_INT, _construct_int)
_YamlLoader.add_constructor(_YAML_FLOAT, _construct_float)
_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the YAML 1.2 core schema (see :class:`_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} (the later value would silently win)")
        out[key] = value
    return out


def read_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file (by suffix) into plain data; the top level must be a
    mapping. Syntax errors raise :class:`ConfigError` naming the file (and line where known)."""
    p = Path(path)
    src = str(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"unsupported file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}", source=src)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=src) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc}", source=src) from exc
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_json_pairs)
        else:
            data = parse_yaml(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot parse {suffix[1:].upper()}: {exc}", source=src) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"$: expected a mapping at the top level, found {_found(data)}", source=src)
    return data


def write_data(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write plain data as YAML, TOML or JSON (by suffix)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    elif suffix == ".toml":
        import tomli_w

        try:
            text = tomli_w.dumps(data)
        except TypeError as exc:
            raise ConfigError(f"cannot write TOML: {exc}; use YAML or JSON", source=str(path)) from exc
    elif suffix == ".json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        raise ConfigError(
            f"unsupported file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}", source=str(path)
        )
    p.write_text(text, encoding="utf-8")


# --- type walking ----------------------------------------------------------------------------


def _is_struct_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _role_of(tp: Any) -> str | None:
    if typing.get_origin(tp) is Annotated:
        for meta in typing.get_args(tp)[1:]:
            if meta is Stateless:
                return "stateless"
            if meta is Derived:
                return "derived"
        return _role_of(typing.get_args(tp)[0])
    if _is_union(tp):  # Annotated[int, Stateless] | None
        for arg in typing.get_args(tp):
            role = _role_of(arg)
            if role is not None:
                return role
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _non_none(tp: Any) -> list[Any]:
    return [a for a in typing.get_args(tp) if a is not type(None)]


def _struct_fields(tp: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(tp)


def _type_name(tp: Any) -> str:
    tp = _strip_annotated(tp)
    if tp is Any:
        return "any value"
    if tp is type(None) or tp is None:
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if _is_struct_type(tp):
        return f"a mapping ({tp.__name__})"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return (
            f"{getattr(origin, '__name__', str(origin))}[{args}]"
            if args
            else getattr(origin, "__name__", str(tp))
        )
    return getattr(tp, "__name__", str(tp))


def _found(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if isinstance(value, dict):
        return f"a mapping {text}"
    if isinstance(value, list):
        return f"a list {text}"
    return f"{type(value).__name__} {text}"


def _suggest(word: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def join_path(path: str, key: Any) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers are bracketed (``$.x['a.b']``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _dotted(base: str, rel: str) -> str:
    if not rel:
        return base
    for part in rel.split("."):
        base = join_path(base, part)
    return base


_MSGSPEC_AT = re.compile(r" - at `\$[^`]*`$")
_PLAIN_MISMATCH = re.compile(r"^Expected `[^`]*`, got `[^`]*`$")


def _leaf_problem(path: str, tp: Any, value: Any, exc: Exception) -> str:
    expected = _type_name(tp)
    base = f"{path}: expected {expected}, found {_found(value)}"
    inner = _strip_annotated(tp)
    if typing.get_origin(inner) is Literal and isinstance(value, str):
        base += _suggest(value, [v for v in typing.get_args(inner) if isinstance(v, str)])
    detail = _MSGSPEC_AT.sub("", str(exc))
    if detail and not _PLAIN_MISMATCH.match(detail) and not detail.startswith("Invalid enum value"):
        base += f" ({detail[0].lower()}{detail[1:]})"
    return base


def _field_default(f: msgspec.structs.FieldInfo) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return msgspec.NODEFAULT


def _check_derived(f: msgspec.structs.FieldInfo, value: Any, path: str, problems: list[str]) -> None:
    default = _field_default(f)
    if default is not msgspec.NODEFAULT and not _same(
        msgspec.to_builtins(value), msgspec.to_builtins(default)
    ):
        problems.append(
            f"{path}: is a derived field (filled in by code before training); leave it out of "
            f"the file (found {_found(value)})"
        )


def _semantic(obj: Any, path: str, problems: list[str], allow_derived: bool) -> None:
    """Run ``check()`` on ``obj`` and every config nested in it; refuse derived values set in a
    file (they would be overwritten by ``derive`` and are not part of the hash)."""
    if isinstance(obj, msgspec.Struct):
        if isinstance(obj, BaseConfig):
            for rel, message in obj.check():
                problems.append(f"{_dotted(path, rel)}: {message}")
        for f in _struct_fields(type(obj)):
            value = getattr(obj, f.name)
            if not allow_derived and _role_of(f.type) == "derived":
                _check_derived(f, value, join_path(path, f.encode_name), problems)
            _semantic(value, join_path(path, f.encode_name), problems, allow_derived)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _semantic(item, join_path(path, i), problems, allow_derived)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _semantic(item, join_path(path, key), problems, allow_derived)


def _walk(value: Any, tp: Any, path: str, problems: list[str], allow_derived: bool) -> None:
    """Collect every problem of ``value`` against type ``tp`` (msgspec reports the first only)."""
    tp = _strip_annotated(tp)
    if _is_struct_type(tp):
        try:
            sub = msgspec.convert(value, tp)
        except msgspec.ValidationError:
            pass
        else:
            _semantic(sub, path, problems, allow_derived)
            return
        if not isinstance(value, dict):
            problems.append(f"{path}: expected {_type_name(tp)}, found {_found(value)}")
            return
        fields = _struct_fields(tp)
        by_key = {f.encode_name: f for f in fields}
        good: dict[str, Any] = {}  # the keys without problems, to run check() on the rest
        complete = True
        for key, item in value.items():  # in the file's order
            f = by_key.get(key)
            if f is None:
                problems.append(_unknown_key(path, key, list(by_key)))
                continue
            before = len(problems)
            _walk(item, f.type, join_path(path, key), problems, allow_derived)
            if not allow_derived and _role_of(f.type) == "derived":
                _check_derived(f, item, join_path(path, key), problems)
            if len(problems) == before:
                good[key] = item
            elif f.required:
                complete = False
        for f in fields:
            if f.required and f.encode_name not in value:
                problems.append(f"{path}: missing required key {f.encode_name!r} ({_type_name(f.type)})")
                complete = False
        if complete:
            # Run this config's own rules on what is valid (bad fields back at their defaults),
            # so that e.g. "set epochs or max_steps" is reported along with a type error.
            try:
                partial = msgspec.convert(good, tp)
            except msgspec.ValidationError:
                return
            if isinstance(partial, BaseConfig):
                bad = {k for k in value if k not in good}
                for rel, message in partial.check():
                    if rel.split(".")[0] not in bad:
                        problems.append(f"{_dotted(path, rel)}: {message}")
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        options = _non_none(tp)
        if value is None and len(options) < len(args):
            return
        inner = _strip_annotated(options[0]) if len(options) == 1 else None
        if value is not None and (
            _is_struct_type(inner) or typing.get_origin(inner) in (list, dict, set, tuple)
        ):
            _walk(value, options[0], path, problems, allow_derived)  # X | None: the details of X
            return
    elif origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        if isinstance(value, list) and args:
            for i, item in enumerate(value):
                _walk(item, args[0], join_path(path, i), problems, allow_derived)
            return
    elif origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            try:
                msgspec.convert(key, args[0])
            except msgspec.ValidationError as exc:
                problems.append(_leaf_problem(f"{path} key {key!r}", args[0], key, exc))
            _walk(item, args[1], join_path(path, key), problems, allow_derived)
        return
    try:
        converted = msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        problems.append(_leaf_problem(path, tp, value, exc))
    else:
        _semantic(converted, path, problems, allow_derived)


def _unknown_key(path: str, key: Any, valid: list[str]) -> str:
    hint = _suggest(str(key), valid) if isinstance(key, str) else ""
    listed = ", ".join(valid) if valid else "(none)"
    return f"{path}: unknown key {key!r}{hint}; valid keys: {listed}"


def check_data(
    data: Any, type_: Any, *, path: str = "$", allow_derived: bool = False
) -> tuple[Any, list[str]]:
    """Convert plain ``data`` to ``type_``: (the value, []) when valid, else (None, every
    problem, each starting with its ``$.dotted.path``). The building block of
    :func:`from_dict`, for callers that merge problems from several sources."""
    problems: list[str] = []
    try:
        obj = msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        _walk(data, type_, path, problems, allow_derived)
        if not problems:  # our walk missed what msgspec saw: report msgspec's own words
            problems.append(f"{path}: {exc}")
        return None, problems
    _semantic(obj, path, problems, allow_derived)
    return (None if problems else obj), problems


def from_dict(
    data: dict[str, Any],
    type_: type[T],
    *,
    source: str | None = None,
    path: str = "$",
    allow_derived: bool = False,
) -> T:
    """Build a config of ``type_`` from plain data, or raise one :class:`ConfigError` listing
    every problem (type mismatches, unknown keys with the valid ones, missing keys, failed
    ``check()`` rules), each with its ``$.dotted.path``; ``source`` names the file.

    ``allow_derived`` accepts values in derived fields (a config saved after ``derive``).
    """
    obj, problems = check_data(data, type_, path=path, allow_derived=allow_derived)
    if problems:
        raise ConfigError(problems, source=source)
    return typing.cast(T, obj)


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
    data, problems = _apply(data, overrides, type_)
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


# --- overrides -------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Parse an override's value as a YAML scalar or flow collection: ``2`` -> 2, ``1e-3`` ->
    0.001, ``true``, ``null``, ``[1, 2]``, ``{name: sgd, lr: 0.1}``; anything else stays a string."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text


def split_override(text: str) -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; raises :class:`ConfigError` without ``=``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    return key, raw


class _PathError(Exception):
    pass


def field_type(type_: Any, path: str | Sequence[str]) -> Any:
    """The declared type at dotted ``path`` under ``type_`` (``Any`` inside free-form values).

    Raises :class:`ConfigError` for an unknown path, listing the valid keys where it stopped.
    """
    segments = path.split(".") if isinstance(path, str) else list(path)
    try:
        return _field_type(type_, segments)
    except _PathError as exc:
        raise ConfigError(str(exc)) from None


def _field_type(type_: Any, segments: Sequence[str], root: str = "$") -> Any:
    tp: Any = type_
    here = root
    for seg in segments:
        tp = _strip_annotated(tp)
        if _is_union(tp) and len(_non_none(tp)) == 1:
            tp = _strip_annotated(_non_none(tp)[0])
        if tp is Any:
            return Any
        if _is_struct_type(tp):
            fields = {f.encode_name: f for f in _struct_fields(tp)}
            if seg not in fields:
                raise _PathError(_unknown_key(here, seg, list(fields)))
            tp = fields[seg].type
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        elif typing.get_origin(tp) in (list, tuple) and seg.isdigit():
            args = typing.get_args(tp)
            homogeneous = typing.get_origin(tp) is list or (len(args) == 2 and args[1] is Ellipsis)
            tp = args[0] if homogeneous and args else Any
        else:
            raise _PathError(f"{here}: {_type_name(tp)} has no key {seg!r}")
        here = join_path(here, seg)
    return tp


def typed_value(raw: str, tp: Any) -> Any:
    """Parse an override's text for a field of type ``tp``: YAML-style first, then the raw
    string when the field wants one (``--set model.name=123`` on a ``str`` field stays "123")."""
    parsed = parse_value(raw)
    if tp is Any:
        return parsed
    for candidate in (parsed, raw):
        try:
            msgspec.convert(candidate, tp)
        except (msgspec.ValidationError, TypeError):
            continue
        return candidate
    return parsed  # invalid: validation reports it with its path and the expected type


def set_path(data: dict[str, Any], segments: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``segments`` in nested dicts, creating levels as needed. A key of an
    existing mapping that itself contains dots (``design.space`` keys) matches as a whole."""
    node: Any = data
    rest = list(segments)
    while True:
        if not isinstance(node, dict):
            raise _PathError(f"cannot set {'.'.join(segments)}: {_found(node)} is not a mapping")
        for k in range(len(rest), 0, -1):  # longest existing key first
            key = ".".join(rest[:k])
            if key in node:
                break
        else:
            k, key = 1, rest[0]
        rest = rest[k:]
        if not rest:
            node[key] = value
            return
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]


def _apply(
    data: dict[str, Any], overrides: Sequence[str], type_: Any = None
) -> tuple[dict[str, Any], list[str]]:
    out = copy.deepcopy(data)
    problems: list[str] = []
    for text in overrides:
        try:
            key, raw = split_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        segments = key.split(".")
        value: Any
        if type_ is not None:
            try:
                tp = _field_type(type_, segments)
            except _PathError as exc:
                problems.append(f"--set {text}: {exc}")
                continue
            value = typed_value(raw, tp)
        else:
            value = parse_value(raw)
        try:
            set_path(out, segments, value)
        except _PathError as exc:
            problems.append(f"--set {text}: {exc}")
    return out, problems


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], type_: Any = None) -> dict[str, Any]:
    """Return a copy of ``data`` with ``"a.b.c=value"`` overrides applied.

    With ``type_``, each path must exist in that config type and each value is parsed to the
    field's type; without it, values are parsed as YAML scalars. An override sets the value at
    its path: a mapping value (``train.optimizer={name: sgd, lr: 0.1}``) replaces the whole
    sub-config. Raises :class:`ConfigError` listing every bad override.
    """
    out, problems = _apply(data, overrides, type_)
    if problems:
        raise ConfigError(problems, source="--set")
    return out


# --- roles, hash, diff -----------------------------------------------------------------------


def field_roles(type_: Any) -> dict[str, str]:
    """Dotted path -> ``"stateful"``, ``"stateless"`` or ``"derived"`` for every field of
    ``type_`` and of the configs nested in it. A nested config marked stateless (or derived)
    passes its role to all of its fields."""
    out: dict[str, str] = {}

    def walk(tp: Any, prefix: str, inherited: str | None) -> None:
        for f in _struct_fields(tp):
            path = f"{prefix}{f.encode_name}"
            role = inherited or _role_of(f.type) or "stateful"
            out[path] = role
            inner = _strip_annotated(f.type)
            if _is_union(inner) and len(_non_none(inner)) == 1:
                inner = _strip_annotated(_non_none(inner)[0])
            if _is_struct_type(inner):
                walk(inner, path + ".", role if role != "stateful" else None)

    walk(type_, "", None)
    return out


def _stateful_view(obj: Any) -> Any:
    """Plain data of ``obj`` without its stateless and derived fields, with sets sorted."""
    if isinstance(obj, msgspec.Struct):
        out = {}
        for f in _struct_fields(type(obj)):
            if _role_of(f.type) is None:
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
        if not _same(x, y):
            out.append((prefix or "$", x, y))

    walk(a, b, "")
    return out


def _same(x: Any, y: Any) -> bool:
    if type(x) is not type(y) and not (isinstance(x, (int, float)) and isinstance(y, (int, float))):
        return False
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y
    return bool(x == y)


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
                _field_type(type(cfg), segs)
            except _PathError as exc:
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
            tp = _field_type(type(cfg), dotted.split("."))
            problems.append(_leaf_problem(f"$.{dotted}", tp, value, exc))
    if problems:
        raise ConfigError(problems)
    return cfg


def _replace_path(obj: Any, segments: list[str], value: Any) -> Any:
    fields = {f.encode_name: f for f in _struct_fields(type(obj))}
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
