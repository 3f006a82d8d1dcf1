"""Search spaces over dotted config paths, validated against the config type.

A space maps config paths to specs (``docs/experiment.md`` has the full reference)::

    model.dropout:      {choice: [0.0, 0.2, 0.5]}
    train.optimizer.lr: {range: [1.0e-4, 1.0e-2], log: true}        # continuous, log-uniform
    model.hidden:       {range: [16, 256], log: true, int: true}    # integers
    train.batch_size:   {range: [32, 128], step: 32}                # 32, 64, 96, 128
    model.width:        {range: [0.5, 2.0], bins: 4}                # 0.5, 1.0, 1.5, 2.0
    train.epochs:       {value: 3}                                  # fixed override
    train.optimizer:                                                # conditional sub-spaces
      choice:
        - {name: sgd, lr: {range: [1.0e-3, 1.0e-1], log: true}, args: {momentum: {choice: [0.0, 0.9]}}}
        - {name: adam, lr: {range: [1.0e-4, 1.0e-2], log: true}}

A *group* is a mapping that is not a spec (it has none of the keys ``choice``, ``range``,
``value``): its plain values are fixed, its spec values are sub-dimensions, and when it is drawn
it **replaces** the whole value at its path (fields it leaves out take the type's defaults, not
the base config's: the base's ``args: {betas: ...}`` must not leak into an SGD option).

Samplers consume a :class:`Space` through :meth:`Space.draw` (a :class:`Picker` chooses each
dimension in a fixed pre-order; conditional dimensions are drawn only when their option is)
or through :meth:`Space.grid_point` (mixed radix over the grid, each point exactly once).
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from ablator import _typing_utils as tu
from ablator._typing_utils import found, join_path, suggest, type_name
from ablator.config import canonical_json
from ablator.errors import ConfigError
from ablator.overrides import set_path
from ablator.validation import check_data

SPEC_KEYS = {"choice": ("choice",), "range": ("range", "log", "step", "bins", "int"), "value": ("value",)}
"""The keys a spec may have, by the key that makes it a spec."""


def tidy(value: float) -> float:
    """Round a generated float to 12 significant digits: ``0.1 + 2 * 0.1`` becomes ``0.3``, and a
    libm that differs in the last bit of ``exp`` on another machine gives the same config hash."""
    if not math.isfinite(value):
        return value
    return float(f"{value:.12g}")


@dataclass(frozen=True)
class Range:
    """A numeric dimension: uniform (or log-uniform) on ``[lo, hi]``; with ``step`` (an additive
    step, or a multiplicative factor when ``log``) or ``bins`` (that many evenly spaced points,
    ends included) it is discrete. ``integer`` ranges draw ints."""

    name: str
    path: str
    lo: float
    hi: float
    log: bool = False
    step: float | None = None
    bins: int | None = None
    integer: bool = False
    coord: int = 0
    loc: str = ""  # where the spec is in the experiment file, for messages

    def grid_values(self) -> list[Any] | None:
        """The discrete values (for grids), or None for a continuous float range."""
        lo, hi = self.lo, self.hi
        if self.bins is not None:
            n = self.bins
            if n == 1 or lo == hi:
                raw = [lo]
            elif self.log:
                raw = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
            else:
                raw = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        elif self.step is not None:
            if self.log:
                n = math.floor(math.log(hi / lo) / math.log(self.step) + 1e-9) + 1 if hi > lo else 1
                raw = [lo * self.step**i for i in range(n)]
            else:
                n = math.floor((hi - lo) / self.step + 1e-9) + 1
                raw = [lo + i * self.step for i in range(n)]
        elif self.integer and not self.log:
            return list(range(int(lo), int(hi) + 1))
        else:
            return None
        if self.integer:
            out: list[Any] = []
            for v in raw:
                iv = round(v)
                if iv not in out:
                    out.append(iv)
            return out
        return [tidy(v) for v in raw]

    def from_unit(self, u: float) -> Any:
        """Map ``u`` in [0, 1) to a value: uniform over the discrete values, else (log-)uniform."""
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        values = self.grid_values()
        if values is not None:
            return values[min(int(u * len(values)), len(values) - 1)]
        lo, hi = self.lo, self.hi
        if self.integer:  # log int range without step/bins: P(k) ~ log((k + 1) / k)
            x = math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo)))
            return int(min(max(math.floor(x), lo), hi))
        if self.log:
            return tidy(min(max(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))), lo), hi))
        return tidy(lo + u * (hi - lo))

    def describe(self) -> str:
        parts = [f"range [{_num(self.lo)}, {_num(self.hi)}]"]
        if self.log:
            parts.append("log")
        if self.integer:
            parts.append("int")
        if self.step is not None:
            parts.append(f"{'factor' if self.log else 'step'} {_num(self.step)}")
        if self.bins is not None:
            parts.append(f"{self.bins} bins")
        return " ".join(parts)


@dataclass(frozen=True)
class Group:
    """A mapping with fixed parts (``template``) and sub-dimensions at paths relative to it;
    drawn, it becomes one plain value (the template with every sub-dimension's value set)."""

    template: Any
    dims: tuple[Dim, ...] = ()
    label: str = ""

    def describe(self) -> str:
        if not self.dims:
            return _short(self.template)
        inner = ", ".join(f"{d.path}: {d.describe()}" for d in self.dims)
        return f"{self.label or _short(self.template)} {{{inner}}}"


@dataclass(frozen=True)
class Choice:
    """A categorical dimension; each option is a plain value or a :class:`Group`."""

    name: str
    path: str
    options: tuple[Any, ...]
    coord: int = 0

    def labels(self) -> list[str]:
        """Short names of the options (a group's ``name`` field, else its position)."""
        return [o.label if isinstance(o, Group) else _short(o) for o in self.options]

    def describe(self) -> str:
        shown = [o.describe() if isinstance(o, Group) else _short(o) for o in self.options]
        if len(self.options) == 1 and isinstance(self.options[0], Group):
            return shown[0]
        return "choice [" + ", ".join(shown) + "]"


@dataclass(frozen=True)
class Fixed:
    """A fixed override (``{value: x}``)."""

    name: str
    path: str
    value: Any

    def describe(self) -> str:
        return f"value {_short(self.value)}"


Dim = Range | Choice | Fixed


class Picker(Protocol):
    """How a sampler chooses: :meth:`Space.draw` asks it once per active dimension, in a fixed
    pre-order. ``dim.name`` is unique in the space (conditional dimensions are named
    ``path[option].subpath``), ``dim.coord`` is a stable coordinate number (for Sobol)."""

    def choose(self, dim: Choice) -> int: ...

    def number(self, dim: Range) -> Any: ...


class UnitPicker:
    """A :class:`Picker` from a function ``dim -> u in [0, 1)`` (random, quasi-random)."""

    def __init__(self, unit: Callable[[Range | Choice], float]) -> None:
        self.unit = unit

    def choose(self, dim: Choice) -> int:
        n = len(dim.options)
        return min(int(self.unit(dim) * n), n - 1)

    def number(self, dim: Range) -> Any:
        return dim.from_unit(self.unit(dim))


class ExtremePicker:
    """Picks every dimension's first (or last) value: the corners used to validate a space."""

    def __init__(self, last: bool) -> None:
        self.last = last

    def choose(self, dim: Choice) -> int:
        return len(dim.options) - 1 if self.last else 0

    def number(self, dim: Range) -> Any:
        values = dim.grid_values()
        if values is not None:
            return values[-1 if self.last else 0]
        return dim.from_unit(1.0 if self.last else 0.0)


@dataclass(frozen=True)
class Space:
    """A validated search space: dimensions at absolute dotted config paths."""

    dims: tuple[Dim, ...] = ()
    n_coords: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.dims)

    # -- samplers ---------------------------------------------------------------------------

    def draw(self, picker: Picker) -> dict[str, Any]:
        """One point as flat overrides ``{path: value}``; dimensions drawn in pre-order."""
        return {d.path: _draw(d, picker) for d in self.dims}

    def grid_size(self) -> int:
        """The number of grid points (every dimension discrete; raises otherwise)."""
        return _grid_size(self.dims)

    def grid_point(self, index: int) -> dict[str, Any]:
        """Grid point ``index`` in ``[0, grid_size())``: mixed radix, the last path fastest."""
        size = self.grid_size()
        if not 0 <= index < size:
            raise ConfigError(f"grid point {index} out of range: the grid has {size} points")
        return dict(zip((d.path for d in self.dims), _decode(self.dims, index), strict=True))

    def grid_problems(self) -> list[str]:
        """Why this space is not a finite grid (a float range without step or bins)."""
        out: list[str] = []
        for d in _all_dims(self.dims):
            if isinstance(d, Range) and d.grid_values() is None:
                how = "a factor (step) or bins" if d.log else "a step or bins"
                out.append(f"{d.loc or d.name}: a grid needs {how} for a continuous range ({d.describe()})")
        return out

    def describe(self) -> list[tuple[str, str]]:
        """(path, description) for each dimension, for the plan."""
        return [(d.path, d.describe()) for d in self.dims]


