"""Storage backends and :func:`open_store`.

``open_store(url)`` accepts a local path or ``file://`` URL (local disk, NFS), ``s3://bucket/prefix``
(``s3a://`` too) and ``memory://name``. Any other scheme is refused: fsspec's generic
``mode="create"`` checks then writes, which is not atomic, so the claim protocol could let two
agents win one trial. See ``docs/store.md``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

from ablator.errors import StoreError, UntrustedStoreError
from ablator.store.base import MAX_RECORD_BYTES, Capabilities, Entry, Store
from ablator.store.trust import self_test

_SUPPORTED = "a local path or file:// (local disk, NFS), s3://bucket/prefix, memory://name"


def process_local(url: str | os.PathLike[str] | Store) -> bool:
    """Whether ``url`` names a store that lives only inside this process (``memory://``): what a
    command writes there is gone when it exits, and no other process (an agent, ``analyze``)
    can see it."""
    if isinstance(url, Store):
        return url.url.startswith("memory://")
    return urlparse(os.fspath(url)).scheme.lower() == "memory"


def open_store(
    url: str | os.PathLike[str] | Store,
    *,
    read_only: bool = False,
    force: bool = False,
    max_record_bytes: int = MAX_RECORD_BYTES,
    **options: Any,
) -> Store:
    """Open the store at ``url``.

    >>> store = open_store("./runs/digits")          # doctest: +SKIP
    >>> store = open_store("s3://bucket/exp")         # doctest: +SKIP

    A local root that does not exist is created (parents too) unless ``read_only``. A writable
    local store is checked first (:func:`ablator.store.trust.check_local_root`): a file system
    without hard links or a FUSE mount of an object store raises :class:`UntrustedStoreError`
    unless ``force``. ``max_record_bytes``: the most a read of a record (anything but a code
    snapshot or a checkpoint) returns; a larger key raises :class:`~ablator.store.base.RecordTooLarge`
    from its size, unread (docs/store.md, "Size limits"). ``options`` go to the S3 backend (``endpoint_url``, ``client_kwargs``, ...;
    see :class:`~ablator.store.s3.S3Store`). Agents also run :func:`self_test` once at start.

    With ``$ABLATOR_FAULTS`` set (tests only), the store is wrapped in a
    :class:`~ablator.store.faults.FaultStore` that fails the operations its spec file names.
    """
    if isinstance(url, Store):
        return url
    from ablator.store.faults import maybe_wrap

    return maybe_wrap(
        _open(url, read_only=read_only, force=force, max_record_bytes=max_record_bytes, **options)
    )


def _open(
    url: str | os.PathLike[str], *, read_only: bool, force: bool, max_record_bytes: int, **options: Any
) -> Store:
    s = os.fspath(url)
    if not s:
        raise StoreError(f"empty store URL; expected {_SUPPORTED}")
    parsed = urlparse(s)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        if options:
            raise StoreError(f"store {s!r}: options {sorted(options)} apply to s3:// stores only")
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise StoreError(
                    f"store URL {s!r}: file:// URLs name a local path (file:///path); mount a remote "
                    f"host's share (NFS) and use its local path"
                )
            path = unquote(parsed.path)
        else:
            path = s
        from ablator.store.posix import PosixStore
        from ablator.store.trust import check_local_root

        facts = check_local_root(os.path.expanduser(path), read_only=read_only, force=force)
        return PosixStore(facts.root, read_only=read_only, facts=facts, max_record_bytes=max_record_bytes)
    if scheme == "memory":
        if options:
            raise StoreError(f"store {s!r}: options {sorted(options)} apply to s3:// stores only")
        from ablator.store.memory import MemoryStore

        store = MemoryStore(parsed.netloc + parsed.path, read_only=read_only)
        store.max_record_bytes = max_record_bytes
        return store
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StoreError(f"store URL {s!r}: no bucket; expected s3://bucket/prefix")
        from ablator.store.s3 import S3Store

        return S3Store(
            parsed.netloc,
            unquote(parsed.path).strip("/"),
            read_only=read_only,
            max_record_bytes=max_record_bytes,
            **options,
        )
    raise UntrustedStoreError(
        f"store URL {s!r}: scheme {scheme!r} is not supported. ablator needs an atomic create-if-absent, "
        f"and fsspec's generic mode='create' for {scheme!r} checks then writes (two agents could both win "
        f"a trial). Supported: {_SUPPORTED}"
    )


__all__ = ["Capabilities", "Entry", "Store", "open_store", "process_local", "self_test"]
