"""The byte-level store interface every backend implements.

Keys are relative, ``/``-separated paths (``trials/000001/claim.e0000.msgpack``), built only by
``ablator.layout``. The protocol needs exactly two atomic primitives:

* :meth:`Store.create` -- create-if-absent. Returns False when somebody else's record is there.
  Losing a race is a value, not an exception.
* :meth:`Store.replace` -- atomic replace: a reader sees the old or the new body, never a mix.
"""

from __future__ import annotations

import abc
import builtins
import sys

import msgspec

from ablator.errors import CorruptRecordError, StoreError

# Temp files of the POSIX backend start with this; no key may contain a segment that does, so
# that every backend lists the same keys.
TMP_PREFIX = ".tmp-"

#: The most a read returns unless its caller asks for another limit: records (results,
#: heartbeats, claims, metric chunks, ``experiment.json``, summaries) are kilobytes by design,
#: and logs are written bounded. A bigger key is damaged or hostile, and reading it whole would
#: take the reader's memory (docs/store.md, "Size limits").
MAX_RECORD_BYTES = 64 * 1024**2

#: ``max_bytes`` for a read with no limit of its own (a checkpoint is as large as its model).
NO_LIMIT = sys.maxsize


class RecordTooLarge(CorruptRecordError):
    """A key is larger than a read of it may be. A :class:`CorruptRecordError`: every reader
    treats it as it treats a torn record of that kind."""


def too_large(url: str, key: str, size: int | None, limit: int) -> RecordTooLarge:
    """The error for ``key`` of ``size`` bytes (None: more than ``limit``, exact size unknown)."""
    what = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return RecordTooLarge(
        f"{key!r} in {url} is {what}, more than the {limit:,} bytes ablator reads for a key of its kind "
        "(docs/store.md, 'Size limits'): ablator never writes one that large, so it was damaged or written by "
        "something else, and is treated as unreadable. Remove it, or restore it from a backup or a copy of the store"
    )


def check_key(key: str, url: str) -> str:
    """Return ``key`` if it is a valid store key, else raise StoreError naming it and ``url``.

    A key is a relative ``/``-separated path with no empty, ``.`` or ``..`` segment and no
    segment starting with ``.tmp-`` (reserved for the POSIX backend's temp files).
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid store key {key!r} in {url}: keys are non-empty strings")
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith(TMP_PREFIX) or "\0" in part:
            raise StoreError(
                f"invalid store key {key!r} in {url}: keys are relative '/'-separated paths without "
                f"empty, '.', '..' or '{TMP_PREFIX}*' segments"
            )
    return key


def folder_prefix(prefix: str) -> str:
    """``"a/b"`` or ``"a/b/"`` -> ``"a/b/"``; ``""`` or ``"/"`` -> ``""`` (the whole store)."""
    p = prefix.strip("/")
    return p + "/" if p else ""


class Entry(msgspec.Struct, frozen=True):
    """One listed key with what the backend knows about it."""

    key: str
    size: int
    mtime: float | None = None  # seconds since the epoch, by the store's clock
    etag: str | None = None


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a store was found to offer (``ablator status STORE --check``)."""

    backend: str
    url: str
    atomic_create: bool
    atomic_replace: bool
    hard_links: bool | None = None
    filesystem: str | None = None
    self_test: str = "not run"  # "passed", "failed: ...", "not run"
    read_only: bool = False
    notes: list[str] = []


class Store(abc.ABC):
    """An experiment's root, local or remote. Thread-safe for concurrent calls."""

    url: str
    read_only: bool = False
    #: the limit of a read that names none (a backend's constructor takes another)
    max_record_bytes: int = MAX_RECORD_BYTES

    # -- reads -----------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The body of ``key``; raises FileNotFoundError when absent, and :class:`RecordTooLarge`
        (checked from the size before the body is read) when it is over ``max_bytes``, by
        default :attr:`max_record_bytes`. Code snapshots and checkpoints pass their own limits."""

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        """The body of ``key`` or None when absent (:meth:`read`'s limit)."""
        try:
            return self.read(key, max_bytes=max_bytes) if max_bytes is not None else self.read(key)
        except FileNotFoundError:
            return None

    def read_limit(self, max_bytes: int | None) -> int:
        """The limit a read asked for ``max_bytes`` applies (for backends)."""
        return self.max_record_bytes if max_bytes is None else max_bytes

    @abc.abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """Every key under the folder ``prefix`` (recursive), sorted by key. Never cached."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """Names of the immediate sub-folders of ``prefix`` (not recursive), sorted."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abc.abstractmethod
    def stat(self, key: str) -> Entry | None:
        """Metadata of ``key`` or None when absent."""

    # -- writes ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        """Create ``key`` with ``data`` unless it exists. True: this call's body is there (also
        when a lost reply made the write look taken but the stored body is byte-identical to
        ``data``, which carries a random nonce). False: somebody else's body is there.

        ``durable``: flush to stable storage before the key becomes visible (results,
        checkpoints)."""

    @abc.abstractmethod
    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        """Atomically set ``key`` to ``data``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent is fine."""

    # -- misc ------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def mtime_resolution(self) -> float:
        """How coarse this store's modification times are, in seconds: a key's ``Entry.mtime``
        may be up to this much earlier than the write that stamped it. The default assumes
        whole seconds (S3's ``LastModified``, an unknown backend); a backend that stamps finer
        says so. Ages judged on the store's clock leave this out (``ablator.store.clock``)."""
        return 1.0

    def close(self) -> None:  # noqa: B027 -- optional hook: most backends hold nothing to release
        """Release connections; the store must not be used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
