"""The experiment file: entry point, base config, metric, design, limits; and its trials.

::

    exp = load_experiment("examples/digits/experiment.yaml", ["config.train.epochs=2"])
    entry = validate(exp)                 # entry, base config, space/ablations vs the config type
    budget(exp, entry)                    # 24
    trial_spec(exp, 5, entry)             # TrialSpec: config, config_hash, seed, variant, repeat
    bound = bind(exp, entry)              # base config and space computed once, for many trials
    bound.trial_spec(6)

The full schema is in ``docs/experiment.md``. Every check that can run before training runs
here, and all problems of a file are reported together in one :class:`ConfigError`. Entry
points are resolved in ``ablator.entrypoint``; ``ablator plan`` lives in ``ablator.planning``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ablator import _typing_utils as tu
from ablator._typing_utils import found, join_path
from ablator.config import canonical_json, config_hash, to_dict
from ablator.entrypoint import ENTRY_PATTERN, EntryPoint, resolve_entry
from ablator.errors import AblatorError, ConfigError, EntryPointError
from ablator.formats import read_data
from ablator.overrides import apply_collecting, set_path
from ablator.pruners import config_problems
from ablator.records import TrialSpec
from ablator.samplers import SAMPLERS, locate, repeat_seed, trial_seed
from ablator.space import ExtremePicker, Space, parse_space
from ablator.validation import check_data, from_dict

Kind = Literal["grid", "random", "quasi_random", "tpe", "ablation"]
BASELINE = "baseline"
MAX_TRIALS = 10_000_000
"""The largest budget ablator accepts: design trials, a grid's size, repeats, and the budget with
every extension (a larger one is almost surely a typo, and create-once records cannot undo it)."""
MAX_GRID = MAX_TRIALS
"""The largest grid ``validate`` accepts."""
_CHECK_ALL_POINTS = 256
"""Grids up to this size have every point's config validated before anything runs."""


