"""Code snapshots, both ends: ``launch --code`` packs a folder into a deterministic zip and
uploads it as ``code/<sha256>.zip``; each agent fetches it, checks its hash against the
experiment, unpacks it safely into a local cache and puts it first on ``sys.path``.

What goes in: the files git would see (tracked and untracked, minus what .gitignore excludes;
outside git, pathspec's ``GitIgnoreSpec`` reads the .gitignore files the same way), byte code
and ablator's own output (a store or report inside the folder) left out.

Write access to a store means running code on every agent that serves it: the snapshot is the
code the agents import. The checks on unpacking stop a corrupted or truncated upload and a zip
crafted to write outside the cache folder; they cannot stop code that its author meant to run.

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
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec
from filelock import FileLock

from ablator import layout
from ablator.errors import AblatorError, ConfigError, StoreError, StoreUnavailable
from ablator.store.base import RecordTooLarge, Store

MAX_SNAPSHOT_BYTES = 256 * 1024**2
"""The largest snapshot ``launch --code`` uploads (data and checkpoints belong in .gitignore)."""
MAX_UNPACKED_BYTES = 2 * 1024**3
"""The most an agent unpacks from one snapshot (a zip bomb must not fill the disk)."""
MAX_ZIP_BYTES = MAX_SNAPSHOT_BYTES + 64 * 1024**2
"""The most an agent reads of a stored snapshot: the files' limit and the zip's own headers (a
few hundred bytes a file; deflate never grows a file by more than a fraction of a percent)."""
# Never worth shipping, with or without a .gitignore: byte code is rebuilt on import.
_ALWAYS_SKIPPED_DIRS = {".git", "__pycache__"}
_ALWAYS_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same files always hash the same
_COMPLETE = ".ablator-complete"


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 hex digits (what names a snapshot in the store)."""
    return hashlib.sha256(data).hexdigest()


# --- packing (launch --code) -----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A deterministic zip of a code folder: the same files give the same bytes and sha256."""

    data: bytes
    sha256: str
    files: list[str]
    git_commit: str | None = None
    skipped: list[str] = field(default_factory=list)  # links pointing outside the folder
    #: files left out because they are not regular files: (relative path, what it is), e.g.
    #: ("data/in", "a FIFO"); reading one would block (a FIFO) or never end (a device)
    special: list[tuple[str, str]] = field(default_factory=list)


#: The largest .gitignore read (a bigger one is not a list of patterns).
MAX_GITIGNORE_BYTES = 1024**2


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO", "a socket", "a character device", ...)."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "a special file"


