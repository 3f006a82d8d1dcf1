"""Config files: YAML (with YAML 1.2 scalars), TOML and JSON, read into and written from plain data.

``ablator.config`` re-exports these names; see ``docs/config.md`` (why YAML 1.2, and how).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from ablator._typing_utils import found
from ablator.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

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


MAX_FILE_BYTES = 16 * 1024 * 1024
"""The largest config or experiment file read (a bigger one is data, not a config)."""
MAX_YAML_NODES = 1_000_000
"""The most values a YAML document may expand to, aliases counted each time they are used: a
"billion laughs" file of a few hundred bytes would otherwise expand to gigabytes downstream."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes ``node`` stands for with every alias expanded (shared nodes counted per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once here; the constructor rejects what it cannot build
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the YAML 1.2 core schema (see :class:`_YamlLoader`). A document
    whose aliases expand to more than :data:`MAX_YAML_NODES` values is refused."""
    loader = _YamlLoader(text)  # a SafeLoader subclass: no arbitrary objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"the document expands to {size:,} values through its aliases (&anchor / *alias), more than "
                f"{MAX_YAML_NODES:,}: write the values out, or use fewer nested aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero never end
            raise ConfigError(
                "not a regular file (a folder, pipe or device); give the path of a file", source=src
            )
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"the file is {st.st_size:,} bytes, more than {MAX_FILE_BYTES // 1024**2} MiB: not a config file",
                source=src,
            )
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=src) from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}): save the file as UTF-8", source=src
        ) from None
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
        raise ConfigError(f"$: expected a mapping at the top level, found {found(data)}", source=src)
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


__all__ = ["SUFFIXES", "parse_yaml", "read_data", "write_data"]
