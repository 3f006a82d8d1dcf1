"""An in-process store (``memory://name``) for tests and quick experiments. Two ``open_store``
calls with the same name share the data; it lives as long as the process."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable

from ablator.errors import StoreError
from ablator.store.base import Capabilities, Entry, Store, check_key, folder_prefix, too_large

_SPACES: dict[str, dict[str, tuple[bytes, float]]] = {}
_LOCK = threading.RLock()


class MemoryStore(Store):
    """Keys and bodies in a process-global dict, guarded by one lock (so create-if-absent and
    replace are trivially atomic between threads)."""

    def __init__(self, name: str, *, read_only: bool = False, clock: Callable[[], float] = time.time) -> None:
        # ``clock`` stamps modification times: a simulation passes its own, so that ages on the
        # store's clock agree with its agents' clocks (benchmarks/scale.py).
        self.clock = clock
        self.name = name.strip("/")
        self.url = f"memory://{self.name}"
        self.read_only = read_only
        with _LOCK:
            self._data = _SPACES.setdefault(self.name, {})

    def _check_writable(self, op: str, key: str) -> None:
        if self.read_only:
            raise StoreError(f"{op} {key!r}: store {self.url} was opened read-only")

    def _folder(self, prefix: str) -> str:
        p = folder_prefix(prefix)
        if p:
            check_key(p.rstrip("/"), self.url)
        return p

    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        check_key(key, self.url)
        limit = self.read_limit(max_bytes)
        with _LOCK:
            try:
                data = self._data[key][0]
            except KeyError:
                raise FileNotFoundError(key) from None
        if len(data) > limit:
            raise too_large(self.url, key, len(data), limit)
        return data

    def stat(self, key: str) -> Entry | None:
        check_key(key, self.url)
        with _LOCK:
            item = self._data.get(key)
        return None if item is None else Entry(key, len(item[0]), item[1])

    def list(self, prefix: str) -> list[Entry]:
        p = self._folder(prefix)
        with _LOCK:
            items = [(k, v) for k, v in self._data.items() if k.startswith(p)]
        return sorted((Entry(k, len(v[0]), v[1]) for k, v in items), key=lambda e: e.key)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        p = self._folder(prefix)
        with _LOCK:
            keys = [k[len(p) :] for k in self._data if k.startswith(p)]
        return sorted({k.split("/", 1)[0] for k in keys if "/" in k})

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self._check_writable("create", key)
        check_key(key, self.url)
        with _LOCK:
            if key in self._data:
                return self._data[key][0] == data
            self._data[key] = (bytes(data), self.clock())
            return True

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._check_writable("replace", key)
        check_key(key, self.url)
        with _LOCK:
            self._data[key] = (bytes(data), self.clock())

    def delete(self, key: str) -> None:
        self._check_writable("delete", key)
        check_key(key, self.url)
        with _LOCK:
            self._data.pop(key, None)

    def mtime_resolution(self) -> float:
        """Stamps are the clock's floats (``time.time()``): as fine as the clock."""
        return 0.0

    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="memory",
            url=self.url,
            atomic_create=True,
            atomic_replace=True,
            read_only=self.read_only,
            notes=["in-process only: agents in other processes do not see it"],
        )


def clear(name: str | None = None) -> None:
    """Forget one memory store (or all of them)."""
    with _LOCK:
        if name is None:
            _SPACES.clear()
        else:
            _SPACES.pop(name.strip("/"), None)
