"""The experiment file: entry point, base config, metric, design, limits; and ``ablator plan``.

::

    exp = load_experiment("examples/digits/experiment.yaml", ["config.train.epochs=2"])
    entry = validate(exp)                 # entry, base config, space/ablations vs the config type
    budget(exp)                           # 24
    trial_spec(exp, 5, entry)             # TrialSpec: config, config_hash, seed, variant, repeat
    print(plan(exp).render())             # the table ``python -m ablator plan`` prints

The full schema is in ``docs/experiment.md``. Every check that can run before training runs
here, and all problems of a file are reported together in one :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import traceback
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from ablator.config import (
    MISSING,
    _apply,
    _field_type,
    _found,
    _PathError,
    _suggest,
    canonical_json,
    check_data,
    config_hash,
    diff,
    from_dict,
    join_path,
    read_data,
    set_path,
    split_override,
    to_dict,
    typed_value,
)
from ablator.errors import AblatorError, ConfigError, EntryPointError
from ablator.pruners import config_problems
from ablator.records import TrialSpec
from ablator.samplers import SAMPLERS, locate, trial_seed
from ablator.space import ExtremePicker, Space, parse_space

Kind = Literal["grid", "random", "quasi_random", "tpe", "ablation"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
BASELINE = "baseline"
MAX_GRID = 10_000_000
"""The largest grid ``validate`` accepts (a larger one is almost surely a mistake)."""
_CHECK_ALL_POINTS = 256
"""Grids up to this size have every point's config validated before anything runs."""


