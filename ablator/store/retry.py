"""A store wrapper that rides out :class:`~ablator.errors.StoreUnavailable` by retrying.

For code that may block while the store is away, as long as a deadline allows: a worker's
writes and fence checks retry until its lease deadline passes (then the attempt is fenced, not
failed). Retries back off exponentially with full jitter, so that many processes do not hammer a
recovering store in lockstep. Every operation is safe to repeat: ``create`` recognises its own
body after a lost reply (the read-back), ``replace`` and ``delete`` are idempotent.

The one back-off rule of the code base lives here too (:func:`backoff`), with :class:`Outage`,
how a process that may wait minutes sees a store that does not answer (the agent's loop, an
agent's and ``ablator run``'s start), and :func:`wait_for_store`, which tries one step of a
start again until the store answers or the outage outlasts its timeout.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ablator.errors import StoreUnavailable
from ablator.store.base import Capabilities, Entry, Store

T = TypeVar("T")

#: Seconds the store may not answer before an agent (``--store-timeout``) or ``ablator run``
#: gives up: long enough for an NFS server's reboot or an S3 region's bad minutes.
DEFAULT_STORE_TIMEOUT = 600.0


def backoff(tries: int, *, base: float, cap: float) -> float:
    """Seconds to wait after ``tries`` failures in a row (1, 2, ...): ``base`` doubled each
    time up to ``cap``, with jitter, so that many processes do not hammer a recovering store in
    lockstep (at least half the step, so that a failing store is not retried at once)."""
    step = min(cap, base * 2 ** min(max(tries, 1) - 1, 30))
    return random.uniform(step / 2, step)


class Outage:
    """The store not answering (:class:`~ablator.errors.StoreUnavailable`) as one process sees
    it: since when, how long to wait before the next try, and when to give up (``timeout``
    seconds without an answer). ``limit`` names the timeout in messages (``--store-timeout``);
    ``clock`` and ``sleep`` are what waits are timed and spent with (fake ones in tests)."""

    BASE_S = 0.4  # the first wait; then doubled, up to CAP_S
    CAP_S = 30.0

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_STORE_TIMEOUT,
        *,
        limit: str = "--store-timeout",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.limit = limit
        self.clock = clock
        self.sleep = sleep
        self.since: float | None = None  # the first failure of this outage (None: the store answers)
        self.tries = 0

    def failed(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        if self.since is None:
            self.since = self.clock()
            self.tries = 0
        self.tries += 1
        return backoff(self.tries, base=self.BASE_S, cap=self.CAP_S)

    def down(self) -> float:
        """Seconds since the first failure of this outage (0 while the store answers)."""
        return 0.0 if self.since is None else self.clock() - self.since

    def expired(self) -> bool:
        """The store has not answered for longer than ``timeout``: time to give up."""
        return self.since is not None and self.down() > self.timeout

    def answered(self) -> float | None:
        """The store answered: how long it had not (None when it was not down)."""
        if self.since is None:
            return None
        down = self.down()
        self.since = None
        return down

    def gave_up(self, exc: BaseException) -> str:
        """What a process says when it gives up (:meth:`expired`)."""
        return (
            f"the store {self.url} has not answered for {self.down():.0f} s ({self.limit} {self.timeout:g} s); "
            f"last error: {exc}"
        )


def wait_for_store(
    fn: Callable[[], T],
    outage: Outage,
    *,
    doing: str,
    say: Callable[[str], None],
    stopped: Callable[[], bool] = lambda: False,
) -> T:
    """``fn()``, tried again after :meth:`Outage.failed`'s wait for as long as it raises
    StoreUnavailable, for a step that cannot go on without the store (an agent's start).
    ``say`` gets a line when the outage begins and when it ends. Raises StoreUnavailable with
    :meth:`Outage.gave_up`'s message once the outage expired, and the last error as it is once
    ``stopped()`` (a signal) while waiting."""
    while True:
        try:
            out = fn()
        except StoreUnavailable as exc:
            if outage.since is None:
                say(f"the store did not answer ({doing}): {exc}; retrying with back-off")
            wake = outage.clock() + outage.failed()
            if outage.expired():
                raise StoreUnavailable(outage.gave_up(exc)) from exc
            while outage.clock() < wake:
                if stopped():
                    raise
                outage.sleep(min(0.1, max(0.0, wake - outage.clock())))
        else:
            down = outage.answered()
            if down is not None:
                say(f"the store answers again (after {down:.1f} s)")
            return out


def unavailable_cause(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable in ``exc``'s chain of causes (a trainer may wrap it), or None: an
    attempt that ended on it ended for the store, not for its own code, and is never failed."""
    cur: BaseException | None = exc
    for _ in range(16):
        if cur is None:
            return None
        if isinstance(cur, StoreUnavailable):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


class RetryingStore(Store):
    """``inner``, retrying operations that raise StoreUnavailable while ``keep_trying()`` is
    true (checked after each failure); the last error is raised once it is not.

    ``outage`` (optional): the process's view of the outage (:class:`Outage`), told of every
    failure and of the answer that ends it, with a line to ``say`` for each; once it has lasted
    its timeout the operation raises StoreUnavailable with :meth:`Outage.gave_up`'s message
    (``ablator run`` training on a store that stays away for ``--store-timeout``)."""

    def __init__(
        self,
        inner: Store,
        keep_trying: Callable[[], bool],
        *,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        outage: Outage | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.max_record_bytes = inner.max_record_bytes
        self.read_only = inner.read_only
        self.keep_trying = keep_trying
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.outage = outage
        self.say = say
        self._lock = threading.Lock()  # the outage is shared by the threads that write (checkpoints)
        self.retries = 0  # failed tries so far (for tests and logs)

    def _call(self, fn: Callable[[], T], doing: str) -> T:
        attempt = 0
        while True:
            try:
                out = fn()
            except StoreUnavailable as exc:
                attempt += 1
                self.retries += 1
                if self.outage is not None:
                    with self._lock:
                        if self.outage.since is None:
                            self.say(f"the store did not answer ({doing}): {exc}; retrying with back-off")
                        self.outage.failed()
                        if self.outage.expired():
                            raise StoreUnavailable(self.outage.gave_up(exc)) from exc
                if not self.keep_trying():
                    raise
                time.sleep(backoff(attempt, base=self.backoff, cap=self.max_backoff))
            else:
                if attempt and self.outage is not None:
                    with self._lock:
                        down = self.outage.answered()
                    if down is not None:
                        self.say(f"the store answers again (after {down:.1f} s)")
                return out

    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self._call(lambda: self.inner.read(key, max_bytes=max_bytes), f"read {key}")

    def stat(self, key: str) -> Entry | None:
        return self._call(lambda: self.inner.stat(key), f"stat {key}")

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self._call(lambda: self.inner.list(prefix), f"list {prefix}")

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return self._call(lambda: self.inner.list_dirs(prefix), f"list {prefix}")

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        return self._call(lambda: self.inner.create(key, data, durable=durable), f"create {key}")

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._call(lambda: self.inner.replace(key, data, durable=durable), f"replace {key}")

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key), f"delete {key}")

    def mtime_resolution(self) -> float:
        return self.inner.mtime_resolution()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def close(self) -> None:
        self.inner.close()


__all__ = [
    "DEFAULT_STORE_TIMEOUT",
    "Outage",
    "RetryingStore",
    "backoff",
    "unavailable_cause",
    "wait_for_store",
]
