"""Storage backends and :func:`open_store`.

``open_store(url)`` accepts a local path or ``file://`` URL (local disk, NFS), ``s3://bucket/prefix``
and ``memory://name``. Any other scheme is refused: fsspec's generic ``mode="create"`` checks then
writes, which is not atomic, so the claim protocol could let two agents win one trial.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from ablator.errors import UntrustedStoreError
from ablator.store.base import Capabilities, Entry, Store


def open_store(url: str | os.PathLike[str] | Store, *, read_only: bool = False, force: bool = False, **options: Any) -> Store:
    """Open the store at ``url``.

    >>> store = open_store("./runs/digits")          # local folder or NFS mount
    >>> store = open_store("s3://bucket/exp")         # S3 (endpoint etc. from the AWS environment)

    ``force`` accepts a file system that failed the trust checks (no hard links, FUSE object
    store); ``options`` go to the backend (e.g. ``endpoint_url`` for S3).
    """
    if isinstance(url, Store):
        return url
    s = os.fspath(url)
    parsed = urlparse(s)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        from ablator.store.posix import PosixStore

        path = parsed.path if scheme == "file" else s
        return PosixStore(path, read_only=read_only)
    if scheme == "memory":
        from ablator.store.memory import MemoryStore

        return MemoryStore(parsed.netloc + parsed.path, read_only=read_only)
    if scheme in ("s3", "s3a"):
        from ablator.store.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"), read_only=read_only, **options)
    raise UntrustedStoreError(
        f"store URL {s!r}: scheme {scheme!r} is not supported. ablator needs an atomic create-if-absent; "
        "supported: a local path or file:// (local disk, NFS), s3://bucket/prefix, memory://name"
    )


__all__ = ["Capabilities", "Entry", "Store", "open_store"]
