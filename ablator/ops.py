"""Operating an experiment: ``launch`` (with a code snapshot), ``stop``, ``retry --failed``, ``gc``.

Everything here talks to the store only through create-if-absent records, so it is safe while
agents run: ``launch`` creates ``experiment.json`` once, ``--extend N`` creates one
:class:`~ablator.records.Extension`, ``stop`` creates ``control/stop.msgpack``, ``retry``
creates one :class:`~ablator.records.Retry`. Nothing is rewritten; ``gc`` deletes only
checkpoints that no attempt can resume from any more.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ablator.agent.codecache import sha256_hex
from ablator.errors import ConfigError

MAX_SNAPSHOT_BYTES = 256 * 1024**2
# Never worth shipping, with or without a .gitignore: byte code is rebuilt on import.
_ALWAYS_SKIPPED_DIRS = {".git", "__pycache__"}
_ALWAYS_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same files always hash the same


# --- code snapshots --------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A deterministic zip of a code folder: the same files give the same bytes and sha256."""

    data: bytes
    sha256: str
    files: list[str]
    git_commit: str | None = None
    skipped: list[str] = field(default_factory=list)  # links pointing outside the folder


def _git(directory: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.decode("utf-8", "surrogateescape")


class _Rule:
    """One .gitignore line, compiled (the subset of gitignore(5) that real projects use:
    ``#`` comments, ``!`` negation, ``/`` anchoring, a trailing ``/`` for folders only, ``*``,
    ``?``, ``[...]`` and ``**``)."""

    def __init__(self, pattern: str) -> None:
        self.negate = pattern.startswith("!")
        if self.negate:
            pattern = pattern[1:]
        if pattern.startswith("\\"):
            pattern = pattern[1:]
        self.dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        # A slash anywhere but at the end anchors the pattern to the .gitignore's folder.
        self.anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        self.regex = re.compile(self._translate(pattern))

    @staticmethod
    def _translate(pattern: str) -> str:
        out = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("/**", i) and i + 3 == len(pattern):
                out.append("/.*")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[":
                j = pattern.find("]", i + 1)
                if j == -1:
                    out.append(re.escape("["))
                    i += 1
                else:
                    body = pattern[i + 1 : j].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append(f"[{body}]")
                    i = j + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        return "".join(out) + r"\Z"

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.anchored:
            return self.regex.match(rel) is not None
        return self.regex.match(rel.rsplit("/", 1)[-1]) is not None


def _read_rules(path: Path) -> list[_Rule]:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    rules = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not line.endswith("\\ "):
            line = line.rstrip()
        rules.append(_Rule(line))
    return rules


def _walk_with_gitignore(root: Path) -> Iterator[str]:
    """Files under ``root`` (relative, ``/``-separated) that .gitignore files do not exclude.
    For folders that are not inside a git work tree."""

    # Each level: (folder relative to root, its rules); a path is ignored by the last matching
    # rule of the deepest .gitignore that has one, and nothing inside an ignored folder is
    # re-included (as in git).
    def ignored(rel: str, is_dir: bool, stack: list[tuple[str, list[_Rule]]]) -> bool:
        verdict = False
        for base, rules in stack:
            sub = rel[len(base) + 1 :] if base else rel
            for rule in rules:
                if rule.matches(sub, is_dir):
                    verdict = not rule.negate
        return verdict

    def walk(rel_dir: str, stack: list[tuple[str, list[_Rule]]]) -> Iterator[str]:
        folder = root / rel_dir if rel_dir else root
        rules = _read_rules(folder / ".gitignore")
        stack = [*stack, (rel_dir, rules)] if rules else stack
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
    """
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError(f"--code {os.fspath(directory)!r}: not a folder")
    files, commit = _list_files(root)
    buf = io.BytesIO()
    kept: list[str] = []
    skipped: list[str] = []
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for rel in files:
            parts = rel.split("/")
            if any(p in _ALWAYS_SKIPPED_DIRS for p in parts[:-1]) or rel.endswith(_ALWAYS_SKIPPED_SUFFIXES):
                continue
            path = root / rel
            try:
                real = path.resolve()
                if real != root and root not in real.parents:
                    skipped.append(rel)
                    continue
                if not real.is_file():
                    continue  # deleted since git listed it, a submodule, a socket...
                data = real.read_bytes()
                mode = real.stat().st_mode
            except OSError:
                continue
            total += len(data)
            if total > MAX_SNAPSHOT_BYTES:
                raise ConfigError(
                    f"--code {os.fspath(directory)!r}: the snapshot exceeds {MAX_SNAPSHOT_BYTES // 1024**2} MiB; "
                    "exclude data, checkpoints and environments with a .gitignore"
                )
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so that the mode bits below are read back
            info.external_attr = (0o100755 if mode & 0o111 else 0o100644) << 16
            zf.writestr(info, data)
            kept.append(rel)
    data = buf.getvalue()
    return Snapshot(data=data, sha256=sha256_hex(data), files=kept, git_commit=commit, skipped=skipped)


__all__: Sequence[str] = ["Snapshot", "snapshot_code"]
