"""A store wrapper that counts requests, for benchmarks and tests of what the protocol costs.

Each call of ``inner`` is one request, as it would be on S3 (a GET, HEAD, PUT, DELETE, or a LIST
per page of 1000 keys): ``counts[(op, area)]`` where ``area`` is the key's first segment
(``agents``, ``trials``, ``frontier``, ...). ``get`` and ``exists`` are counted as ``read`` and
``stat``, as the backends implement them; a create that loses costs a read too (the backends
read the key back to tell a lost race from their own lost reply).
"""

from __future__ import annotations

import builtins
import math
import threading
from collections import Counter

from ablator.store.base import Capabilities, Entry, Store

#: S3 list-page size: a LIST request returns at most this many keys.
LIST_PAGE = 1000


def area(key: str) -> str:
    """The first segment of ``key`` (``trials/000001/claim...`` -> ``trials``)."""
    return key.split("/", 1)[0] if key else ""


class CountingStore(Store):
    """``inner``, with every request counted (thread-safe)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.max_record_bytes = inner.max_record_bytes
        self.read_only = inner.read_only
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def _count(self, op: str, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[(op, area(key))] += n

    def total(self, op: str | None = None, where: str | None = None) -> int:
        """Requests so far, of ``op`` (None: all) on keys under ``where`` (None: all)."""
        with self._lock:
            return sum(
                n
                for (o, a), n in self.counts.items()
                if (op is None or o == op) and (where is None or a == where)
            )

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        self._count("read", key)
        return self.inner.read(key, max_bytes=max_bytes)

    def stat(self, key: str) -> Entry | None:
        self._count("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str) -> builtins.list[Entry]:
        out = self.inner.list(prefix)
        self._count("list", prefix, max(1, math.ceil(len(out) / LIST_PAGE)))
        return out

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        out = self.inner.list_dirs(prefix)
        self._count("list", prefix, max(1, math.ceil(len(out) / LIST_PAGE)))
        return out

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self._count("create", key)
        won = self.inner.create(key, data, durable=durable)
        if not won:
            self._count("read", key)  # a lost create is read back (412 then GET on S3)
        return won

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._count("replace", key)
        self.inner.replace(key, data, durable=durable)

    def delete(self, key: str) -> None:
        self._count("delete", key)
        self.inner.delete(key)

    def mtime_resolution(self) -> float:
        return self.inner.mtime_resolution()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def close(self) -> None:
        self.inner.close()