class _Schema(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Metric(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The metric that "best" and the statistics use, and its direction."""

    name: str
    mode: Literal["min", "max"]


class Design(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which trials to run. ``space`` for grid/random/quasi_random/tpe, ``ablations`` (variant
    name -> overrides) for ablation; ``repeats`` seeds per config; ``trials`` the budget of
    random/quasi_random/tpe (repeats included)."""

    kind: Kind
    repeats: int = 1
    seed: int = 0
    ablations: dict[str, dict[str, Any]] = {}
    space: dict[str, Any] = {}
    trials: int | None = None
    # early stopping across trials (ablator.pruners); an ablation takes one only with allow_pruning
    # (a mapping here, parsed by ablator.pruners.parse_pruner: its errors name the field and kind)
    pruner: dict[str, Any] | None = None
    allow_pruning: bool = False


class Limits(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Failure and liveness limits of the claim protocol (see DESIGN.md)."""

    max_attempts: int = 3
    max_takeovers: int = 5
    lease_seconds: float = 120
    heartbeat_seconds: float = 10
    stall_seconds: float = 900


class Resources(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a trial needs from the machine that claims it."""

    gpu: Literal["required", "preferred", "none"] = "preferred"
    min_gpu_memory_mb: int = 0


class Experiment(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An experiment file, schema-checked (see :func:`validate` for the checks against the
    entry's config type)."""

    name: str
    entry: str
    config: dict[str, Any] = {}
    metric: Metric
    design: Design
    limits: Limits = Limits()
    resources: Resources = Resources()
    description: str = ""


# --- entry points ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A resolved entry point: a ModelWrapper subclass (``kind="wrapper"``) or a trial function
    (``kind="function"``), with the config type trials are built from."""

    kind: Literal["wrapper", "function"]
    obj: Any
    config_type: type
    target: str = ""

    def describe(self) -> str:
        what = "ModelWrapper subclass" if self.kind == "wrapper" else "trial function"
        ct = self.config_type
        return f"{self.target} ({what}; config type {ct.__module__}.{ct.__qualname__})"


_ENTRY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)$")


def ensure_cwd_importable() -> None:
    """Put the current directory on ``sys.path`` (as ``python -m`` does), so that an entry like
    ``examples.digits.model:DigitsWrapper`` imports from the project root also through the
    ``ablator`` console script."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def resolve_entry(entry: str) -> Entry:
    """Import ``module:attr`` and find its config type; :class:`EntryPointError` says which
    part failed and what to do."""
    m = _ENTRY.match(entry.strip()) if isinstance(entry, str) else None
    if m is None:
        raise EntryPointError(
            f"entry {entry!r}: expected 'module:attr', e.g. 'examples.digits.model:DigitsWrapper' or 'mypkg.train:trial'"
        )
    module_name, attr = m.groups()
    ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise EntryPointError(
                f"entry {entry!r}: no module named {exc.name!r} (looked in {os.getcwd()} and the installed "
                "packages; run from your project's root, or pip install your package)"
            ) from exc
        raise EntryPointError(f"entry {entry!r}: importing {module_name!r} failed: {_where(exc)}") from exc
    except Exception as exc:
        raise EntryPointError(f"entry {entry!r}: importing {module_name!r} failed: {_where(exc)}") from exc
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise EntryPointError(
                f"entry {entry!r}: {owner!r} has no attribute {part!r}{_suggest(part, names)}"
            )
        obj = getattr(obj, part)
    return _entry_of(obj, entry.strip())


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    loc = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{loc}"


def _entry_of(obj: Any, target: str) -> Entry:
    if isinstance(obj, type):
        config_type = getattr(obj, "config_type", None)
        if config_type is None:
            raise EntryPointError(
                f"entry {target!r}: class {obj.__name__} has no config_type; a ModelWrapper subclass sets "
                "`config_type = MyConfig` (a RunConfig subclass)"
            )
        if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
            raise EntryPointError(
                f"entry {target!r}: {obj.__name__}.config_type must be a config class (a RunConfig "
                f"subclass), found {config_type!r}"
            )
        return Entry(kind="wrapper", obj=obj, config_type=config_type, target=target)
    if callable(obj):
        name = getattr(obj, "__name__", repr(obj))
        try:
            params = list(inspect.signature(obj).parameters.values())
        except (TypeError, ValueError) as exc:
            raise EntryPointError(f"entry {target!r}: cannot read the signature of {name}: {exc}") from exc
        if not params:
            raise EntryPointError(
                f"entry {target!r}: {name}() takes no arguments; write def {name}(config: MyConfig, ctx)"
            )
        try:
            hints = typing.get_type_hints(obj)
        except Exception as exc:
            raise EntryPointError(
                f"entry {target!r}: cannot resolve the annotations of {name}: {exc}"
            ) from exc
        config_type = hints.get(params[0].name)
        if config_type is None:
            raise EntryPointError(
                f"entry {target!r}: the first parameter of {name} has no type annotation; write "
                f"def {name}({params[0].name}: MyConfig, ctx) so ablator knows the config type"
            )
        if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
            raise EntryPointError(
                f"entry {target!r}: the first parameter of {name} is annotated {config_type!r}, which is not "
                "a config class (a RunConfig subclass)"
            )
        return Entry(kind="function", obj=obj, config_type=config_type, target=target)
    raise EntryPointError(
        f"entry {target!r}: {obj!r} is neither a ModelWrapper subclass nor a trial function"
    )


# --- loading ---------------------------------------------------------------------------------


def _schema_problems(exp: Experiment) -> list[str]:
    """Checks that need no config type."""
    out: list[str] = []
    d = exp.design
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", exp.name):
        out.append(f"$.name: use letters, digits, '.', '_' and '-' (it names folders), found {exp.name!r}")
    if not _ENTRY.match(exp.entry.strip()):
        out.append(
            f"$.entry: expected 'module:attr', e.g. 'examples.digits.model:DigitsWrapper', found {exp.entry!r}"
        )
    if not exp.metric.name:
        out.append("$.metric.name: must not be empty")
    if d.repeats < 1:
        out.append(f"$.design.repeats: must be >= 1, found {d.repeats}")
    if d.seed < 0:
        out.append(f"$.design.seed: must be >= 0, found {d.seed}")
    if d.trials is not None and d.trials < 1:
        out.append(f"$.design.trials: must be >= 1, found {d.trials}")
    if d.kind == "ablation":
        if d.space:
            out.append("$.design.space: kind ablation takes `ablations` (variant -> overrides), not a space")
        for name in d.ablations:
            loc = join_path("$.design.ablations", name)
            if name == BASELINE:
                out.append(f"{loc}: 'baseline' is the base config itself; give the variant another name")
            elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
                out.append(f"{loc}: variant names use letters, digits, '.', '_', '+' and '-', found {name!r}")
            elif not d.ablations[name]:
                out.append(f"{loc}: no overrides: the variant would be the baseline")
        if d.trials is not None and d.trials != (1 + len(d.ablations)) * d.repeats:
            out.append(
                f"$.design.trials: an ablation runs (1 + {len(d.ablations)} variants) x {d.repeats} repeats = "
                f"{(1 + len(d.ablations)) * d.repeats} trials; drop `trials` (or change repeats)"
            )
    else:
        if d.ablations:
            out.append(f"$.design.ablations: only kind ablation takes ablations; kind {d.kind} takes a space")
        if not d.space:
            out.append(f"$.design.space: kind {d.kind} needs a space (config path -> choice/range/value)")
        if d.kind != "grid":
            if d.trials is None:
                out.append(f"$.design.trials: kind {d.kind} needs a budget: trials (repeats included)")
            elif d.trials >= 1 and d.repeats >= 1 and d.trials % d.repeats:
                out.append(
                    f"$.design.trials: {d.trials} is not a multiple of repeats ({d.repeats}); every point "
                    "runs all its repeats"
                )
    out += config_problems(d.pruner, d.kind, d.allow_pruning)
    lim = exp.limits
    for fname in ("lease_seconds", "heartbeat_seconds", "stall_seconds"):
        value = getattr(lim, fname)
        if not (value > 0 and math.isfinite(value)):
            out.append(f"$.limits.{fname}: must be a positive number, found {value!r}")
    if lim.heartbeat_seconds > 0 and lim.lease_seconds <= 2 * lim.heartbeat_seconds:
        out.append(
            f"$.limits.lease_seconds: must exceed 2 x heartbeat_seconds ({lim.heartbeat_seconds!r}) so that "
            f"a holder can renew before it fences itself; use at least 3 x, found {lim.lease_seconds!r}"
        )
    if lim.max_attempts < 1:
        out.append(f"$.limits.max_attempts: must be >= 1, found {lim.max_attempts}")
    if lim.max_takeovers < 0:
        out.append(f"$.limits.max_takeovers: must be >= 0, found {lim.max_takeovers}")
    if exp.resources.min_gpu_memory_mb < 0:
        out.append(f"$.resources.min_gpu_memory_mb: must be >= 0, found {exp.resources.min_gpu_memory_mb}")
    return out


def experiment_from_dict(data: dict[str, Any], *, source: str | None = None) -> Experiment:
    """Schema-check plain data as an :class:`Experiment` (no import of the entry point; see
    :func:`validate` for that). Raises :class:`ConfigError` with every problem."""
    exp, problems = check_data(data, Experiment)
    if exp is not None:
        problems = _schema_problems(exp)
    if problems:
        raise ConfigError(problems, source=source)
    return typing.cast(Experiment, exp)


def _set_experiment_override(data: dict[str, Any], segments: list[str], value: Any) -> None:
    # Space keys and ablation override keys are themselves dotted config paths: everything after
    # ``design.space.`` (or ``design.ablations.<variant>.``) is one key.
    if segments[:2] == ["design", "space"] and len(segments) > 2:
        design = data.setdefault("design", {})
        design.setdefault("space", {})[".".join(segments[2:])] = value
    elif segments[:2] == ["design", "ablations"] and len(segments) > 3:
        variants = data.setdefault("design", {}).setdefault("ablations", {})
        variant = variants.setdefault(segments[2], {})
        if not isinstance(variant, dict):
            raise _PathError(f"$.design.ablations.{segments[2]} is {_found(variant)}, not a mapping")
        variant[".".join(segments[3:])] = value
    else:
        set_path(data, segments, value)


def load_experiment(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Experiment:
    """Read an experiment file (YAML/TOML/JSON), apply ``--set`` overrides, check its schema and
    everything checkable against the entry's config type (entry importable, base config, space,
    ablations). Raises :class:`ConfigError` listing every problem.

    Overrides address the file: ``config.train.epochs=2``, ``design.repeats=1``,
    ``design.space.model.dropout={choice: [0.0, 0.5]}``, ``design.ablations.gelu.model.activation=gelu``.
    """
    src = str(path)
    data = read_data(path)
    problems: list[str] = []
    config_overrides: list[tuple[str, str, str]] = []
    for text in overrides:
        try:
            key, raw = split_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        segments = key.split(".")
        if segments[0] == "config" and len(segments) > 1:
            config_overrides.append((text, ".".join(segments[1:]), raw))
            continue
        try:
            tp = _field_type(Experiment, segments)
        except _PathError as exc:
            problems.append(f"--set {text}: {exc}")
            continue
        try:
            _set_experiment_override(data, segments, typed_value(raw, tp))
        except _PathError as exc:
            problems.append(f"--set {text}: {exc}")

    entry: Entry | None = None
    entry_problem: str | None = None
    target = data.get("entry")
    if isinstance(target, str) and _ENTRY.match(target.strip()):
        try:
            entry = resolve_entry(target)
        except EntryPointError as exc:
            entry_problem = f"$.entry: {exc}"
    if config_overrides:
        config = data.get("config")
        if config is None:
            config = data["config"] = {}
        if isinstance(config, dict):
            new, more = _apply(
                config,
                [f"{key}={raw}" for _, key, raw in config_overrides],
                entry.config_type if entry else None,
            )
            data["config"] = new
            problems.extend(p.replace("--set ", "--set config.", 1) for p in more)
        else:
            problems.append(f"$.config: expected a mapping, found {_found(config)}")

    exp, schema = check_data(data, Experiment)
    problems.extend(schema)
    # With a schema problem in one section, still check the others: stand-ins for the broken
    # sections that other checks do not need (metric, limits, ...), and their problems dropped.
    checked, replaced = (exp, set()) if exp is not None else _salvage(data, schema)
    if entry_problem:
        problems.append(entry_problem)
    if checked is not None:
        more = _schema_problems(checked)
        if entry is not None:
            more += _type_problems(checked, entry)
        problems.extend(p for p in more if _section(p) not in replaced)
    elif entry is not None and isinstance(data.get("config"), dict):  # the design is broken
        problems.extend(check_data(data["config"], entry.config_type, path="$.config")[1])
    if problems:
        raise ConfigError(_dedupe(problems), source=f"{src} (with --set overrides)" if overrides else src)
    exp = typing.cast(Experiment, exp)
    if entry is not None:
        _ENTRIES[_exp_key(exp)] = entry
    return exp


_STAND_INS: dict[str, Any] = {
    "name": "unnamed",
    "metric": {"name": "metric", "mode": "min"},
    "limits": {},
    "resources": {},
    "description": "",
}
_SECTION = re.compile(r"^\$\.([A-Za-z_]+)")


def _section(problem: str) -> str | None:
    m = _SECTION.match(problem)
    return m.group(1) if m else None


def _salvage(data: dict[str, Any], problems: list[str]) -> tuple[Experiment | None, set[str]]:
    """An Experiment with stand-ins for the sections that failed the schema (when those are
    sections the other checks do not need), and the names of the replaced sections."""
    fields = {f.encode_name for f in msgspec.structs.fields(Experiment)}
    partial = {k: v for k, v in data.items() if k in fields}
    replaced = {s for s in map(_section, problems) if s is not None}
    replaced |= {k for k in _STAND_INS if k not in partial and k in ("name", "metric")}
    if replaced - set(_STAND_INS):
        return None, replaced
    for key in replaced:
        partial[key] = _STAND_INS[key]
    exp, more = check_data(partial, Experiment)
    return (typing.cast(Experiment, exp) if not more else None), replaced


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- validation against the config type ------------------------------------------------------


@dataclass
class _Resolved:
    entry: Entry
    base: Any  # the base config (a Struct of entry.config_type)
    base_data: dict[str, Any]
    space: Space | None


_ENTRIES: dict[bytes, Entry] = {}
_RESOLVED: dict[tuple[bytes, int], _Resolved] = {}


def _exp_key(exp: Experiment) -> bytes:
    data = msgspec.to_builtins(exp)
    # Design fields added later are left out at their defaults, so that an experiment launched
    # before they existed keeps its hash (a relaunch of it stays a no-op).
    design = data.get("design", {})
    for name, default in (("pruner", None), ("allow_pruning", False)):
        if design.get(name, default) == default:
            design.pop(name, None)
    return canonical_json(data)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, value in overrides.items():
        set_path(out, path.split("."), copy.deepcopy(value))
    return out


def _type_problems(exp: Experiment, entry: Entry) -> list[str]:
    """Everything that needs the config type: base config, space, ablations, grid size."""
    ct = entry.config_type
    out: list[str] = []
    base, problems = check_data(exp.config, ct, path="$.config")
    out.extend(problems)
    d = exp.design
    if d.kind == "ablation":
        out.extend(_ablation_problems(exp, ct, base))
        return out
    space, problems = parse_space(d.space, ct)
    out.extend(problems)
    if space is None:
        if d.kind == "grid":  # the grid rules of the specs that did parse
            for path, spec in d.space.items():
                one, _ = parse_space({path: spec}, ct)
                out.extend(one.grid_problems() if one is not None else [])
        return out
    if d.kind == "grid":
        gp = space.grid_problems()
        out.extend(gp)
        if gp:
            return out
        size = space.grid_size()
        if size > MAX_GRID:
            out.append(
                f"$.design.space: the grid has {size:,} points, more than {MAX_GRID:,}; use random or quasi_random"
            )
            return out
        if d.trials is not None and d.trials != size * d.repeats:
            out.append(
                f"$.design.trials: a grid runs each of its {size} points x {d.repeats} repeats = "
                f"{size * d.repeats} trials; drop `trials` (or change repeats)"
            )
    if base is None:
        return out
    # The space's values must make valid configs together (cross-field rules, e.g. a batch size
    # of 0): check the two corners, and every point of a small grid.
    samples: list[tuple[str, dict[str, Any]]] = [
        ("with every dimension at its first value", space.draw(ExtremePicker(False))),
        ("with every dimension at its last value", space.draw(ExtremePicker(True))),
    ]
    if d.kind == "grid" and space.grid_size() <= _CHECK_ALL_POINTS:
        samples += [(f"at grid point {i}", space.grid_point(i)) for i in range(space.grid_size())]
    seen: set[str] = set()
    for label, overrides in samples:
        _, problems = check_data(_merge(exp.config, overrides), ct)
        for p in problems:
            if p not in seen:
                seen.add(p)
                out.append(f"$.design.space: {label}, the trial config is invalid: {p}")
    return out


def _ablation_problems(exp: Experiment, ct: type, base: Any) -> list[str]:
    out: list[str] = []
    hashes: dict[str, str] = {}
    if base is not None:
        hashes[BASELINE] = config_hash(base)
    for name, overrides in exp.design.ablations.items():
        if name == BASELINE or not overrides:
            continue  # reported by _schema_problems
        vloc = join_path("$.design.ablations", name)
        before = len(out)
        for path, value in overrides.items():
            loc = join_path(vloc, path)
            try:
                tp = _field_type(ct, path.split("."))
            except _PathError as exc:
                out.append(f"{loc}: unknown config path {path!r}: {exc}")
                continue
            _, problems = check_data(value, tp, path=loc)
            out.extend(problems)
        if len(out) > before or base is None:
            continue
        cfg, problems = check_data(_merge(exp.config, overrides), ct)
        out.extend(f"{vloc}: the variant's config is invalid: {p}" for p in problems)
        if cfg is None:
            continue
        h = config_hash(cfg)
        twin = next((other for other, oh in hashes.items() if oh == h), None)
        if twin is not None:
            what = "the baseline" if twin == BASELINE else f"variant {twin!r}"
            out.append(
                f"{vloc}: gives the same config as {what} (its overrides equal the base values or touch "
                "only stateless fields); an ablation variant must change the trial"
            )
        hashes[name] = h
    return out


def validate(exp: Experiment) -> Entry:
    """Import the entry point and check the base config, the space or ablations, and the grid
    size against its config type. Raises :class:`ConfigError` with every problem."""
    problems = _schema_problems(exp)
    try:
        entry = resolve_entry(exp.entry)
    except EntryPointError as exc:
        raise ConfigError([*problems, f"$.entry: {exc}"]) from exc
    problems += _type_problems(exp, entry)
    if problems:
        raise ConfigError(_dedupe(problems))
    _ENTRIES[_exp_key(exp)] = entry
    return entry


def _resolve(exp: Experiment, entry: Entry | None) -> _Resolved:
    key = _exp_key(exp)
    if entry is None:
        entry = _ENTRIES.get(key) or validate(exp)
    cached = _RESOLVED.get((key, id(entry.obj)))
    if cached is not None and cached.entry is entry:
        return cached
    base: Any = from_dict(exp.config, entry.config_type, path="$.config")
    space = None
    if exp.design.kind != "ablation":
        space, problems = parse_space(exp.design.space, entry.config_type)
        if problems:
            raise ConfigError(problems)
    resolved = _Resolved(entry=entry, base=base, base_data=to_dict(base), space=space)
    if len(_RESOLVED) > 32:
        _RESOLVED.clear()
    _RESOLVED[(key, id(entry.obj))] = resolved
    return resolved


def base_config(exp: Experiment, entry: Entry | None = None) -> Any:
    """The base config as an instance of the entry's config type."""
    return _resolve(exp, entry).base


def points(exp: Experiment, entry: Entry | None = None) -> int | None:
    """Distinct configs of one round: grid size, or 1 + number of variants; None for sampled
    designs (random, quasi_random, tpe), whose points are unbounded."""
    d = exp.design
    if d.kind == "ablation":
        return 1 + len(d.ablations)
    if d.kind == "grid":
        space = _resolve(exp, entry).space
        assert space is not None
        return space.grid_size()
    return None


def budget(exp: Experiment, entry: Entry | None = None) -> int:
    """Trials before extensions: grid size x repeats; (1 + variants) x repeats for an ablation;
    ``trials`` for random, quasi_random and tpe."""
    d = exp.design
    n = points(exp, entry)
    if n is not None:
        return n * d.repeats
    if d.trials is None:  # experiment_from_dict refuses this; a hand-built Experiment may not
        raise ConfigError(f"$.design.trials: kind {d.kind} needs a budget: trials (repeats included)")
    return d.trials


def experiment_hash(exp: Experiment) -> str:
    """sha256 of the whole experiment, canonically encoded (a relaunch with the same hash is the
    same experiment)."""
    return hashlib.sha256(b"ablator-experiment-v1\n" + _exp_key(exp)).hexdigest()


# --- trials ----------------------------------------------------------------------------------


def spec_from_overrides(
    exp: Experiment,
    index: int,
    overrides: dict[str, Any],
    repeat: int = 0,
    entry: Entry | None = None,
    *,
    variant: str = "",
) -> TrialSpec:
    """The :class:`TrialSpec` of trial ``index``: the base config with flat ``{path: value}``
    overrides applied (a mapping value replaces the whole sub-config at its path), validated,
    hashed, with the seed derived from (design seed, index, repeat). Adaptive samplers (TPE) use
    it to turn their suggestion into a trial."""
    r = _resolve(exp, entry)
    cfg: Any = from_dict(
        _merge(exp.config, overrides), r.entry.config_type, source=f"trial {index} of {exp.name}"
    )
    return TrialSpec(
        index=index,
        config=to_dict(cfg),
        config_hash=config_hash(cfg),
        seed=trial_seed(exp.design.seed, index, repeat),
        variant=variant,
        repeat=repeat,
        overrides=copy.deepcopy(overrides),
        requires_gpu=exp.resources.gpu == "required",
        min_gpu_memory_mb=exp.resources.min_gpu_memory_mb,
    )


def locate_trial(exp: Experiment, index: int, entry: Entry | None = None) -> tuple[int, int]:
    """Trial ``index`` -> (point, repeat) for this design (see :func:`ablator.samplers.locate`)."""
    d = exp.design
    return locate(d.kind, index, repeats=d.repeats, points=points(exp, entry))


def trial_spec(exp: Experiment, index: int, entry: Entry | None = None) -> TrialSpec:
    """Trial ``index`` of the design, computed alone (a pure function of the experiment and the
    index). Indexes past the budget continue the design (``launch --extend``): more rounds of
    repeats for grid and ablation, more points for random and quasi_random. Not for ``tpe``."""
    d = exp.design
    if d.kind == "tpe":
        raise AblatorError(
            "TPE configs are chosen by the claiming agent from the results so far (ablator.tpe); "
            "trial_spec computes only grid, random, quasi_random and ablation trials"
        )
    r = _resolve(exp, entry)
    point, repeat = locate_trial(exp, index, r.entry)
    if d.kind == "ablation":
        names = [BASELINE, *d.ablations]
        variant = names[point]
        overrides = {} if point == 0 else d.ablations[variant]
        return spec_from_overrides(exp, index, overrides, repeat, r.entry, variant=variant)
    assert r.space is not None
    return spec_from_overrides(exp, index, SAMPLERS[d.kind](r.space, d.seed, point), repeat, r.entry)


# --- plan --------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The trial plan of an experiment: what ``python -m ablator plan`` prints."""

    experiment: Experiment
    entry: Entry
    budget: int
    base_config: dict[str, Any]
    base_hash: str
    trials: list[TrialSpec]
    points: list[int]
    diffs: list[list[tuple[str, Any, Any]]]
    source: str | None = None
    space: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        exp = self.experiment
        ct = self.entry.config_type
        return {
            "valid": True,
            "name": exp.name,
            "source": self.source,
            "experiment_hash": experiment_hash(exp),
            "entry": {
                "target": self.entry.target,
                "kind": self.entry.kind,
                "config_type": f"{ct.__module__}.{ct.__qualname__}",
            },
            "metric": msgspec.to_builtins(exp.metric),
            "design": {
                "kind": exp.design.kind,
                "repeats": exp.design.repeats,
                "seed": exp.design.seed,
                "trials": exp.design.trials,
                "variants": list(exp.design.ablations),
                "space": [{"path": p, "spec": s} for p, s in self.space],
            },
            "budget": self.budget,
            "shown": len(self.trials),
            "base": {"config_hash": self.base_hash, "config": self.base_config},
            "trials": [
                {
                    "index": t.index,
                    "seed": t.seed,
                    "variant": t.variant,
                    "point": p,
                    "repeat": t.repeat,
                    "config_hash": t.config_hash,
                    "overrides": t.overrides,
                    "diff": [{"path": k, "base": _json_value(a), "value": _json_value(b)} for k, a, b in d],
                    "config": t.config,
                }
                for t, p, d in zip(self.trials, self.points, self.diffs, strict=True)
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=True)

    def render(self) -> str:
        exp = self.experiment
        d = exp.design
        lines = [f"{exp.name}" + (f"  ({self.source})" if self.source else "")]
        if exp.description:
            lines.append(f"  {exp.description}")
        lim = exp.limits
        info = [
            ("entry", self.entry.describe()),
            ("metric", f"{exp.metric.name} ({exp.metric.mode})"),
            ("design", _design_line(exp, self.budget)),
            ("base", f"config hash {self.base_hash[:12]}"),
            (
                "limits",
                f"max_attempts {lim.max_attempts}, max_takeovers {lim.max_takeovers}, lease {lim.lease_seconds:g} s, "
                f"heartbeat {lim.heartbeat_seconds:g} s, stall {lim.stall_seconds:g} s; gpu {exp.resources.gpu}",
            ),
        ]
        lines += [f"  {k:<7} {v}" for k, v in info]
        if self.space:
            lines.append("  space")
            width = max(len(p) for p, _ in self.space)
            lines += [f"    {p:<{width}}  {s}" for p, s in self.space]
        lines.append("")
        if d.kind == "tpe":
            lines.append(
                f"TPE chooses each trial's config from the results so far, so the plan has no fixed table: "
                f"{self.budget} trials ({self.budget // d.repeats} configs x {d.repeats} repeats)."
            )
            return "\n".join(lines)
        label = "variant" if d.kind == "ablation" else "point"
        rows = [["index", "seed", label, "repeat", "config hash", "differs from the base config"]]
        for t, p, df in zip(self.trials, self.points, self.diffs, strict=True):
            rows.append(
                [
                    str(t.index),
                    str(t.seed),
                    t.variant if d.kind == "ablation" else str(p),
                    str(t.repeat),
                    t.config_hash[:12],
                    "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in df) or "-",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        right = {0, 1, 3} if d.kind == "ablation" else {0, 1, 2, 3}
        for r in rows:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            ]
            lines.append("  ".join([*cells, r[5]]).rstrip())
        shown = len(self.trials)
        if shown < self.budget:
            lines.append(f"... {self.budget - shown} more trials (--limit N shows N)")
        distinct = len({t.config_hash for t in self.trials})
        lines.append("")
        lines.append(f"valid: {self.budget} trials; {shown} shown, {distinct} distinct configs among them.")
        return "\n".join(lines)


def _design_line(exp: Experiment, n: int) -> str:
    d = exp.design
    reps = f"{d.repeats} repeat{'s' if d.repeats != 1 else ''}"
    if d.kind == "ablation":
        v = len(d.ablations)
        what = f"ablation: baseline + {v} variant{'s' if v != 1 else ''}, {reps} each"
    elif d.kind == "grid":
        what = f"grid: {n // d.repeats} points x {reps}"
    else:
        what = f"{d.kind}: {n // d.repeats} points x {reps}"
    return f"{what} = {n} trials, seed {d.seed}"


def _json_value(v: Any) -> Any:
    return None if v is MISSING else v


def _show(v: Any) -> str:
    if v is MISSING:
        return "(unset)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):  # the table is for reading; --json has the exact values
        return repr(v) if v.is_integer() and abs(v) < 1e6 else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "))
    return repr(v)


def plan(
    path_or_exp: str | os.PathLike[str] | Experiment,
    overrides: Sequence[str] = (),
    *,
    limit: int | None = None,
) -> Plan:
    """Validate an experiment (file or :class:`Experiment`) and compute its trials (the first
    ``limit`` only, when given). Raises :class:`ConfigError` listing every problem.

    >>> print(ablator.plan("examples/digits/experiment.yaml").render())
    """
    if isinstance(path_or_exp, Experiment):
        if overrides:
            raise ConfigError("plan(): overrides apply to a file; pass a path, or change the Experiment")
        exp, source = path_or_exp, None
        entry = validate(exp)
    else:
        source = str(path_or_exp)
        exp = load_experiment(path_or_exp, overrides)
        entry = _ENTRIES.get(_exp_key(exp)) or validate(exp)
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, found {limit}")
    r = _resolve(exp, entry)
    n = budget(exp, entry)
    trials: list[TrialSpec] = []
    pts: list[int] = []
    if exp.design.kind != "tpe":
        for i in range(n if limit is None else min(n, limit)):
            trials.append(trial_spec(exp, i, entry))
            pts.append(locate_trial(exp, i, entry)[0])
    base_hash = config_hash(r.base)
    return Plan(
        experiment=exp,
        entry=entry,
        budget=n,
        base_config=r.base_data,
        base_hash=base_hash,
        trials=trials,
        points=pts,
        diffs=[diff(r.base_data, t.config) for t in trials],
        source=source,
        space=r.space.describe() if r.space is not None else [],
    )


_TEXT_LIMIT = 100


def cli_plan(args: Any) -> int:
    """``python -m ablator plan EXPERIMENT [--json] [--limit N] [--set k=v ...]``."""
    overrides = list(getattr(args, "overrides", None) or ())
    limit = args.limit
    try:
        if args.json:
            p = plan(args.experiment, overrides, limit=limit)
            print(p.to_json())
            return 0
        p = plan(args.experiment, overrides, limit=_TEXT_LIMIT if limit is None else limit)
    except ConfigError as exc:
        if args.json:  # machine-readable problems on stdout too; the message goes to stderr
            print(json.dumps({"valid": False, "source": exc.source, "problems": exc.problems}, indent=2))
        raise
    print(p.render())
    return 0


__all__ = [
    "BASELINE",
    "KINDS",
    "Design",
    "Entry",
    "Experiment",
    "Limits",
    "Metric",
    "Plan",
    "Resources",
    "base_config",
    "budget",
    "cli_plan",
    "ensure_cwd_importable",
    "experiment_from_dict",
    "experiment_hash",
    "load_experiment",
    "locate_trial",
    "plan",
    "points",
    "resolve_entry",
    "spec_from_overrides",
    "trial_spec",
    "validate",
]