def _all_dims(dims: Sequence[Dim]) -> Iterator[Dim]:
    for d in dims:
        yield d
        if isinstance(d, Choice):
            for o in d.options:
                if isinstance(o, Group):
                    yield from _all_dims(o.dims)


def _draw(d: Dim, picker: Picker) -> Any:
    if isinstance(d, Fixed):
        return copy.deepcopy(d.value)
    if isinstance(d, Range):
        return picker.number(d)
    k = picker.choose(d) if len(d.options) > 1 else 0
    option = d.options[k]
    if isinstance(option, Group):
        return _assemble(option, {sub.path: _draw(sub, picker) for sub in option.dims})
    return copy.deepcopy(option)


def _assemble(group: Group, values: dict[str, Any]) -> Any:
    out = copy.deepcopy(group.template)
    for path, value in values.items():
        set_path(out, path.split("."), value)
    return out


def _dim_size(d: Dim) -> int:
    if isinstance(d, Fixed):
        return 1
    if isinstance(d, Range):
        values = d.grid_values()
        if values is None:
            raise ConfigError(f"{d.name}: a grid needs a step or bins for a continuous range")
        return len(values)
    return sum(_grid_size(o.dims) if isinstance(o, Group) else 1 for o in d.options)


def _grid_size(dims: Sequence[Dim]) -> int:
    return math.prod(_dim_size(d) for d in dims)


