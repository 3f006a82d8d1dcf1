"""Trials whose exceptions are hard to print: ``str()`` raises, or the message is megabytes."""

from __future__ import annotations

from typing import Any, Literal

from ablator.config import BaseConfig


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class WeirdConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    how: Literal["unprintable", "huge"] = "unprintable"
    x: float = 0.0


def trial(config: WeirdConfig, ctx: Any) -> dict[str, float]:
    ctx.report(1, {"score": 0.0})
    if config.how == "unprintable":
        raise Unprintable()
    raise ValueError("x" * 20_000_000)
