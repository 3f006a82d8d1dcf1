"""The store's own clock: what time it is where the store stamps its keys' modification times.

One-shot readers (``ablator status``) and observers that arrive late (a fresh agent) cannot time
a heartbeat or a claim from their own first sight without waiting a lease; they read its age on
the store's clock instead: a probe key is written, its modification time read back and the key
deleted. Ages on one clock never compare machines' wall clocks, so clock skew between hosts does
not matter. S3's ``LastModified`` has whole seconds, hence :data:`CLOCK_SLACK_S`.
"""

from __future__ import annotations

import contextlib
import secrets
import time

from ablator import layout, records
from ablator.errors import AblatorError
from ablator.store.base import Store

#: Slack for the store clock's resolution (S3 LastModified has whole seconds).
CLOCK_SLACK_S = 1.0


def probe_now(store: Store) -> tuple[float | None, str]:
    """(the store's time now, "store") -- or (None, "unknown: why") when the store cannot be
    written or does not report modification times."""
    if store.read_only:
        return None, "unknown: the store is read-only here"
    key = layout.selftest(f"clock-{secrets.token_hex(6)}.msgpack")
    try:
        store.replace(key, records.encode(records.SelfTestProbe(writer="clock probe")))
        entry = store.stat(key)
    except (AblatorError, OSError) as exc:
        return None, f"unknown: the clock probe could not be written ({exc})"
    finally:
        with contextlib.suppress(AblatorError, OSError):
            store.delete(key)
    if entry is None or entry.mtime is None:
        return None, "unknown: the store reports no modification times"
    return entry.mtime, "store"


class StoreClock:
    """The store's time, probed at most every ``every_s`` seconds and carried forward on this
    process's monotonic clock in between (a probe costs a write, a stat and a delete)."""

    def __init__(self, store: Store, *, every_s: float) -> None:
        self.store = store
        self.every_s = every_s
        self._at: tuple[float, float] | None = None  # (store time, time.monotonic()) of the probe
        self._tried = -float("inf")

    def now(self) -> float | None:
        """The store's time now, or None when it cannot be known."""
        mono = time.monotonic()
        if mono - self._tried >= self.every_s:
            self._tried = mono
            t, _ = probe_now(self.store)
            if t is not None:
                self._at = (t, time.monotonic())
        if self._at is None:
            return None
        return self._at[0] + (time.monotonic() - self._at[1])

    def age(self, mtime: float | None) -> float | None:
        """How long ago (seconds, at least 0) a key was last written, on the store's clock, less
        :data:`CLOCK_SLACK_S`; None when unknown."""
        if mtime is None:
            return None
        now = self.now()
        return None if now is None else max(0.0, now - mtime - CLOCK_SLACK_S)
