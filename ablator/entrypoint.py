"""Entry points: the ``module:attr`` an experiment names, resolved to a wrapper or trial function.

::

    entry = resolve_entry("examples.digits.model:DigitsWrapper")
    entry.kind, entry.config_type        # ("wrapper", DigitsConfig)

An entry is a ``ModelWrapper`` subclass with a ``config_type`` (``kind="wrapper"``), or a trial
function whose first parameter is annotated with its config type (``kind="function"``).
:class:`EntryPointError` says which part failed and what to do.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
import typing
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ablator._typing_utils import suggest
from ablator.errors import EntryPointError


@dataclass(frozen=True)
class EntryPoint:
    """A resolved entry point: a ModelWrapper subclass (``kind="wrapper"``) or a trial function
    (``kind="function"``), with the config type trials are built from."""

    kind: Literal["wrapper", "function"]
    obj: Any
    config_type: type
    target: str = ""

    def describe(self) -> str:
        """``target (ModelWrapper subclass; config type pkg.mod.Config)``, as ``plan`` prints it."""
        what = "ModelWrapper subclass" if self.kind == "wrapper" else "trial function"
        ct = self.config_type
        return f"{self.target} ({what}; config type {ct.__module__}.{ct.__qualname__})"


ENTRY_PATTERN = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)$")
"""What an experiment's ``entry`` must look like: ``module.path:attr.path``."""


def ensure_cwd_importable() -> None:
    """Put the current directory on ``sys.path`` (as ``python -m`` does), so that an entry like
    ``examples.digits.model:DigitsWrapper`` imports from the project root also through the
    ``ablator`` console script."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def resolve_entry(entry: str) -> EntryPoint:
    """Import ``module:attr`` and find its config type; :class:`EntryPointError` says which
    part failed and what to do."""
    m = ENTRY_PATTERN.match(entry.strip()) if isinstance(entry, str) else None
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
    except SystemExit as exc:  # a script's sys.exit() at module level would end ablator silently
        raise EntryPointError(
            f"entry {entry!r}: importing {module_name!r} called sys.exit({exc.code!r}){_location(exc)}; "
            'a module ablator imports must not exit: put the script part under `if __name__ == "__main__":`'
        ) from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise EntryPointError(
                f"entry {entry!r}: {owner!r} has no attribute {part!r}{suggest(part, names)}"
            )
        obj = getattr(obj, part)
    return _entry_of(obj, entry.strip())


def _where(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}{_location(exc)}"


def _location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _entry_of(obj: Any, target: str) -> EntryPoint:
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
        return EntryPoint(kind="wrapper", obj=obj, config_type=config_type, target=target)
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
        try:  # ablator calls it as fn(config, ctx)
            inspect.signature(obj).bind(None, None)
        except TypeError as exc:
            raise EntryPointError(
                f"entry {target!r}: ablator calls a trial function as {name}(config, ctx), which its signature "
                f"{name}{inspect.signature(obj)} does not accept ({exc}); write def {name}(config: MyConfig, ctx)"
            ) from None
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
        return EntryPoint(kind="function", obj=obj, config_type=config_type, target=target)
    raise EntryPointError(
        f"entry {target!r}: {obj!r} is neither a ModelWrapper subclass nor a trial function"
    )


__all__ = ["ENTRY_PATTERN", "EntryPoint", "ensure_cwd_importable", "resolve_entry"]
