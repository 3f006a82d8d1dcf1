"""Trials whose exceptions are hard to print: ``str()`` (and ``repr()``) raise, the message is
megabytes, or the trial calls ``sys.exit``."""

from __future__ import annotations

import sys
from typing import Any, Literal

from ablator.config import BaseConfig


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Unrepresentable(Exception):
    """Neither ``str()`` nor ``repr()`` works, and ``str()`` raises what ``except Exception``
    does not catch."""

    def __str__(self) -> str:
        raise SystemExit("no str, and not an Exception either")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class WeirdConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    how: Literal["unprintable", "huge", "unrepresentable", "exit", "noisy"] = "unprintable"
    mb: int = 0  # noisy: MiB written to stdout and to stderr each
    x: float = 0.0


def trial(config: WeirdConfig, ctx: Any) -> dict[str, float]:
    ctx.report(1, {"score": 0.0})
    if config.how == "noisy":  # a runaway print loop: megabytes of output, then a normal end
        line = ("y" * 1023 + "\n") * 1024
        for i in range(config.mb):
            sys.stdout.write(f"[out {i}]" + line)
            sys.stderr.write(f"[err {i}]" + line)
        print("[end of output]", flush=True)
        return {"score": config.x}
    if config.how == "unprintable":
        raise Unprintable()
    if config.how == "unrepresentable":
        raise Unrepresentable()
    if config.how == "exit":
        raise SystemExit(5)  # sys.exit(5) in the middle of a trial
    raise ValueError("x" * 20_000_000)
