"""Which stores ablator trusts, and the self-test that checks a store before an agent relies on it.

Two layers (see ``docs/store.md``):

* :func:`check_local_root` -- what ``open_store`` checks for a local path before handing out a
  writable :class:`~ablator.store.posix.PosixStore`: the root exists (it is created), hard links
  work (a probe links a temp file), and the root is not on a FUSE mount of an object store
  (gcsfuse, mountpoint-s3, s3fs-fuse, ...), whose create-if-absent is exclusive on one host at
  best, nor on an SMB/CIFS or 9p mount with an incoherent client cache. Refusals raise :class:`UntrustedStoreError` unless ``force``.
* :func:`self_test` -- races two creates on a scratch key, checks replace, list and delete, and
  cleans up. Agents call it once at start; ``ablator status STORE --check`` prints its result.

The self-test catches blatant breakage only (a server that ignores ``If-None-Match``, a
check-then-write emulation that loses a short race). It cannot prove atomicity: a store that
passes may still fail under other timings. Trust rests on the backend's documented guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import threading
from collections.abc import Iterable

import msgspec

from ablator import layout, records
from ablator.errors import StoreError, StoreUnavailable, UntrustedStoreError
from ablator.store.base import TMP_PREFIX, Capabilities, Store
from ablator.store.posix import DISK_FULL_ERRNOS, TRANSIENT_ERRNOS, disk_full

MOUNTINFO = "/proc/self/mountinfo"

# FUSE file systems that present an object store (or a cloud drive) as files. Their
# "exclusive create" and "link" hold at most inside one host's kernel: two hosts mounting the
# same bucket can both win. Matched against the FUSE subtype (``fuse.<name>``) and the mount
# source.
OBJECT_STORE_FUSE = frozenset(
    {
        "s3fs",
        "gcsfuse",
        "mountpoint-s3",
        "goofys",
        "geesefs",
        "rclone",
        "blobfuse",
        "blobfuse2",
        "ossfs",
        "cosfs",
        "obsfs",
        "yas3fs",
        "riofs",
        "s3ql",
        "svfs",
        "cloudfuse",
    }
)

# Network file systems other than NFS whose client caches may make one host act on another's
# stale view. cifs/smb3: link(2) is one server operation when the server has hard links (the
# probe checks), but cache=loose drops the coherence that oplocks/leases give. 9p (virtio-9p,
# WSL's drvfs): cache=loose and cache=fscache make "no attempt at consistency" (the kernel's
# v9fs documentation: for exclusive, read-only mounts).
SMB_FS = frozenset({"cifs", "smb3", "smbfs"})
NINEP_FS = frozenset({"9p"})
INCOHERENT_CACHE = {"cifs": {"loose"}, "smb3": {"loose"}, "smbfs": {"loose"}, "9p": {"loose", "fscache"}}


def _option(options: str, name: str) -> str | None:
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        if key == name:
            return value
    return None


def network_fs_verdict(mount: Mount) -> tuple[str | None, str | None]:
    """(refusal, note) for an SMB/CIFS or 9p mount (both None for other file systems): refused
    with a client cache that is not coherent between hosts, else accepted with a note saying how
    far it can be trusted."""
    fs = mount.fstype
    if fs not in SMB_FS and fs not in NINEP_FS:
        return None, None
    cache = _option(mount.super_options, "cache") or _option(mount.options, "cache")
    if cache is not None and cache in INCOHERENT_CACHE.get(fs, set()):
        return (
            f"it is on a {fs} mount ({mount.source} at {mount.mount_point}) with cache={cache}, whose "
            "client cache is not coherent between hosts: agents could act on stale claims and heartbeats. "
            f"Remount with cache={'strict' if fs in SMB_FS else 'none'}, or use NFS or S3"
        ), None
    if fs in SMB_FS:
        actimeo = _option(mount.super_options, "actimeo")
        return None, (
            f"SMB/CIFS ({fs}, {mount.source}): create-if-absent is the server's link, as atomic as its "
            "hard links (the probe passed on this host only); metadata is cached for "
            f"actimeo={actimeo or '1'} s, so keep leases at least 3 x (heartbeat + actimeo)"
        )
    return None, (
        f"9p ({mount.source}, cache={cache or 'none'}): create-if-absent is the host's link(2), atomic "
        "for the guests of one host; agents on other hosts must not share this folder through "
        "another protocol"
    )


_FORCE_HINT = "pass --force (open_store(..., force=True)) to use it anyway, at the risk of a trial run twice"


class Mount(msgspec.Struct, frozen=True):
    """One line of ``/proc/self/mountinfo``."""

    mount_point: str
    fstype: str
    source: str
    options: str = ""
    device: str = ""  # "major:minor", as st_dev of the files on it
    super_options: str = ""  # the file system's own options (cifs and 9p show cache= here)


class LocalFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`check_local_root` found about a local store root."""

    root: str
    filesystem: str | None = None  # e.g. "ext4", "nfs4", "fuse.gcsfuse"
    mount_point: str | None = None
    hard_links: bool | None = None  # None: not probed (read-only open, or the root is not writable)
    notes: list[str] = []


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo (octal)
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the text of ``/proc/<pid>/mountinfo`` (see proc(5)); malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mounts.append(
            Mount(
                mount_point=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                options=fields[5],
                device=fields[2],
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return mounts


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount] | None:
    """The mounts of this process, or None where ``mountinfo`` cannot be read (not Linux)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return None


def mount_for(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount that holds ``path``: the longest mount point that is a prefix of its real path;
    of equal ones the last mounted (it hides the others)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    best_len = -1
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if mp == "/" or real == mp or real.startswith(mp + "/"):
            n = len(mp)
            if n >= best_len:
                best, best_len = m, n
    return best


def object_store_fuse(mount: Mount) -> str | None:
    """The object store behind a FUSE mount (``"gcsfuse"``), or None when ``mount`` is not FUSE
    or not one of :data:`OBJECT_STORE_FUSE`."""
    if not mount.fstype.startswith("fuse"):
        return None
    names = {mount.fstype.partition(".")[2], os.path.basename(mount.source.split(":", 1)[0])}
    for name in names:
        if name.lower() in OBJECT_STORE_FUSE:
            return name.lower()
    return None


def _probe_hard_links(root: str) -> tuple[bool | None, str | None]:
    """Link a temp file in ``root``. (True, None): links work. (False, why): link(2) refused.
    (None, why): the probe could not run (the root is not writable)."""
    token = secrets.token_hex(8)
    src = os.path.join(root, f"{TMP_PREFIX}probe-{token}")
    dst = src + ".link"
    try:
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise StoreError(f"store {root}: {disk_full(exc)}") from None
        return None, f"the root is not writable here ({exc.strerror}); writes will fail"
    try:
        try:
            os.write(fd, b"ablator link probe")
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise StoreError(f"store {root}: {disk_full(exc)}") from None
            raise StoreError(f"store {root}: cannot write a probe file: {exc}") from None
        finally:
            os.close(fd)
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise StoreError(f"store {root}: {disk_full(exc)}") from None
            if exc.errno in (errno.EACCES, errno.EROFS):
                return None, f"the root is not writable here ({exc.strerror}); writes will fail"
            return False, f"link(2) failed: {exc.strerror or exc}"
        try:
            same = os.stat(src).st_ino == os.stat(dst).st_ino
        except OSError as exc:
            return False, f"a hard link vanished right after it was made ({exc})"
        if not same:
            return False, "link(2) made a copy, not a hard link"
        return True, None
    finally:
        for p in (dst, src):
            with contextlib.suppress(OSError):
                os.unlink(p)


def check_local_root(
    root: str, *, read_only: bool = False, force: bool = False, mountinfo: str = MOUNTINFO
) -> LocalFacts:
    """Check that a local directory can hold a store that many agents write to.

    A missing ``root`` is created (with its parents) unless ``read_only``, in which case it is an
    error. A writable open is refused (:class:`UntrustedStoreError`, unless ``force``) when the
    root is on a FUSE mount of an object store, on an SMB/CIFS or 9p mount whose client cache is
    not coherent between hosts (``cache=loose``; 9p ``cache=fscache`` too), or when its file
    system has no hard links; other FUSE, SMB/CIFS and 9p mounts are accepted with a note (the
    agent prints notes as warnings at start). A read-only open checks nothing else: readers need
    no atomic create.
    """
    root = os.path.abspath(root)
    try:
        found: os.stat_result | None = os.stat(root)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        # A soft NFS mount that does not answer says EIO or ESTALE here: the store is away for
        # now (the agent waits for it), not missing.
        cls = StoreUnavailable if exc.errno in TRANSIENT_ERRNOS else StoreError
        raise cls(f"store {root}: cannot look at the folder: {exc}") from exc
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise StoreError(f"store {root}: exists and is not a folder")
    if found is None:
        if read_only:
            raise StoreError(f"store {root}: no such folder (opened read-only, so it was not created)")
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            cls = StoreUnavailable if exc.errno in TRANSIENT_ERRNOS else StoreError
            raise cls(f"store {root}: cannot create the folder: {exc}") from exc

    mounts = read_mounts(mountinfo)
    mount = mount_for(root, mounts) if mounts is not None else None
    notes: list[str] = []
    filesystem = None if mount is None else mount.fstype
    if mounts is None:
        notes.append(
            "file system type unknown (no /proc/self/mountinfo): FUSE object-store mounts not detected"
        )
    if read_only:
        return LocalFacts(
            root=root,
            filesystem=filesystem,
            mount_point=None if mount is None else mount.mount_point,
            notes=notes,
        )

    problems: list[str] = []
    if mount is not None:
        fuse = object_store_fuse(mount)
        if fuse is not None:
            problems.append(
                f"it is on a FUSE mount of an object store ({fuse}, {mount.fstype} at {mount.mount_point}), "
                "whose exclusive create holds on one host at most: agents on two hosts could both win a trial. "
                "Use the object store directly (s3://bucket/prefix) instead"
            )
        elif mount.fstype.startswith("fuse"):
            notes.append(
                f"FUSE file system {mount.fstype} ({mount.source}): create-if-absent is as atomic as its "
                "link(2) across hosts; the self-test checks only this host"
            )
        refusal, note = network_fs_verdict(mount)
        if refusal is not None:
            problems.append(refusal)
        elif note is not None:
            notes.append(note)
        if mount.fstype.startswith("nfs"):
            notes.append(
                "NFS: liveness reads heartbeat contents (close-to-open consistency); keep leases at least "
                "3 x (heartbeat + attribute-cache time)"
            )
    hard_links, why = _probe_hard_links(root)
    if hard_links is False:
        problems.append(
            f"its file system ({filesystem or 'unknown'}) does not support hard links ({why}), and "
            "create-if-absent is link(2) of a complete temp file"
        )
    elif why:
        notes.append(why)
    if problems:
        msg = f"store {root} is not trusted: " + "; and ".join(problems) + f". {_FORCE_HINT}"
        if not force:
            raise UntrustedStoreError(msg)
        notes.append("FORCED: " + msg)
    return LocalFacts(
        root=root,
        filesystem=filesystem,
        mount_point=None if mount is None else mount.mount_point,
        hard_links=hard_links,
        notes=notes,
    )


# --- the self-test ------------------------------------------------------------------------------


def _probe(writer: str) -> bytes:
    return records.encode(records.SelfTestProbe(writer=writer))


def _race_once(store: Store, key: str) -> tuple[list[bool], list[bytes], BaseException | None]:
    """Two threads create ``key`` with different bodies, released together by a barrier."""
    bodies = [_probe("a"), _probe("b")]
    results: list[bool] = [False, False]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = store.create(key, bodies[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"ablator-selftest-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, bodies, errors[0] if errors else None


def _check(store: Store, keys: list[str], rounds: int) -> list[tuple[str, str]]:
    """Run the checks; return what failed as (area, message) pairs, area being "create",
    "replace", "list" or "delete" (empty: passed). Registers every key it writes in ``keys``
    before writing it, so that the caller can clean up."""
    failures: list[tuple[str, str]] = []
    token = secrets.token_hex(6)

    # 1. create-if-absent, sequentially: a server that ignores If-None-Match fails here always.
    k1 = layout.selftest(f"{token}-create.msgpack")
    keys.append(k1)
    a, b = _probe("a"), _probe("b")
    if not store.create(k1, a):
        failures.append(("create", "create of a new key returned False"))
    if not store.create(k1, a):
        failures.append(
            ("create", "create repeated with the same body returned False (a lost reply would look lost)")
        )
    if store.create(k1, b):
        failures.append(
            ("create", "create of an existing key with another body returned True (no create-if-absent)")
        )
    if store.get(k1) != a:
        failures.append(("create", "an existing key was overwritten by create"))

    # 2. two racing creates, a few rounds: both winning means check-then-write.
    for r in range(rounds):
        k = layout.selftest(f"{token}-race{r}.msgpack")
        keys.append(k)
        results, bodies, error = _race_once(store, k)
        if error is not None:
            raise error
        stored = store.get(k)
        if all(results):
            failures.append(
                ("create", f"two racing creates of one key both won (round {r + 1}): create is not atomic")
            )
            break
        if not any(results):
            failures.append(("create", f"two racing creates of one key both lost (round {r + 1})"))
            break
        winner = bodies[results.index(True)]
        if stored != winner:
            failures.append(
                ("create", f"after a race the key does not hold the winner's body (round {r + 1})")
            )
            break

    # 3. replace: the last body wins, sizes are right.
    k3 = layout.selftest(f"{token}-replace.msgpack")
    keys.append(k3)
    store.replace(k3, a)
    store.replace(k3, b + b"!")
    if store.get(k3) != b + b"!":
        failures.append(("replace", "replace did not leave the last body"))
    st = store.stat(k3)
    if st is None or st.size != len(b) + 1:
        failures.append(("replace", f"stat after replace is wrong: {st}"))

    # 4. list and list_dirs see what was written, fresh (no listing cache).
    listed = {e.key: e.size for e in store.list(layout.SELFTEST_DIR)}
    if listed.get(k1) != len(a) or listed.get(k3) != len(b) + 1:
        failures.append(("list", "list does not show the keys just written (a stale listing cache?)"))
    if layout.SELFTEST_DIR.rstrip("/") not in store.list_dirs(""):
        failures.append(("list", "list_dirs does not show the folder just written"))

    # 5. delete: gone from reads and listings.
    store.delete(k3)
    if store.exists(k3) or any(e.key == k3 for e in store.list(layout.SELFTEST_DIR)):
        failures.append(("delete", "a deleted key is still visible"))
    return failures


def self_test(store: Store, *, rounds: int = 3, raise_on_failure: bool = True) -> Capabilities:
    """Check that ``store`` really offers create-if-absent, replace, list and delete, and return
    its :class:`Capabilities` with ``self_test`` set to ``"passed"`` or ``"failed: ..."``.

    Writes a few scratch keys under ``selftest/`` (unique per call) and deletes them afterwards.
    Agents call this once at start (with ``raise_on_failure=True``: a failure raises
    :class:`UntrustedStoreError`); ``ablator status STORE --check`` calls it with
    ``raise_on_failure=False`` to report. A read-only store is not tested (``"not run: ..."``).

    >>> from ablator.store import open_store, self_test
    >>> self_test(open_store("memory://doc")).self_test
    'passed'
    """
    caps = store.capabilities()
    if store.read_only:
        return msgspec.structs.replace(caps, self_test="not run: the store is read-only")
    keys: list[str] = []
    try:
        found = _check(store, keys, rounds)
    except StoreError as exc:
        if raise_on_failure:
            raise  # a missing bucket, a read-only folder...: the StoreError says it best
        found = [("store", f"a store operation failed: {exc}")]
    finally:
        for k in keys:
            with contextlib.suppress(StoreError):  # best effort: a leftover scratch key is harmless
                store.delete(k)
    if not found:
        return msgspec.structs.replace(caps, self_test="passed")
    areas = {area for area, _ in found}
    failures = [msg for _, msg in found]
    caps = msgspec.structs.replace(
        caps,
        self_test="failed: " + "; ".join(failures),
        atomic_create=caps.atomic_create and "create" not in areas,
        atomic_replace=caps.atomic_replace and "replace" not in areas,
    )
    if raise_on_failure:
        raise UntrustedStoreError(
            f"store {store.url} failed the self-test: {'; '.join(failures)}. ablator needs an atomic "
            f"create-if-absent to run each trial once; {_FORCE_HINT}"
        )
    return caps


__all__ = [
    "OBJECT_STORE_FUSE",
    "LocalFacts",
    "Mount",
    "check_local_root",
    "mount_for",
    "object_store_fuse",
    "parse_mountinfo",
    "read_mounts",
    "self_test",
]
