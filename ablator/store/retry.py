"""A store wrapper that rides out :class:`~ablator.errors.StoreUnavailable` by retrying.

For code that may block while the store is away, as long as a deadline allows: a worker's
writes and fence checks retry until its lease deadline passes (then the attempt is fenced, not
failed). Retries back off exponentially with full jitter, so that many processes do not hammer a
recovering store in lockstep. Every operation is safe to repeat: ``create`` recognises its own
body after a lost reply (the read-back), ``replace`` and ``delete`` are idempotent.
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable
from typing import TypeVar

from ablator.errors import StoreUnavailable
from ablator.store.base import Capabilities, Entry, Store

T = TypeVar("T")


class RetryingStore(Store):
    """``inner``, retrying operations that raise StoreUnavailable while ``keep_trying()`` is
    true (checked after each failure); the last error is raised once it is not."""

    def __init__(
        self,
        inner: Store,
        keep_trying: Callable[[], bool],
        *,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.read_only = inner.read_only
        self.keep_trying = keep_trying
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retries = 0  # failed tries so far (for tests and logs)

    def _call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except StoreUnavailable:
                attempt += 1
                self.retries += 1
                if not self.keep_trying():
                    raise
                time.sleep(random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))))

    def read(self, key: str) -> bytes:
        return self._call(lambda: self.inner.read(key))

    def stat(self, key: str) -> Entry | None:
        return self._call(lambda: self.inner.stat(key))

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self._call(lambda: self.inner.list(prefix))

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return self._call(lambda: self.inner.list_dirs(prefix))

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        return self._call(lambda: self.inner.create(key, data, durable=durable))

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._call(lambda: self.inner.replace(key, data, durable=durable))

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))

    def mtime_resolution(self) -> float:
        return self.inner.mtime_resolution()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def close(self) -> None:
        self.inner.close()


__all__ = ["RetryingStore"]