def _git(directory: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.decode("utf-8", "surrogateescape")


def _read_spec(path: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_GITIGNORE_BYTES:
        # Reading a FIFO would block and a device never end; guessing what it excludes could ship
        # data (or leave code out): refuse
        what = file_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else f"{st.st_size:,} bytes"
        raise ConfigError(
            f"--code: {path} is {what}, not a .gitignore ablator can read (a regular file of at most "
            f"{MAX_GITIGNORE_BYTES // 1024**2} MiB); replace it with a file of patterns, or remove it; nothing "
            "was written"
        )
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_GITIGNORE_BYTES + 1).decode("utf-8", errors="surrogateescape")
    except OSError:
        return None
    spec = pathspec.GitIgnoreSpec.from_lines(text.splitlines())
    return spec if len(spec) else None


def _walk_with_gitignore(root: Path) -> Iterator[str]:
    """Files under ``root`` (relative, ``/``-separated) that .gitignore files do not exclude, as
    git decides it (pathspec's ``GitIgnoreSpec``). For folders that are not inside a git work
    tree."""

    # Each level: (folder relative to root, its patterns). A path is ignored by the last
    # matching pattern, a deeper .gitignore overriding a shallower one, and nothing inside an
    # ignored folder is re-included (as in git, since an ignored folder is not entered).
    def ignored(rel: str, is_dir: bool, stack: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
        verdict = False
        for base, spec in stack:
            sub = rel[len(base) + 1 :] if base else rel
            include = spec.check_file(sub + "/" if is_dir else sub).include
            if include is not None:
                verdict = include
        return verdict

    def walk(rel_dir: str, stack: list[tuple[str, pathspec.GitIgnoreSpec]]) -> Iterator[str]:
        folder = root / rel_dir if rel_dir else root
        spec = _read_spec(folder / ".gitignore")
        stack = [*stack, (rel_dir, spec)] if spec is not None else stack
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir()
            if is_dir and entry.name in _ALWAYS_SKIPPED_DIRS:
                continue
            if ignored(rel, is_dir, stack):
                continue
            if is_dir:
                yield from walk(rel, stack)
            else:
                yield rel

    yield from walk("", [])


def _list_files(root: Path) -> tuple[list[str], str | None]:
    """The files to snapshot and the git commit (None outside git)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is not None:
        # git blocks on a .gitignore that is a FIFO (and never ends one that is a device): check
        # them first, walking what .gitignore files do not exclude (no file is read but them)
        for _ in _walk_with_gitignore(root):
            pass
        # Tracked files plus untracked ones that .gitignore does not exclude, relative to root.
        out = _git(root, "ls-files", "-co", "--exclude-standard", "-z", "--", ".")
        if out is not None:
            commit = _git(root, "rev-parse", "--verify", "-q", "HEAD")
            files = sorted({f for f in out.split("\0") if f})
            return files, (commit.strip() or None) if commit else None
    return sorted(_walk_with_gitignore(root)), None


def snapshot_code(directory: str | os.PathLike[str]) -> Snapshot:
    """Zip ``directory`` for every agent: the files git would see (tracked and untracked, minus
    what .gitignore excludes; without git, a .gitignore matcher does the same), byte code left
    out, in a deterministic archive whose sha256 names it in the store.

    Symbolic links are followed when they point inside ``directory`` and skipped otherwise.
    Files that are not regular files (FIFOs, sockets, device nodes) are left out and listed in
    :attr:`Snapshot.special`; a .gitignore that is not a regular file is refused.
    """
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError(f"--code {os.fspath(directory)!r}: not a folder")
    files, commit = _list_files(root)
    outputs = _output_folders(root, files)
    buf = io.BytesIO()
    kept: list[str] = []
    skipped: list[str] = []
    special: list[tuple[str, str]] = []
    total = 0
    # git lists a symbolic link to a folder as one entry: follow it (inside the folder only)
    files = sorted(set(_expand_linked_folders(root, files)))
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for rel in files:
            parts = rel.split("/")
            if any(p in _ALWAYS_SKIPPED_DIRS for p in parts[:-1]) or rel.endswith(_ALWAYS_SKIPPED_SUFFIXES):
                continue
            if any(rel.startswith(o) for o in outputs):
                continue  # a store or report inside the code folder is output, not code
            path = root / rel
            try:
                real = path.resolve()
                if real != root and root not in real.parents:
                    skipped.append(rel)
                    continue
                st = real.stat()
                if stat.S_ISDIR(st.st_mode):
                    continue  # a submodule
                if not stat.S_ISREG(st.st_mode):
                    # a FIFO would block the read and a device never end: left out, and said
                    special.append((rel, file_kind(st.st_mode)))
                    continue
                # the size before the read: a huge file is refused without reading it into memory
                if total + st.st_size > MAX_SNAPSHOT_BYTES:
                    raise ConfigError(
                        f"--code {os.fspath(directory)!r}: the snapshot exceeds "
                        f"{MAX_SNAPSHOT_BYTES // 1024**2} MiB ({rel} alone is {st.st_size:,} bytes); exclude data, "
                        "checkpoints and environments with a .gitignore; nothing was written"
                    )
                with open(real, "rb") as f:
                    # read(n) allocates n bytes up front: ask for what stat said, plus one to see growth
                    data = f.read(st.st_size + 1)
                mode = st.st_mode
            except OSError:
                continue  # deleted since git listed it
            total += len(data)
            if total > MAX_SNAPSHOT_BYTES:  # it grew while being read
                raise ConfigError(
                    f"--code {os.fspath(directory)!r}: the snapshot exceeds {MAX_SNAPSHOT_BYTES // 1024**2} MiB "
                    f"({rel} grew while it was read); exclude data, checkpoints and environments with a "
                    ".gitignore; nothing was written"
                )
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so that the mode bits below are read back
            info.external_attr = (0o100755 if mode & 0o111 else 0o100644) << 16
            zf.writestr(info, data)
            kept.append(rel)
    data = buf.getvalue()
    return Snapshot(
        data=data, sha256=sha256_hex(data), files=kept, git_commit=commit, skipped=skipped, special=special
    )


def _expand_linked_folders(root: Path, files: list[str]) -> Iterator[str]:
    """``files`` with each symbolic link to a folder replaced by the files under its target
    (named under the link); a link pointing outside ``root`` stays as it is (skipped later)."""
    for rel in files:
        path = root / rel
        if not (path.is_symlink() and path.is_dir()):
            yield rel
            continue
        real = path.resolve()
        if real != root and root not in real.parents:
            yield rel
            continue
        for folder, dirs, names in os.walk(real):  # links below are not followed: no cycles
            dirs[:] = [d for d in dirs if d not in _ALWAYS_SKIPPED_DIRS]
            sub = Path(folder).relative_to(real).as_posix()
            for name in names:
                yield f"{rel}/{name}" if sub == "." else f"{rel}/{sub}/{name}"


def entry_missing(snap: Snapshot, directory: str | os.PathLike[str], module: str) -> str | None:
    """Why the entry point's ``module`` (imported from ``directory`` while validating) is not in
    the snapshot, or None when it is there (or comes from elsewhere, e.g. an installed package).
    Agents import from the snapshot alone, so launch checks the snapshot, not the folder."""
    loaded = sys.modules.get(module)
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if not origin:
        return None
    root = Path(directory).absolute()
    try:
        rel = Path(os.path.abspath(origin)).relative_to(root).as_posix()
    except ValueError:
        try:  # the folder itself may be reached through a link
            rel = Path(origin).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return None  # imported from outside the folder: not the snapshot's business
    if rel in snap.files:
        return None
    if rel in snap.skipped or any(rel.startswith(s + "/") for s in snap.skipped):
        why = "it is a symbolic link pointing outside the folder"
    else:
        why = "it is not among the snapshot's files (ignored by .gitignore, or not a regular file)"
    return f"the entry point's module {module!r} is {rel}, which the snapshot leaves out: {why}"


def _output_folders(root: Path, files: list[str]) -> list[str]:
    """Folders under ``root`` that hold ablator's own output: a store (``experiment.json`` beside
    ``trials/``, ``code/`` or ``agents/``) or a report (``report.html`` beside ``effects.json``).
    Without this, a store or report written inside the code folder (untracked, not yet in
    .gitignore) would change the snapshot's hash at every launch."""
    names = set(files)
    out: list[str] = []
    for rel in files:
        folder, _, base = rel.rpartition("/")
        prefix = f"{folder}/" if folder else ""
        if not prefix:
            continue  # the code folder itself is never output
        is_store = base == layout.EXPERIMENT and any(
            (root / prefix / d).is_dir() for d in (layout.TRIALS_DIR, layout.CODE_DIR, layout.AGENTS_DIR)
        )
        is_report = base == "report.html" and f"{prefix}effects.json" in names
        if is_store or is_report:
            out.append(prefix)
    return out


def upload(store: Store, snap: Snapshot) -> None:
    """Store ``snap`` as ``code/<sha256>.zip`` (created once; see ``docs/store.md``)."""
    key = layout.code(snap.sha256)
    if store.create(key, snap.data, durable=True):
        return
    # Somebody else's bytes under our hash: either the same snapshot written by an older
    # ablator (another zip of the same files) or a corrupt upload. Only the latter is replaced.
    try:
        existing = store.get(key, max_bytes=MAX_ZIP_BYTES)
    except RecordTooLarge:
        existing = None  # not a snapshot this ablator wrote: replaced like a corrupt one
    if existing is None or sha256_hex(existing) != snap.sha256:
        store.replace(key, snap.data, durable=True)


# --- unpacking (agents) ----------------------------------------------------------------------


class CodeSnapshotError(AblatorError):
    """A code snapshot is missing, does not match its hash, or tries to escape its folder."""


_REUPLOAD = (
    "Run `python -m ablator launch EXPERIMENT_FILE --store URL --code DIR` again with the code it was launched "
    "with (the same files hash the same: the snapshot is uploaded again), or restore the store's code/ folder "
    "from a backup; if experiment.json was edited, restore it as launched"
)


def default_cache_dir() -> Path:
    """``$ABLATOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/ablator``, else ``~/.cache/ablator``."""
    env = os.environ.get("ABLATOR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ablator"


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
        raise CodeSnapshotError(
            f"{store.url}/{layout.EXPERIMENT}: `code_sha256` is {sha256!r}, not a sha256 hex digest (launch never "
            "writes that: the file was edited); restore it as launched, from a backup or a copy of the store"
        )
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
            data = store.read(key, max_bytes=MAX_ZIP_BYTES)
        except FileNotFoundError:
            raise CodeSnapshotError(
                f"code snapshot {key!r} is missing from {store.url} (the `code_sha256` of {layout.EXPERIMENT} "
                f"names it). {_REUPLOAD}"
            ) from None
        except StoreUnavailable:
            raise  # the store is away for now, the snapshot is not broken: the caller waits
        except StoreError as exc:
            raise CodeSnapshotError(f"cannot read code snapshot {key!r} from {store.url}: {exc}") from exc
        actual = sha256_hex(data)
        if actual != sha256:
            raise CodeSnapshotError(
                f"code snapshot {key!r} in {store.url} hashes to {actual}, not {sha256} as the "
                f"experiment says: it was corrupted or replaced; refusing to run it. {_REUPLOAD}"
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


__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "MAX_UNPACKED_BYTES",
    "CodeSnapshotError",
    "Snapshot",
    "activate",
    "check_member",
    "default_cache_dir",
    "ensure_code",
    "sha256_hex",
    "snapshot_code",
    "unpack_zip",
    "upload",
]
