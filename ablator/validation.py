"""Validate plain data against a config type, reporting *every* problem at once.

msgspec stops at the first error; :func:`check_data` converts with msgspec and, when that fails,
walks the data against the type to collect each problem with its ``$.dotted.path``, what was
expected and what was found (with a "did you mean" for near-misses). After the types, it runs
each nested config's own ``check()`` rules. ``ablator.config`` re-exports :func:`check_data`
and :func:`from_dict`; see ``docs/config.md`` for the messages.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

import msgspec

from ablator._typing_utils import (
    Problem,
    field_default,
    found,
    is_struct_type,
    is_union,
    join_dotted,
    join_path,
    leaf_problem,
    non_none,
    role_of,
    same_value,
    strip_annotated,
    struct_fields,
    type_name,
    unknown_key,
)
from ablator.errors import ConfigError

T = TypeVar("T")


@typing.runtime_checkable
class Checked(Protocol):
    """A config with cross-field rules (``ablator.config.BaseConfig`` and its subclasses)."""

    def check(self) -> Iterable[Problem]: ...


def _check_derived(f: msgspec.structs.FieldInfo, value: Any, path: str, problems: list[str]) -> None:
    default = field_default(f)
    if default is not msgspec.NODEFAULT and not same_value(
        msgspec.to_builtins(value), msgspec.to_builtins(default)
    ):
        problems.append(
            f"{path}: is a derived field (filled in by code before training); leave it out of "
            f"the file (found {found(value)})"
        )


def _semantic(obj: Any, path: str, problems: list[str], allow_derived: bool) -> None:
    """Run ``check()`` on ``obj`` and every config nested in it; refuse derived values set in a
    file (they would be overwritten by ``derive`` and are not part of the hash)."""
    if isinstance(obj, msgspec.Struct):
        if isinstance(obj, Checked):
            for rel, message in obj.check():
                problems.append(f"{join_dotted(path, rel)}: {message}")
        for f in struct_fields(type(obj)):
            value = getattr(obj, f.name)
            if not allow_derived and role_of(f.type) == "derived":
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
    tp = strip_annotated(tp)
    if is_struct_type(tp):
        try:
            sub = msgspec.convert(value, tp)
        except msgspec.ValidationError:
            pass
        else:
            _semantic(sub, path, problems, allow_derived)
            return
        if not isinstance(value, dict):
            problems.append(f"{path}: expected {type_name(tp)}, found {found(value)}")
            return
        fields = struct_fields(tp)
        by_key = {f.encode_name: f for f in fields}
        good: dict[str, Any] = {}  # the keys without problems, to run check() on the rest
        complete = True
        for key, item in value.items():  # in the file's order
            f = by_key.get(key)
            if f is None:
                problems.append(unknown_key(path, key, list(by_key)))
                continue
            before = len(problems)
            _walk(item, f.type, join_path(path, key), problems, allow_derived)
            if not allow_derived and role_of(f.type) == "derived":
                _check_derived(f, item, join_path(path, key), problems)
            if len(problems) == before:
                good[key] = item
            elif f.required:
                complete = False
        for f in fields:
            if f.required and f.encode_name not in value:
                problems.append(f"{path}: missing required key {f.encode_name!r} ({type_name(f.type)})")
                complete = False
        if complete:
            # Run this config's own rules on what is valid (bad fields back at their defaults),
            # so that e.g. "set epochs or max_steps" is reported along with a type error.
            try:
                partial = msgspec.convert(good, tp)
            except msgspec.ValidationError:
                return
            if isinstance(partial, Checked):
                bad = {k for k in value if k not in good}
                for rel, message in partial.check():
                    if rel.split(".")[0] not in bad:
                        problems.append(f"{join_dotted(path, rel)}: {message}")
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if is_union(tp):
        options = non_none(tp)
        if value is None and len(options) < len(args):
            return
        inner = strip_annotated(options[0]) if len(options) == 1 else None
        if value is not None and (
            is_struct_type(inner) or typing.get_origin(inner) in (list, dict, set, tuple)
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
                problems.append(leaf_problem(f"{path} key {key!r}", args[0], key, exc))
            _walk(item, args[1], join_path(path, key), problems, allow_derived)
        return
    try:
        converted = msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        problems.append(leaf_problem(path, tp, value, exc))
    else:
        _semantic(converted, path, problems, allow_derived)


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


__all__ = ["Checked", "check_data", "from_dict"]