def _decode(dims: Sequence[Dim], index: int) -> list[Any]:
    values: list[Any] = [None] * len(dims)
    for pos in range(len(dims) - 1, -1, -1):
        size = _dim_size(dims[pos])
        index, digit = divmod(index, size)
        values[pos] = _dim_value(dims[pos], digit)
    return values


def _dim_value(d: Dim, digit: int) -> Any:
    if isinstance(d, Fixed):
        return copy.deepcopy(d.value)
    if isinstance(d, Range):
        values = d.grid_values()
        assert values is not None  # _dim_size refused it already
        return values[digit]
    for option in d.options:
        size = _grid_size(option.dims) if isinstance(option, Group) else 1
        if digit < size:
            if isinstance(option, Group):
                sub = _decode(option.dims, digit)
                return _assemble(option, dict(zip((s.path for s in option.dims), sub, strict=True)))
            return copy.deepcopy(option)
        digit -= size
    raise AssertionError("digit beyond the choice's size")  # pragma: no cover


# --- parsing and validation ------------------------------------------------------------------


def is_spec(value: Any) -> bool:
    """A mapping with ``choice``, ``range`` or ``value`` is a spec; other mappings are groups."""
    return isinstance(value, dict) and any(k in value for k in SPEC_KEYS)


class _Parser:
    """Builds dimensions; every problem names its location in the file (``loc``), e.g.
    ``$.design.space['train.optimizer'].choice[0].lr``, and the value at fault."""

    def __init__(self, config_type: Any) -> None:
        self.config_type = config_type
        self.problems: list[str] = []
        self.coords = 0

    def problem(self, loc: str, message: str) -> None:
        self.problems.append(f"{loc}: {message}")

    def next_coord(self) -> int:
        self.coords += 1
        return self.coords - 1

    def spec(self, spec: Any, tp: Any, name: str, path: str, loc: str) -> Dim | None:
        if is_spec(spec):
            kinds = [k for k in SPEC_KEYS if k in spec]
            if len(kinds) > 1:
                self.problem(loc, f"a spec has exactly one of choice, range, value; found {', '.join(kinds)}")
                return None
            kind = kinds[0]
            allowed = SPEC_KEYS[kind]
            for key in spec:
                if key not in allowed:
                    hint = suggest(str(key), allowed)
                    self.problem(
                        loc, f"unknown key {key!r} in a {kind} spec{hint}; valid keys: {', '.join(allowed)}"
                    )
            if kind == "value":
                _, problems = check_data(spec["value"], tp, path=join_path(loc, "value"))
                self.problems.extend(problems)
                return Fixed(name=name, path=path, value=spec["value"])
            if kind == "choice":
                return self.choice(spec["choice"], tp, name, path, join_path(loc, "choice"))
            return self.range(spec, tp, name, path, loc)
        if isinstance(spec, dict) and _groupable(tp):
            coord = self.next_coord()
            group = self.group(spec, tp, name, loc)
            return None if group is None else Choice(name=name, path=path, options=(group,), coord=coord)
        self.problem(
            loc,
            "expected {choice: [...]}, {range: [lo, hi]}, {value: x} or a mapping of those; "
            f"found {found(spec)} (write {{value: ...}} for a fixed value)",
        )
        return None

    def choice(self, options: Any, tp: Any, name: str, path: str, loc: str) -> Choice | None:
        if not isinstance(options, list) or not options:
            self.problem(loc, f"choice needs a non-empty list of options, found {found(options)}")
            return None
        coord = self.next_coord()
        parsed: list[Any] = []
        seen: dict[bytes, int] = {}
        for k, option in enumerate(options):
            oloc = join_path(loc, k)
            key: bytes | None = None
            if is_spec(option):
                self.problem(oloc, "a choice option is a value or a mapping of sub-specs, not a spec itself")
            elif isinstance(option, dict) and _groupable(tp) and _has_spec(option):
                group = self.group(option, tp, f"{name}[{k}]", oloc)
                if group is not None:
                    parsed.append(group)
                    key = canonical_json([group.template, [(d.path, d.describe()) for d in group.dims]])
            else:
                _, problems = check_data(option, tp, path=oloc)
                self.problems.extend(problems)
                if not problems:
                    parsed.append(option)
                    key = canonical_json(option)
            if key is not None:
                if key in seen:
                    self.problem(
                        oloc, f"duplicate of option {seen[key]} ({_short(option)}); each option must differ"
                    )
                seen.setdefault(key, k)
        if len(parsed) != len(options):
            return None
        return Choice(name=name, path=path, options=tuple(parsed), coord=coord)

    def range(self, spec: dict[str, Any], tp: Any, name: str, path: str, loc: str) -> Range | None:
        bounds = spec["range"]
        before = len(self.problems)
        rloc = join_path(loc, "range")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        ):
            self.problem(rloc, f"expected [lo, hi] (two numbers), found {found(bounds)}")
            return None
        lo, hi = bounds
        inner = tu.unwrap_optional(tp)
        if inner not in (int, float, typing.Any):
            self.problem(loc, f"a range needs an int or float field, but this one is {type_name(tp)}")
            return None
        flag = spec.get("int")
        if flag is not None and not isinstance(flag, bool):
            self.problem(join_path(loc, "int"), f"expected true or false, found {found(flag)}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            self.problem(join_path(loc, "log"), f"expected true or false, found {found(log)}")
            log = False
        integer = (
            flag is True
            or inner is int
            or (inner is typing.Any and isinstance(lo, int) and isinstance(hi, int))
        )
        if flag is False and inner is int:
            self.problem(join_path(loc, "int"), "int: false on an int field")
        for i, b in enumerate((lo, hi)):
            if not math.isfinite(b):
                self.problem(join_path(rloc, i), f"bounds must be finite, found {b!r}")
            elif integer and float(b) != int(b):
                self.problem(
                    join_path(rloc, i), f"bound {b!r} is not an integer (the field is {type_name(tp)})"
                )
        if lo > hi:
            self.problem(rloc, f"lo ({lo!r}) is greater than hi ({hi!r})")
        if log and not lo > 0:
            self.problem(rloc, f"a log range needs lo > 0, found {lo!r}")
        step = spec.get("step")
        bins = spec.get("bins")
        if step is not None and bins is not None:
            self.problem(loc, "give step or bins, not both")
        sloc = join_path(loc, "step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
                self.problem(sloc, f"expected a positive number, found {found(step)}")
            elif log and not step > 1:
                self.problem(
                    sloc, f"with log: true, step is a multiplicative factor and must be > 1, found {step!r}"
                )
            elif integer and not log and float(step) != int(step):
                self.problem(sloc, f"an int range needs an integer step, found {step!r}")
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 1):
            self.problem(join_path(loc, "bins"), f"expected an integer >= 1, found {found(bins)}")
        if len(self.problems) > before:
            return None
        for i, b in enumerate((lo, hi)):  # the bounds must be valid values of the field
            _, problems = check_data(int(b) if integer else b, tp, path=join_path(rloc, i))
            self.problems.extend(problems)
        return Range(
            name=name,
            path=path,
            lo=int(lo) if integer else float(lo),
            hi=int(hi) if integer else float(hi),
            log=log,
            step=step,
            bins=bins,
            integer=integer,
            coord=self.next_coord(),
            loc=loc,
        )

    def group(self, template: dict[str, Any], tp: Any, name: str, loc: str) -> Group | None:
        before = len(self.problems)
        fixed: dict[str, Any] = {}
        dims: list[Dim] = []

        def walk(node: dict[str, Any], prefix: list[str], nloc: str) -> None:
            for key, value in node.items():
                kloc = join_path(nloc, key)
                if not isinstance(key, str):
                    self.problem(kloc, f"keys must be strings, found {found(key)}")
                    continue
                segs = [*prefix, *key.split(".")]
                rel = ".".join(segs)
                try:
                    sub_tp = tu.field_type(tp, segs, root=loc)
                except tu.PathError as exc:
                    self.problems.append(str(exc))
                    continue
                if is_spec(value):
                    dim = self.spec(value, sub_tp, f"{name}.{rel}", rel, kloc)
                    if dim is not None:
                        dims.append(dim)
                elif isinstance(value, dict) and _groupable(sub_tp) and _has_spec(value):
                    set_path(fixed, segs, {})
                    walk(value, segs, kloc)
                else:
                    set_path(fixed, segs, value)

        walk(template, [], loc)
        if len(self.problems) > before:
            return None
        label = str(template["name"]) if isinstance(template.get("name"), str) else ""
        group = Group(template=fixed, dims=tuple(dims), label=label)
        # The assembled value must be a valid value of the field (required keys present,
        # check() rules): test it at both corners of its sub-space.
        for last in (False, True):
            value = _draw(Choice(name=name, path="", options=(group,)), ExtremePicker(last))
            _, problems = check_data(value, tp, path=loc)
            self.problems.extend(p for p in problems if p not in self.problems)
        return None if len(self.problems) > before else group


def _has_spec(value: Any) -> bool:
    if is_spec(value):
        return True
    return isinstance(value, dict) and any(_has_spec(v) for v in value.values())


def _groupable(tp: Any) -> bool:
    inner = tu.strip_annotated(tp)
    if tu.is_union(inner):
        return any(_groupable(a) for a in tu.non_none(inner))
    return (
        inner is typing.Any or tu.is_struct_type(inner) or typing.get_origin(inner) is dict or inner is dict
    )


def parse_space(
    raw: Any, config_type: Any = typing.Any, *, where: str = "$.design.space"
) -> tuple[Space | None, list[str]]:
    """Parse and validate a space against ``config_type``: (the space, []) or (None, every
    problem, each naming its place in the file and the offending value)."""
    parser = _Parser(config_type)
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping of config paths to specs, found {found(raw)}"]
    dims: list[Dim] = []
    for path, spec in raw.items():
        loc = join_path(where, path)
        if not isinstance(path, str) or not path:
            parser.problem(loc, f"keys are dotted config paths, found {found(path)}")
            continue
        try:
            tp = tu.field_type(config_type, path.split("."))
        except tu.PathError as exc:
            parser.problem(loc, f"unknown config path {path!r}: {exc}")
            continue
        dim = parser.spec(spec, tp, path, path, loc)
        if dim is not None:
            dims.append(dim)
    for a in raw:
        for b in raw:
            if isinstance(a, str) and isinstance(b, str) and b.startswith(a + "."):
                parser.problem(join_path(where, b), f"lies inside {a!r}, which the space sets as a whole")
    if parser.problems:
        return None, parser.problems
    return Space(dims=tuple(dims), n_coords=parser.coords, raw=raw), []


def load_space(raw: Any, config_type: Any = typing.Any, *, where: str = "$.design.space") -> Space:
    """Like :func:`parse_space`, raising :class:`ConfigError` with every problem."""
    space, problems = parse_space(raw, config_type, where=where)
    if problems or space is None:
        raise ConfigError(problems)
    return space


def _num(x: float) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _short(value: Any) -> str:
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_short(v)}" for k, v in value.items())
        text = "{" + inner + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_short(v) for v in value) + "]"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "SPEC_KEYS",
    "Choice",
    "Dim",
    "ExtremePicker",
    "Fixed",
    "Group",
    "Picker",
    "Range",
    "Space",
    "UnitPicker",
    "is_spec",
    "load_space",
    "parse_space",
    "tidy",
]
