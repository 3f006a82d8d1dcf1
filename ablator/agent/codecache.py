"""The local cache of code snapshots: fetch ``code/<sha256>.zip`` from the store, check its hash
against the experiment, unpack it safely, and put it first on ``sys.path``.

Write access to a store means running code on every agent that serves it: the snapshot is the
code the agents import. The checks here stop a corrupted or truncated upload and a zip crafted
to write outside the cache folder; they cannot stop code that its author meant to run.

Several agents on one machine share the cache; a :mod:`filelock` on a *local* file makes one of
them unpack while the others wait (never a lock on the shared store: file locks on NFS or object
stores do not hold across hosts).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from filelock import FileLock

from ablator import layout
from ablator.errors import AblatorError, StoreError
from ablator.store.base import Store

MAX_UNPACKED_BYTES = 2 * 1024**3  # a zip bomb must not fill the disk
_COMPLETE = ".ablator-complete"


class CodeSnapshotError(AblatorError):
    """A code snapshot is missing, does not match its hash, or tries to escape its folder."""


def default_cache_dir() -> Path:
    """``$ABLATOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/ablator``, else ``~/.cache/ablator``."""
    env = os.environ.get("ABLATOR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ablator"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_member(name: str) -> PurePosixPath:
    """The relative path a zip member may be written to, or CodeSnapshotError.

    Refused: absolute paths (``/etc/x``, ``C:\\x``), any ``..`` component, backslashes (which
    Windows would read as separators) and empty names.
    """
    if not name or "\\" in name or "\x00" in name:
        raise CodeSnapshotError(f"code snapshot member {name!r}: invalid name")
    p = PurePosixPath(name)
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise CodeSnapshotError(f"code snapshot member {name!r}: absolute paths may not be unpacked")
    if any(part == ".." for part in p.parts):
        raise CodeSnapshotError(f"code snapshot member {name!r}: '..' would escape the cache folder")
    if not p.parts or p.parts == (".",):
        raise CodeSnapshotError(f"code snapshot member {name!r}: invalid name")
    return p


def unpack_zip(data: bytes, dest: Path) -> list[str]:
    """Unpack ``data`` into the empty folder ``dest``, refusing anything that could write outside
    it (absolute names, ``..``, symbolic links) and archives larger than MAX_UNPACKED_BYTES.
    Returns the member names written."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise CodeSnapshotError(f"code snapshot is not a zip archive: {exc}") from exc
    written: list[str] = []
    with zf:
        infos = zf.infolist()
        # Check every member before writing any, so that a refused archive leaves nothing behind.
        total = 0
        for info in infos:
            check_member(info.filename)
            if _is_symlink(info):
                raise CodeSnapshotError(
                    f"code snapshot member {info.filename!r} is a symbolic link; links may point "
                    "outside the cache folder and are not unpacked"
                )
            total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise CodeSnapshotError(
                f"code snapshot unpacks to {total} bytes, over the limit of {MAX_UNPACKED_BYTES}"
            )
        root = dest.resolve()
        for info in infos:
            rel = check_member(info.filename)
            target = (root / rel).resolve()
            # Belt and braces: resolve() follows links already on disk (none should exist).
            if target != root and root not in target.parents:
                raise CodeSnapshotError(f"code snapshot member {info.filename!r} escapes {root}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)
            written.append(info.filename)
    return written


def ensure_code(store: Store, sha256: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding snapshot ``sha256`` of ``store``, unpacked on first use.

    Raises CodeSnapshotError when the snapshot is missing, its bytes do not hash to ``sha256``,
    or a member would escape the folder.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise CodeSnapshotError(f"code snapshot hash {sha256!r} in the experiment is not a sha256 hex digest")
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = base / "code"
    base.mkdir(parents=True, exist_ok=True)
    target = base / sha256
    if (target / _COMPLETE).exists():
        return target
    with FileLock(str(base / f"{sha256}.lock")):
        if (target / _COMPLETE).exists():  # another agent on this host unpacked it meanwhile
            return target
        key = layout.code(sha256)
        try:
            data = store.read(key)
        except FileNotFoundError:
            raise CodeSnapshotError(
                f"code snapshot {key!r} is missing from {store.url}; relaunch with --code to upload it"
            ) from None
        except StoreError as exc:
            raise CodeSnapshotError(f"cannot read code snapshot {key!r} from {store.url}: {exc}") from exc
        actual = sha256_hex(data)
        if actual != sha256:
            raise CodeSnapshotError(
                f"code snapshot {key!r} in {store.url} hashes to {actual}, not {sha256} as the "
                "experiment says: it was corrupted or replaced; refusing to run it"
            )
        # Unpack into a fresh folder beside the target and rename it into place, so that a crash
        # half-way leaves no folder that looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=base))
        try:
            unpack_zip(data, tmp)
            (tmp / _COMPLETE).write_text(sha256 + "\n")
            if target.exists():  # a leftover without the marker (a crash before the rename)
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def activate(path: str | os.PathLike[str]) -> None:
    """Put ``path`` first on ``sys.path`` (once), so that the snapshot wins over any installed
    copy of the same modules."""
    p = os.fspath(path)
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)
    import importlib

    importlib.invalidate_caches()
