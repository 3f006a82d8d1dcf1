"""Helpers shared by the config modules for walking config types and wording problems.

A private module with public names (as msgspec's ``_typing_utils``): ``config``, ``validation``,
``overrides``, ``space`` and ``experiment`` import these instead of each other's private names.
Nothing here is part of ablator's user API.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union

import msgspec

Problem = tuple[str, str]
"""A semantic problem found by ``BaseConfig.check``: (dotted path relative to the config that
reports it, or ``""`` for the config itself; message)."""


class Role:
    """A field-role marker for ``typing.Annotated`` (``ablator.config.Stateless`` and ``Derived``
    are the two instances); ``role`` is the name :func:`role_of` reports."""

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role

    def __repr__(self) -> str:
        return self.name


class PathError(Exception):
    """A dotted path that does not exist in a config type (the message says where it stopped)."""


def is_struct_type(tp: Any) -> bool:
    """Whether ``tp`` is a msgspec Struct class."""
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def strip_annotated(tp: Any) -> Any:
    """``Annotated[T, ...]`` -> ``T`` (nested ones too)."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def is_union(tp: Any) -> bool:
    """Whether ``tp`` is a ``Union``/``X | Y`` type."""
    return typing.get_origin(tp) in (Union, types.UnionType)


def non_none(tp: Any) -> list[Any]:
    """The members of union ``tp`` other than ``None``."""
    return [a for a in typing.get_args(tp) if a is not type(None)]


def unwrap_optional(tp: Any) -> Any:
    """``Annotated`` stripped, and ``X | None`` -> ``X`` (a union of several types is kept)."""
    tp = strip_annotated(tp)
    if is_union(tp) and len(non_none(tp)) == 1:
        tp = strip_annotated(non_none(tp)[0])
    return tp


def struct_fields(tp: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    """The fields of Struct class ``tp``."""
    return msgspec.structs.fields(tp)


def role_of(tp: Any) -> str | None:
    """The role a field's type is annotated with (``"stateless"``, ``"derived"``), or None."""
    if typing.get_origin(tp) is Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, Role):
                return meta.role
        return role_of(typing.get_args(tp)[0])
    if is_union(tp):  # Annotated[int, Stateless] | None
        for arg in typing.get_args(tp):
            role = role_of(arg)
            if role is not None:
                return role
    return None


def field_default(f: msgspec.structs.FieldInfo) -> Any:
    """A field's default value, or ``msgspec.NODEFAULT`` for a required field."""
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return msgspec.NODEFAULT


def type_name(tp: Any) -> str:
    """A type as a user reads it in a problem: ``one of 'min', 'max'``, ``int or null``."""
    tp = strip_annotated(tp)
    if tp is Any:
        return "any value"
    if tp is type(None) or tp is None:
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if is_struct_type(tp):
        return f"a mapping ({tp.__name__})"
    if is_union(tp):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        return (
            f"{getattr(origin, '__name__', str(origin))}[{args}]"
            if args
            else getattr(origin, "__name__", str(tp))
        )
    return getattr(tp, "__name__", str(tp))


def found(value: Any) -> str:
    """A value as a problem quotes it: ``null``, ``int 3``, ``a mapping {...}`` (shortened)."""
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


def suggest(word: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid word, or ``""``."""
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


def join_dotted(base: str, rel: str) -> str:
    """``join_path`` for each part of the dotted relative path ``rel`` (``""``: ``base`` itself)."""
    if not rel:
        return base
    for part in rel.split("."):
        base = join_path(base, part)
    return base


def unknown_key(path: str, key: Any, valid: list[str]) -> str:
    """The problem text for an unknown key, with a "did you mean" and the valid keys."""
    hint = suggest(str(key), valid) if isinstance(key, str) else ""
    listed = ", ".join(valid) if valid else "(none)"
    return f"{path}: unknown key {key!r}{hint}; valid keys: {listed}"


_MSGSPEC_AT = re.compile(r" - at `\$[^`]*`$")
_PLAIN_MISMATCH = re.compile(r"^Expected `[^`]*`, got `[^`]*`$")


def leaf_problem(path: str, tp: Any, value: Any, exc: Exception) -> str:
    """The problem text for a value msgspec refused as ``tp``: what was expected and found,
    a "did you mean" for a near-miss literal, and msgspec's detail when it adds something."""
    expected = type_name(tp)
    base = f"{path}: expected {expected}, found {found(value)}"
    inner = strip_annotated(tp)
    if typing.get_origin(inner) is Literal and isinstance(value, str):
        base += suggest(value, [v for v in typing.get_args(inner) if isinstance(v, str)])
    detail = _MSGSPEC_AT.sub("", str(exc))
    if detail and not _PLAIN_MISMATCH.match(detail) and not detail.startswith("Invalid enum value"):
        base += f" ({detail[0].lower()}{detail[1:]})"
    return base


def field_type(type_: Any, segments: Sequence[str], root: str = "$") -> Any:
    """The declared type at ``segments`` under ``type_`` (``Any`` inside free-form values);
    raises :class:`PathError` for an unknown path, listing the valid keys where it stopped."""
    tp: Any = type_
    here = root
    for seg in segments:
        tp = unwrap_optional(tp)
        if tp is Any:
            return Any
        if is_struct_type(tp):
            fields = {f.encode_name: f for f in struct_fields(tp)}
            if seg not in fields:
                raise PathError(unknown_key(here, seg, list(fields)))
            tp = fields[seg].type
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        elif typing.get_origin(tp) in (list, tuple) and seg.isdigit():
            args = typing.get_args(tp)
            homogeneous = typing.get_origin(tp) is list or (len(args) == 2 and args[1] is Ellipsis)
            tp = args[0] if homogeneous and args else Any
        else:
            raise PathError(f"{here}: {type_name(tp)} has no key {seg!r}")
        here = join_path(here, seg)
    return tp


def same_value(x: Any, y: Any) -> bool:
    """Equality of plain config values: ``1 == 1.0``, NaN equals NaN, ``True`` is not ``1``."""
    if type(x) is not type(y) and not (isinstance(x, (int, float)) and isinstance(y, (int, float))):
        return False
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y
    return bool(x == y)
