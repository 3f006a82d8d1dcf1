"""Local directories and NFS mounts.

create-if-absent: the whole body goes to a temp file in the target's directory, then ``os.link``
puts it in place. ``link`` fails with EEXIST when the name exists, atomically, on local file
systems and on NFS v3/v4 (unlike O_EXCL on old NFS clients), and no reader ever sees a
half-written record because the name appears only once the body is complete.

atomic replace: temp file in the same directory + ``os.replace`` (rename is atomic within a file
system; fsspec's local transactions move files from /tmp and are not).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from ablator.errors import StoreError
from ablator.store.base import Capabilities, Entry, Store

_TMP_PREFIX = ".tmp-"


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


class PosixStore(Store):
    """A store rooted at a local (or NFS-mounted) directory."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = Path(self.root).as_uri()
        self.read_only = read_only

    # -- helpers ---------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid store key {key!r} in {self.url}")
        return os.path.join(self.root, key)

    def _check_writable(self, op: str, key: str) -> None:
        if self.read_only:
            raise StoreError(f"{op} {key!r}: store {self.url} was opened read-only")

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
        finally:
            os.close(fd)
        return tmp

    def _mkdirs(self, directory: str, op: str, key: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{op} {key!r} in {self.url}: cannot create folder {directory}: {exc}") from exc

    # -- reads -----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except IsADirectoryError:
            raise FileNotFoundError(key) from None
        except OSError as exc:
            raise StoreError(f"read {key!r} from {self.url}: {exc}") from exc

    def stat(self, key: str) -> Entry | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"stat {key!r} in {self.url}: {exc}") from exc
        return Entry(key, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> list[Entry]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        out: list[Entry] = []
        stack = [base]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StoreError(f"list {prefix!r} in {self.url}: {exc}") from exc
            with it:
                for de in it:
                    if de.name.startswith(_TMP_PREFIX):
                        continue
                    if de.is_dir(follow_symlinks=False):
                        stack.append(de.path)
                        continue
                    try:
                        st = de.stat()
                    except FileNotFoundError:
                        continue  # deleted while we listed
                    rel = os.path.relpath(de.path, self.root).replace(os.sep, "/")
                    out.append(Entry(rel, st.st_size, st.st_mtime))
        out.sort(key=lambda e: e.key)
        return out

    def list_dirs(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            with os.scandir(base) as it:
                return sorted(de.name for de in it if de.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"list {prefix!r} in {self.url}: {exc}") from exc

    # -- writes ----------------------------------------------------------------------------
    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self._check_writable("create", key)
        path = self._path(key)
        directory = os.path.dirname(path)
        self._mkdirs(directory, "create", key)
        try:
            tmp = self._write_temp(directory, data, durable)
        except OSError as exc:
            raise StoreError(f"create {key!r} in {self.url}: {exc}") from exc
        try:
            try:
                self._link(tmp, path)
            except FileExistsError:
                # Taken -- or our own link whose reply was lost (NFS retransmission): the body
                # carries a random nonce, so byte equality means it is ours.
                try:
                    return self.read(key) == data
                except FileNotFoundError:
                    return False  # deleted in between (gc); still not ours
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise StoreError(
                        f"create {key!r} in {self.url}: this file system does not support hard links, "
                        "so create-if-absent cannot be atomic (use a local disk, NFS or S3)"
                    ) from exc
                raise StoreError(f"create {key!r} in {self.url}: {exc}") from exc
            if durable:
                _fsync_dir(directory)
            return True
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

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
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            if durable:
                _fsync_dir(directory)
        except OSError as exc:
            raise StoreError(f"replace {key!r} in {self.url}: {exc}") from exc

    def delete(self, key: str) -> None:
        self._check_writable("delete", key)
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"delete {key!r} in {self.url}: {exc}") from exc

    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="posix", url=self.url, atomic_create=True, atomic_replace=True, read_only=self.read_only
        )
