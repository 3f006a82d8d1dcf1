"""The store's own clock: what time it is where the store stamps its keys' modification times.

One-shot readers (``ablator status``) and observers that arrive late (a fresh agent, ``ablator
run`` waiting for a trial) cannot time a heartbeat or a claim from their own first sight without
waiting a lease; they read its age on the store's clock instead: a probe key is written, its
modification time read back and the key deleted. Ages on one clock never compare machines' wall
clocks, so clock skew between hosts does not matter.

An age leaves out the store's timestamp resolution (:func:`slack`), so that a key is never
judged older than it is: a whole second on S3 (``LastModified`` has whole seconds), almost
nothing on a local disk or NFS (nanosecond stamps, taken from the kernel's coarse clock, which
lags by up to a tick). This is the one place that decides it; every reader of ages (the
claimer's liveness, ``ablator status``) asks here.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable

from ablator import layout, records
from ablator.errors import AblatorError
from ablator.store.base import Store

#: Slack on a store with sub-second modification times: file systems stamp from the kernel's
#: coarse clock, a tick (1-10 ms) behind, so a key's stamp and the probe's may each lag by one.
FINE_SLACK_S = 0.05


def slack(store: Store, probe_mtime: float | None = None) -> float:
    """Seconds an age on ``store``'s clock leaves out: its timestamp resolution
    (:meth:`Store.mtime_resolution`), at least :data:`FINE_SLACK_S`. ``probe_mtime``: a stamp
    the store just gave; a whole number there says the store stamps whole seconds whatever the
    backend claims (an unknown file system), and makes it at least a second."""
    try:
        res = store.mtime_resolution()
    except Exception:  # a store that cannot say: assume whole seconds
        res = 1.0
    if probe_mtime is not None and probe_mtime == int(probe_mtime):
        res = max(res, 1.0)
    return max(res, FINE_SLACK_S)


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
    process's monotonic clock in between (a probe costs a write, a stat and a delete).

    The probe's stamp is paired with the monotonic time read *after* the stat returned, so the
    store's time is never overestimated: ages err on the young side, which can only delay a
    takeover, never make one early."""

    def __init__(self, store: Store, *, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.every_s = every_s
        self.clock = clock  # this process's monotonic clock (a simulation's, in benchmarks/scale.py)
        self._at: tuple[float, float] | None = None  # (store time, time.monotonic()) of the probe
        self._tried = -float("inf")
        self.slack_s = slack(store)

    def now(self) -> float | None:
        """The store's time now, or None when it cannot be known."""
        mono = self.clock()
        if mono - self._tried >= self.every_s:
            self._tried = mono
            t, _ = probe_now(self.store)
            if t is not None:
                self._at = (t, self.clock())
                self.slack_s = slack(self.store, t)
        if self._at is None:
            return None
        return self._at[0] + (self.clock() - self._at[1])

    def age(self, mtime: float | None) -> float | None:
        """How long ago (seconds, at least 0) a key was last written, on the store's clock, less
        the store's :func:`slack`; None when unknown."""
        if mtime is None:
            return None
        now = self.now()
        if now is None:
            return None
        # A stamp in whole seconds on a store said to be finer: it is not (see slack()).
        s = self.slack_s if mtime != int(mtime) else max(self.slack_s, 1.0)
        return max(0.0, now - mtime - s)


__all__ = ["FINE_SLACK_S", "StoreClock", "probe_now", "slack"]
