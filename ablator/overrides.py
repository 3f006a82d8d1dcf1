"""``--set a.b=value`` overrides: parse, type against a config type, and apply to plain data.

``ablator.config`` re-exports the public names; the experiment file's own overrides
(``config.train.epochs=2``, ``design.space.<path>=...``) are built on these in
``ablator.experiment``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import yaml

from ablator import _typing_utils as tu
from ablator.errors import ConfigError
from ablator.formats import parse_yaml


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


def field_type(type_: Any, path: str | Sequence[str]) -> Any:
    """The declared type at dotted ``path`` under ``type_`` (``Any`` inside free-form values).

    Raises :class:`ConfigError` for an unknown path, listing the valid keys where it stopped.
    """
    segments = path.split(".") if isinstance(path, str) else list(path)
    try:
        return tu.field_type(type_, segments)
    except tu.PathError as exc:
        raise ConfigError(str(exc)) from None


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
    existing mapping that itself contains dots (``design.space`` keys) matches as a whole.

    Raises :class:`ablator._typing_utils.PathError` when a level on the way is not a mapping.
    """
    node: Any = data
    rest = list(segments)
    while True:
        if not isinstance(node, dict):
            raise tu.PathError(f"cannot set {'.'.join(segments)}: {tu.found(node)} is not a mapping")
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


def apply_collecting(
    data: dict[str, Any],
    overrides: Sequence[str],
    type_: Any = None,
    *,
    setter: Callable[[dict[str, Any], list[str], Any], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """:func:`apply_overrides` that returns (the new data, every problem) instead of raising,
    for callers that merge problems from several sources. ``setter(data, segments, value)``
    replaces :func:`set_path` where some paths are spelled differently (the experiment file's
    ``design.space.<config path>`` keys); it raises ``PathError`` for a path it cannot set."""
    put = setter if setter is not None else set_path
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
                tp = tu.field_type(type_, segments)
            except tu.PathError as exc:
                problems.append(f"--set {text}: {exc}")
                continue
            value = typed_value(raw, tp)
        else:
            value = parse_value(raw)
        try:
            put(out, segments, value)
        except tu.PathError as exc:
            problems.append(f"--set {text}: {exc}")
    return out, problems


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], type_: Any = None) -> dict[str, Any]:
    """Return a copy of ``data`` with ``"a.b.c=value"`` overrides applied.

    With ``type_``, each path must exist in that config type and each value is parsed to the
    field's type; without it, values are parsed as YAML scalars. An override sets the value at
    its path: a mapping value (``train.optimizer={name: sgd, lr: 0.1}``) replaces the whole
    sub-config. Raises :class:`ConfigError` listing every bad override.
    """
    out, problems = apply_collecting(data, overrides, type_)
    if problems:
        raise ConfigError(problems, source="--set")
    return out


__all__ = [
    "apply_collecting",
    "apply_overrides",
    "field_type",
    "parse_value",
    "set_path",
    "split_override",
    "typed_value",
]