class _Schema(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Metric(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The metric that "best" and the statistics use, and its direction."""

    name: str
    mode: Literal["min", "max"]
    # the range the metric can take, e.g. [0, 1] for an accuracy: figures clip drawn bands to it
    bounds: tuple[float, float] | None = None


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
    # common random numbers: repeat r runs the same seed in every variant/point (None: yes for
    # ablations, no otherwise), so that analysis can compare variants seed by seed
    paired_seeds: bool | None = None

    def seeds_paired(self) -> bool:
        """Whether repeat ``r`` uses one seed across the design (see ``paired_seeds``)."""
        return self.kind == "ablation" if self.paired_seeds is None else self.paired_seeds


class Limits(_Schema, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Failure and liveness limits of the claim protocol (see ``docs/protocol.md``). The one
    place their defaults are written: :class:`ablator.lease.LeaseLimits` takes them from here."""

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


# --- loading ---------------------------------------------------------------------------------


def _schema_problems(exp: Experiment) -> list[str]:
    """Checks that need no config type."""
    out: list[str] = []
    d = exp.design
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", exp.name):
        out.append(f"$.name: use letters, digits, '.', '_' and '-' (it names folders), found {exp.name!r}")
    if not ENTRY_PATTERN.match(exp.entry.strip()):
        out.append(
            f"$.entry: expected 'module:attr', e.g. 'examples.digits.model:DigitsWrapper', found {exp.entry!r}"
        )
    if not exp.metric.name:
        out.append("$.metric.name: must not be empty")
    if exp.metric.bounds is not None and not exp.metric.bounds[0] < exp.metric.bounds[1]:
        out.append(f"$.metric.bounds: expected [low, high] with low < high, found {list(exp.metric.bounds)}")
    if d.repeats < 1:
        out.append(f"$.design.repeats: must be >= 1, found {d.repeats}")
    elif d.repeats > MAX_TRIALS:
        out.append(
            f"$.design.repeats: at most {MAX_TRIALS:,} (a larger budget is almost surely a typo), found {d.repeats:,}"
        )
    if d.trials is not None and d.trials > MAX_TRIALS:
        out.append(
            f"$.design.trials: at most {MAX_TRIALS:,} (a larger budget is almost surely a typo; split a bigger "
            f"study into several experiments), found {d.trials:,}"
        )
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
    out += _limits_problems(exp.limits)
    out += _resources_problems(exp.resources)
    return out


def _limits_problems(lim: Limits) -> list[str]:
    out: list[str] = []
    seconds = {
        "lease_seconds": lim.lease_seconds,
        "heartbeat_seconds": lim.heartbeat_seconds,
        "stall_seconds": lim.stall_seconds,
    }
    for fname, value in seconds.items():
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
    return out


def _resources_problems(res: Resources) -> list[str]:
    if res.min_gpu_memory_mb < 0:
        return [f"$.resources.min_gpu_memory_mb: must be >= 0, found {res.min_gpu_memory_mb}"]
    return []


def experiment_from_dict(data: dict[str, Any], *, source: str | None = None) -> Experiment:
    """Schema-check plain data as an :class:`Experiment` (no import of the entry point; see
    :func:`validate` for that). Raises :class:`ConfigError` with every problem."""
    exp, problems = check_data(data, Experiment)
    if exp is not None:
        problems = _schema_problems(exp)
    else:
        problems += _section_problems(data, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return typing.cast(Experiment, exp)


def _section_problems(data: dict[str, Any], known: list[str]) -> list[str]:
    """The rules of ``limits`` and ``resources`` when the whole experiment did not convert: a
    type error elsewhere (say in ``design``) must not hide them (the list stays complete)."""
    out: list[str] = []
    for key, type_, rules in (
        ("limits", Limits, _limits_problems),
        ("resources", Resources, _resources_problems),
    ):
        section, _ = check_data(data.get(key) or {}, type_, path=f"$.{key}")
        if section is not None:
            out += [p for p in rules(section) if p not in known]
    return out


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
            raise tu.PathError(f"$.design.ablations.{segments[2]} is {found(variant)}, not a mapping")
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
    return load_validated(path, overrides)[0]


def load_validated(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> tuple[Experiment, EntryPoint]:
    """:func:`load_experiment`, and the entry point it resolved while checking (what
    :func:`validate` would return, without checking everything a second time)."""
    src = str(path)
    # ``config.<path>=v`` is typed against the entry's config type (resolved below); the rest
    # against the experiment's schema, with space and ablation keys set whole.
    config_overrides: list[str] = []
    file_overrides: list[str] = []
    for text in overrides:
        key, _, raw = text.partition("=")
        segments = key.strip().split(".")
        if segments[0] == "config" and len(segments) > 1 and "=" in text:
            config_overrides.append(f"{'.'.join(segments[1:])}={raw}")
        else:
            file_overrides.append(text)  # a malformed one is reported by apply_collecting
    data, problems = apply_collecting(
        read_data(path), file_overrides, Experiment, setter=_set_experiment_override
    )

    entry: EntryPoint | None = None
    entry_problem: str | None = None
    target = data.get("entry")
    if isinstance(target, str) and ENTRY_PATTERN.match(target.strip()):
        try:
            entry = resolve_entry(target)
        except EntryPointError as exc:
            entry_problem = f"$.entry: {exc}"
    if config_overrides:
        config = data.get("config")
        if config is None:
            config = data["config"] = {}
        if isinstance(config, dict):
            new, more = apply_collecting(config, config_overrides, entry.config_type if entry else None)
            data["config"] = new
            problems.extend(p.replace("--set ", "--set config.", 1) for p in more)
        else:
            problems.append(f"$.config: expected a mapping, found {found(config)}")

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
    else:  # the design is broken
        if entry is not None and isinstance(data.get("config"), dict):
            problems.extend(check_data(data["config"], entry.config_type, path="$.config")[1])
        problems.extend(_section_problems(data, problems))
    if problems:
        raise ConfigError(_dedupe(problems), source=f"{src} (with --set overrides)" if overrides else src)
    # No problems: the entry matched the pattern and resolved (else its problem is listed).
    assert entry is not None
    return typing.cast(Experiment, exp), entry


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


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, value in overrides.items():
        set_path(out, path.split("."), copy.deepcopy(value))
    return out


def _type_problems(exp: Experiment, entry: EntryPoint) -> list[str]:
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
                tp = tu.field_type(ct, path.split("."))
            except tu.PathError as exc:
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


def validate(exp: Experiment) -> EntryPoint:
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
    return entry


def experiment_hash(exp: Experiment) -> str:
    """sha256 of the whole experiment, canonically encoded (a relaunch with the same hash is the
    same experiment)."""
    return data_hash(msgspec.to_builtins(exp))


def data_hash(data: dict[str, Any]) -> str:
    """:func:`experiment_hash` of an experiment's plain data as ``launch`` stores it (JSON
    round trips keep it: an int stays an int, so ``experiment.json`` can be checked against
    its hash without parsing it into an :class:`Experiment` first)."""
    data = copy.deepcopy(data)
    # Design fields added later are left out at their defaults, so that an experiment launched
    # before they existed keeps its hash (a relaunch of it stays a no-op).
    design = data.get("design", {})
    for name, default in (("pruner", None), ("allow_pruning", False), ("paired_seeds", None)):
        if design.get(name, default) == default:
            design.pop(name, None)
    metric = data.get("metric", {})
    if metric.get("bounds") is None:
        metric.pop("bounds", None)
    return hashlib.sha256(b"ablator-experiment-v1\n" + canonical_json(data)).hexdigest()


# --- trials ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundExperiment:
    """An experiment bound to its entry point, with the base config and the space computed once:
    hold one to compute many trials (``plan`` does). The module functions of the same names
    (:func:`budget`, :func:`trial_spec`, ...) bind afresh on each call."""

    experiment: Experiment
    entry: EntryPoint
    base: Any
    """The base config, an instance of ``entry.config_type``."""
    base_data: dict[str, Any]
    """The base config as plain data (``to_dict(base)``)."""
    space: Space | None
    """The parsed space (None for an ablation)."""

    def points(self) -> int | None:
        """Distinct configs of one round (see :func:`points`)."""
        d = self.experiment.design
        if d.kind == "ablation":
            return 1 + len(d.ablations)
        if d.kind == "grid" and self.space is not None:
            return self.space.grid_size()
        return None

    def budget(self) -> int:
        """Trials before extensions (see :func:`budget`)."""
        return _budget(self.experiment, self.points())

    def locate(self, index: int) -> tuple[int, int]:
        """Trial ``index`` -> (point, repeat) for this design (see :func:`ablator.samplers.locate`)."""
        d = self.experiment.design
        return locate(d.kind, index, repeats=d.repeats, points=self.points())

    def spec_from_overrides(
        self, index: int, overrides: dict[str, Any], repeat: int = 0, *, variant: str = ""
    ) -> TrialSpec:
        """The trial spec of the base config with ``overrides`` (see :func:`spec_from_overrides`)."""
        exp = self.experiment
        cfg: Any = from_dict(
            _merge(exp.config, overrides), self.entry.config_type, source=f"trial {index} of {exp.name}"
        )
        return TrialSpec(
            index=index,
            config=to_dict(cfg),
            config_hash=config_hash(cfg),
            seed=repeat_seed(exp.design.seed, repeat)
            if exp.design.seeds_paired()
            else trial_seed(exp.design.seed, index, repeat),
            variant=variant,
            repeat=repeat,
            overrides=copy.deepcopy(overrides),
            requires_gpu=exp.resources.gpu == "required",
            min_gpu_memory_mb=exp.resources.min_gpu_memory_mb,
        )

    def trial_spec(self, index: int) -> TrialSpec:
        """Trial ``index`` of the design (see :func:`trial_spec`)."""
        d = self.experiment.design
        _refuse_tpe(self.experiment)
        point, repeat = self.locate(index)
        if d.kind == "ablation":
            names = [BASELINE, *d.ablations]
            variant = names[point]
            overrides = {} if point == 0 else d.ablations[variant]
            return self.spec_from_overrides(index, overrides, repeat, variant=variant)
        assert self.space is not None  # parsed for every kind but ablation
        return self.spec_from_overrides(index, SAMPLERS[d.kind](self.space, d.seed, point), repeat)


def _refuse_tpe(exp: Experiment) -> None:
    if exp.design.kind == "tpe":
        raise AblatorError(
            "TPE configs are chosen by the claiming agent from the results so far (ablator.tpe); "
            "trial_spec computes only grid, random, quasi_random and ablation trials"
        )


def bind(exp: Experiment, entry: EntryPoint | None = None) -> BoundExperiment:
    """Bind ``exp`` to its entry point (``validate`` runs when ``entry`` is None) and compute
    the base config and the space. Raises :class:`ConfigError` when either is invalid."""
    if entry is None:
        entry = validate(exp)
    base: Any = from_dict(exp.config, entry.config_type, path="$.config")
    space = None
    if exp.design.kind != "ablation":
        space, problems = parse_space(exp.design.space, entry.config_type)
        if problems:
            raise ConfigError(problems)
    return BoundExperiment(experiment=exp, entry=entry, base=base, base_data=to_dict(base), space=space)


def points(exp: Experiment, entry: EntryPoint | None = None) -> int | None:
    """Distinct configs of one round: grid size, or 1 + number of variants; None for sampled
    designs (random, quasi_random, tpe), whose points are unbounded."""
    if exp.design.kind != "grid":  # no need to bind: the count is in the file
        return 1 + len(exp.design.ablations) if exp.design.kind == "ablation" else None
    return bind(exp, entry).points()


def _budget(exp: Experiment, n: int | None) -> int:
    d = exp.design
    if n is not None:
        return n * d.repeats
    if d.trials is None:  # experiment_from_dict refuses this; a hand-built Experiment may not
        raise ConfigError(f"$.design.trials: kind {d.kind} needs a budget: trials (repeats included)")
    return d.trials


def budget(exp: Experiment, entry: EntryPoint | None = None) -> int:
    """Trials before extensions: grid size x repeats; (1 + variants) x repeats for an ablation;
    ``trials`` for random, quasi_random and tpe."""
    return _budget(exp, points(exp, entry))


def spec_from_overrides(
    exp: Experiment,
    index: int,
    overrides: dict[str, Any],
    repeat: int = 0,
    entry: EntryPoint | None = None,
    *,
    variant: str = "",
) -> TrialSpec:
    """The :class:`TrialSpec` of trial ``index``: the base config with flat ``{path: value}``
    overrides applied (a mapping value replaces the whole sub-config at its path), validated,
    hashed, with the seed derived from (design seed, index, repeat). Adaptive samplers (TPE) use
    it to turn their suggestion into a trial."""
    return bind(exp, entry).spec_from_overrides(index, overrides, repeat, variant=variant)


def trial_spec(exp: Experiment, index: int, entry: EntryPoint | None = None) -> TrialSpec:
    """Trial ``index`` of the design, computed alone (a pure function of the experiment and the
    index). Indexes past the budget continue the design (``launch --extend``): more rounds of
    repeats for grid and ablation, more points for random and quasi_random. Not for ``tpe``."""
    _refuse_tpe(exp)  # before binding: a tpe design has no trial to compute however it binds
    return bind(exp, entry).trial_spec(index)


__all__ = [
    "BASELINE",
    "BoundExperiment",
    "Design",
    "Experiment",
    "Limits",
    "Metric",
    "Resources",
    "bind",
    "budget",
    "data_hash",
    "experiment_from_dict",
    "experiment_hash",
    "load_experiment",
    "load_validated",
    "points",
    "spec_from_overrides",
    "trial_spec",
    "validate",
]
