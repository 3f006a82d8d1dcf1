"""The numbers a lease runs on (:class:`LeaseLimits`) and the clock it is measured on
(:func:`default_clock`). See docs/protocol.md "Leases"."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ablator.errors import ConfigError
from ablator.experiment import Limits

_DEFAULTS = Limits()

#: A monotonic clock in seconds (injected by tests as a fake clock).
Clock = Callable[[], float]


def default_clock() -> Clock:
    """The clock that leases are measured on: ``CLOCK_BOOTTIME`` where the OS has it (it keeps
    counting while the machine is suspended, so a laptop that slept past its lease fences itself
    on waking), else ``time.monotonic``. Never the wall clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:  # pragma: no cover - old kernels
            pass
        else:
            return lambda: time.clock_gettime(boottime)
    return time.monotonic


@dataclass(frozen=True)
class LeaseLimits:
    """The numbers the protocol needs (a subset of the experiment's ``limits``), with the
    defaults of :class:`ablator.experiment.Limits`, the one place they are written.

    ``lease_seconds`` must be at least 3 x ``heartbeat_seconds``: a holder fences itself after
    ``lease_seconds - 2 * heartbeat_seconds`` without a renewal, and that must leave room for at
    least one heartbeat interval.
    """

    max_attempts: int = _DEFAULTS.max_attempts
    max_takeovers: int = _DEFAULTS.max_takeovers
    lease_seconds: float = float(_DEFAULTS.lease_seconds)
    heartbeat_seconds: float = float(_DEFAULTS.heartbeat_seconds)

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            problems.append(f"limits.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not (isinstance(self.max_takeovers, int) and self.max_takeovers >= 0):
            problems.append(f"limits.max_takeovers must be an integer >= 0, got {self.max_takeovers!r}")
        hb, lease = self.heartbeat_seconds, self.lease_seconds
        if not (isinstance(hb, (int, float)) and math.isfinite(hb) and hb > 0):
            problems.append(f"limits.heartbeat_seconds must be a positive number, got {hb!r}")
        elif not (isinstance(lease, (int, float)) and math.isfinite(lease) and lease >= 3 * hb):
            problems.append(
                f"limits.lease_seconds ({lease!r}) must be at least 3 x limits.heartbeat_seconds ({hb!r}): "
                "a holder fences itself after lease - 2 x heartbeat without a renewal"
            )
        if problems:
            raise ConfigError(problems)

    @property
    def fence_after(self) -> float:
        """Seconds without a renewal after which a holder stops writing for its trials."""
        return self.lease_seconds - 2 * self.heartbeat_seconds

    @classmethod
    def from_limits(
        cls,
        limits: LimitsLike,
        *,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
    ) -> LeaseLimits:
        """From an ``experiment.Limits`` (or another LeaseLimits), with the agent's
        ``--lease-seconds`` / ``--heartbeat-seconds`` overrides."""
        return cls(
            max_attempts=limits.max_attempts,
            max_takeovers=limits.max_takeovers,
            lease_seconds=float(lease_seconds if lease_seconds is not None else limits.lease_seconds),
            heartbeat_seconds=float(
                heartbeat_seconds if heartbeat_seconds is not None else limits.heartbeat_seconds
            ),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, source: str = "experiment.json") -> LeaseLimits:
        """From the ``limits`` mapping of a stored ``experiment.json`` (other keys, such as
        ``stall_seconds``, are ignored; absent ones take the defaults above). Needs none of the
        user's code, so that ``status``, ``retry`` and ``gc`` work from any machine."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError([f"$.limits: expected a mapping, found {type(data).__name__}"], source=source)
        try:
            return msgspec.convert(dict(data or {}), cls)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"$.limits: {exc}"], source=source) from exc


class LimitsLike(Protocol):
    """What :meth:`LeaseLimits.from_limits` reads (``experiment.Limits`` has it)."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def max_takeovers(self) -> int: ...
    @property
    def lease_seconds(self) -> float: ...
    @property
    def heartbeat_seconds(self) -> float: ...
