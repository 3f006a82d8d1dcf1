"""Local directories and NFS mounts.

create-if-absent: the whole body goes to a temp file in the target's directory, then ``os.link``
puts it in place. ``link`` fails with EEXIST when the name exists, atomically, on local file
systems and on NFS v3/v4 (unlike O_EXCL on old NFS clients), and no reader ever sees a
half-written record because the name appears only once the body is complete.

atomic replace: temp file in the same directory + ``os.replace`` (rename is atomic within a file
system; fsspec's local transactions move files from /tmp and are not).

Temp files are named ``.tmp-<random>``; listings skip them and no key may use that prefix. A
writer killed between writing its temp file and unlinking it leaves one behind (harmless, hidden).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import stat as stat_mod
from pathlib import Path
from typing import TYPE_CHECKING

from ablator.errors import StoreError, StoreUnavailable
from ablator.store.base import (
    MAX_RECORD_BYTES,
    TMP_PREFIX,
    Capabilities,
    Entry,
    RecordTooLarge,
    Store,
    check_key,
    folder_prefix,
    too_large,
)

if TYPE_CHECKING:
    from ablator.store.trust import LocalFacts

_TMP_PREFIX = TMP_PREFIX
# errno values that mean "this user or this mount may not write here"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# errno values of link(2) on a file system without hard links
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
# errno values that mean "the file server did not answer, for now": a soft NFS mount returns
# EIO or ETIMEDOUT when its retransmissions run out, ESTALE when a handle went stale under a
# failover, and the network errors show through some clients. Retrying later may succeed.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EINTR,
        errno.ENOTCONN,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.ENOLINK,
        errno.EREMOTEIO,
    }
)


def os_error(op: str, key: str, url: str, exc: OSError) -> StoreError:
    """The StoreError for ``exc`` raised by ``op`` on ``key``: :class:`StoreUnavailable` when
    the errno says the server did not answer (:data:`TRANSIENT_ERRNOS`)."""
    if exc.errno in DISK_FULL_ERRNOS:
        return StoreError(f"{op} {key!r} in {url}: {disk_full(exc)}")
    cls = StoreUnavailable if exc.errno in TRANSIENT_ERRNOS else StoreError
    return cls(f"{op} {key!r} in {url}: {exc}")


#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: OSError) -> str:
    """What to say about a full disk (ENOSPC) or quota (EDQUOT)."""
    return (
        f"the disk is full ({exc.strerror or exc}); free space there (`ablator gc STORE` deletes checkpoints "
        "no attempt can resume from) or use a store on another disk"
    )


def _kind(mode: int) -> str:
    if stat_mod.S_ISFIFO(mode):
        return "a FIFO"
    if stat_mod.S_ISSOCK(mode):
        return "a socket"
    if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the file itself was synced
    finally:
        os.close(fd)


#: File systems whose modification times are coarser than the nanoseconds of ext4 and friends:
#: FAT stamps in 2 s steps, ext2/ext3 with small inodes, HFS+ and ISO 9660 in whole seconds.
COARSE_MTIMES: dict[str, float] = {
    "vfat": 2.0,
    "msdos": 2.0,
    "fat": 2.0,
    "ext2": 1.0,
    "ext3": 1.0,
    "hfs": 1.0,
    "hfsplus": 1.0,
    "iso9660": 1.0,
}


class PosixStore(Store):
    """A store rooted at a local (or NFS-mounted) directory.

    Construct it through :func:`ablator.store.open_store`, which also runs the trust checks
    (hard links, FUSE object-store mounts) and creates a missing root; ``facts`` are what those
    checks found, reported by :meth:`capabilities`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        facts: LocalFacts | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = Path(self.root).as_uri()
        self.read_only = read_only
        self.facts = facts
        self.max_record_bytes = max_record_bytes

    # -- helpers ---------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        check_key(key, self.url)
        return os.path.join(self.root, *key.split("/"))

    def _folder(self, prefix: str) -> str:
        p = folder_prefix(prefix)
        if not p:
            return self.root
        return self._path(p.rstrip("/"))

    def _check_writable(self, op: str, key: str) -> None:
        if self.read_only:
            raise StoreError(f"{op} {key!r}: store {self.url} was opened read-only")

    def _write_error(self, op: str, key: str, exc: OSError) -> StoreError:
        if exc.errno in _NOT_WRITABLE:
            return StoreError(
                f"{op} {key!r} in {self.url}: the store folder is not writable by this process "
                f"({exc.strerror}: {exc.filename}). Fix its permissions or mount, or open the store read-only"
            )
        return os_error(op, key, self.url, exc)  # a full disk included (DISK_FULL_ERRNOS)

    def _write_temp(self, directory: str, data: bytes, durable: bool) -> str:
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        return tmp

    def _mkdirs(self, directory: str, op: str, key: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise self._write_error(op, key, exc) from exc

    # -- reads -----------------------------------------------------------------------------
    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        limit = self.read_limit(max_bytes)
        try:
            # O_NONBLOCK: opening a FIFO put in a store (a hand edit, a hostile copy) must not
            # block; it has no effect on a regular file's reads
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotFoundError(key) from None
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(key) from None
        except OSError as exc:
            raise os_error("read", key, self.url, exc) from exc
        with open(fd, "rb") as f:
            try:
                mode = os.fstat(fd).st_mode
                if stat_mod.S_ISDIR(mode):
                    raise FileNotFoundError(key)
                if not stat_mod.S_ISREG(mode):
                    # a FIFO would give nothing or block, a device never end: a store holds files
                    raise StoreError(
                        f"read {key!r} in {self.url}: {path} is not a regular file ({_kind(mode)}); a store "
                        "holds only files written by ablator. Remove it, or restore the file from a backup or "
                        "a copy of the store"
                    )
                size = os.fstat(fd).st_size
                if size > limit:  # from the size, before a byte is read
                    raise too_large(self.url, key, size, limit)
                data = f.read(size + 1)
                if len(data) > size:  # it grew since (not ablator's writes: they replace whole)
                    grown = bytearray(data)
                    while len(grown) <= limit and (more := f.read(min(1 << 20, limit + 1 - len(grown)))):
                        grown += more
                    if len(grown) > limit:
                        raise too_large(self.url, key, None, limit)
                    data = bytes(grown)
                return data
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise os_error("read", key, self.url, exc) from exc

    def stat(self, key: str) -> Entry | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error("stat", key, self.url, exc) from exc
        if stat_mod.S_ISDIR(st.st_mode):
            return None  # a folder is not a key (object stores have no folders)
        return Entry(key, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> list[Entry]:
        base = self._folder(prefix)
        out: list[Entry] = []
        # (folder path, its key prefix): keys are built by concatenation, not os.path.relpath,
        # which dominated listing a large store.
        root_rel = os.path.relpath(base, self.root).replace(os.sep, "/")
        stack = [(base, "" if root_rel == "." else root_rel + "/")]
        while stack:
            d, key_prefix = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise os_error("list", prefix, self.url, exc) from exc
            with it:
                for de in it:
                    if de.name.startswith(_TMP_PREFIX):
                        continue
                    if de.is_dir(follow_symlinks=False):
                        stack.append((de.path, f"{key_prefix}{de.name}/"))
                        continue
                    try:
                        st = de.stat()
                    except FileNotFoundError:
                        continue  # deleted while we listed
                    out.append(Entry(key_prefix + de.name, st.st_size, st.st_mtime))
        out.sort(key=lambda e: e.key)
        return out

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        base = self._folder(prefix)
        try:
            with os.scandir(base) as it:
                return sorted(
                    de.name
                    for de in it
                    if de.is_dir(follow_symlinks=False) and not de.name.startswith(_TMP_PREFIX)
                )
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise os_error("list_dirs", prefix, self.url, exc) from exc

    # -- writes ----------------------------------------------------------------------------
    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self._check_writable("create", key)
        path = self._path(key)
        directory = os.path.dirname(path)
        self._mkdirs(directory, "create", key)
        try:
            tmp = self._write_temp(directory, data, durable)
        except OSError as exc:
            raise self._write_error("create", key, exc) from exc
        try:
            try:
                self._link(tmp, path)
            except FileExistsError:
                # Taken -- or our own link whose reply was lost (an NFS client retransmits LINK,
                # the server already did it and answers EEXIST): the body carries a random
                # nonce, so byte equality means it is ours.
                try:
                    # never more than our own body: a larger one is not ours
                    return self.read(key, max_bytes=len(data)) == data
                except RecordTooLarge:
                    return False
                except FileNotFoundError:
                    return False  # deleted in between (gc); not ours either way
            except OSError as exc:
                if exc.errno in _NO_LINKS:
                    raise StoreError(
                        f"create {key!r} in {self.url}: this file system does not support hard links, "
                        "so create-if-absent cannot be atomic (use a local disk, NFS or S3)"
                    ) from exc
                raise self._write_error("create", key, exc) from exc
            if durable:
                _fsync_dir(directory)
            return True
        finally:
            _unlink_quietly(tmp)

    def _link(self, src: str, dst: str) -> None:
        """``os.link``; a separate method so that tests can gate it or inject a lost reply."""
        os.link(src, dst)

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._check_writable("replace", key)
        path = self._path(key)
        directory = os.path.dirname(path)
        self._mkdirs(directory, "replace", key)
        try:
            tmp = self._write_temp(directory, data, durable)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            if durable:
                _fsync_dir(directory)
        except IsADirectoryError as exc:
            raise StoreError(f"replace {key!r} in {self.url}: a folder has that name") from exc
        except OSError as exc:
            raise self._write_error("replace", key, exc) from exc

    def delete(self, key: str) -> None:
        self._check_writable("delete", key)
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except IsADirectoryError:
            pass  # a folder is not a key: nothing to delete
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                return
            raise self._write_error("delete", key, exc) from exc

    def mtime_resolution(self) -> float:
        """Nanosecond stamps on the file systems agents use (ext4, xfs, btrfs, zfs, tmpfs, NFS,
        ...); the few with coarse ones are named in :data:`COARSE_MTIMES`. (A store whose
        stamps turn out whole seconds anyway is caught by the clock probe: see
        ``ablator.store.clock.slack``.)"""
        fs = None if self.facts is None else self.facts.filesystem
        return COARSE_MTIMES.get(fs or "", 0.0)

    def capabilities(self) -> Capabilities:
        facts = self.facts
        return Capabilities(
            backend="posix",
            url=self.url,
            atomic_create=True if facts is None else facts.hard_links is not False,
            atomic_replace=True,
            hard_links=None if facts is None else facts.hard_links,
            filesystem=None if facts is None else facts.filesystem,
            read_only=self.read_only,
            notes=[] if facts is None else list(facts.notes),
        )


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
