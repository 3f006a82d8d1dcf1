"""Code snapshots (ablator.codesnap): what goes in (.gitignore, git), determinism, and the agent-side checks (hash,
paths that escape the cache folder, links) before anything is unpacked or imported."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from ablator import layout
from ablator.codesnap import CodeSnapshotError, activate, ensure_code, sha256_hex, snapshot_code, unpack_zip
from ablator.store import open_store
from ablator.store.base import Store


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.procs  # snapshot_code asks git whether the folder is in a repository
def test_snapshot_respects_gitignore_without_git(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(
        src,
        {
            ".gitignore": "data/\n*.log\n!keep.log\n/top.txt\n",
            "pkg/a.py": "A = 1\n",
            "pkg/sub/b.py": "B = 2\n",
            "pkg/keep.log": "kept by negation\n",
            "pkg/noise.log": "ignored by *.log\n",
            "pkg/top.txt": "not anchored here: kept\n",
            "pkg/__pycache__/a.cpython-311.pyc": "byte code\n",
            "pkg/sub/.gitignore": "b_local.py\n",
            "pkg/sub/b_local.py": "ignored by the nested .gitignore\n",
            "data/big.bin": "ignored folder\n",
            "top.txt": "anchored: ignored\n",
        },
    )
    os.symlink("/etc/hostname", src / "pkg" / "outside")
    snap = snapshot_code(src)
    assert snap.files == [
        ".gitignore",
        "pkg/a.py",
        "pkg/keep.log",
        "pkg/sub/.gitignore",
        "pkg/sub/b.py",
        "pkg/top.txt",
    ]
    assert snap.skipped == ["pkg/outside"]
    assert snap.git_commit is None
    # Deterministic: the same files give the same bytes (mtimes do not matter).
    os.utime(src / "pkg" / "a.py", (1, 1))
    assert snapshot_code(src).sha256 == snap.sha256 == sha256_hex(snap.data)
    (src / "pkg" / "a.py").write_text("A = 2\n")
    assert snapshot_code(src).sha256 != snap.sha256


@pytest.mark.procs
def test_snapshot_in_git_repo_lists_what_git_sees(tmp_path: Path) -> None:
    src = tmp_path / "repo"
    _tree(src, {".gitignore": "*.ckpt\n", "m.py": "X = 1\n", "new.py": "untracked\n", "w.ckpt": "ignored\n"})
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    subprocess.run(["git", "init", "-q", str(src)], check=True, env=env)
    subprocess.run(["git", "-C", str(src), "add", ".gitignore", "m.py"], check=True, env=env)
    subprocess.run(["git", "-C", str(src), "commit", "-qm", "init"], check=True, env=env)
    head = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    snap = snapshot_code(src)
    assert snap.files == [".gitignore", "m.py", "new.py"]
    assert snap.git_commit == head.stdout.strip()


# gitignore(5) cases the hand-written matcher this replaced did not cover (escapes, trailing
# spaces, "**" in the middle, a negated folder, character classes, a pattern with a slash in a
# nested .gitignore). The same tree, outside git and inside a fresh git repository, must give
# the same files: outside git, pathspec's GitIgnoreSpec decides what git would.
GITIGNORE_TREE = {
    ".gitignore": (
        "# a comment\n"
        "\\#literal.txt\n"
        "*.tmp\n"
        "!important.tmp\n"
        "build/\n"
        "docs/**/draft.md\n"
        "log[0-9].txt\n"
        "trailing.txt   \n"
        "/only_root.cfg\n"
        "cache/*\n"
        "!cache/keep/\n"
    ),
    "#literal.txt": "ignored via an escaped #\n",
    "a.tmp": "ignored\n",
    "important.tmp": "re-included\n",
    "build/out.bin": "ignored folder\n",
    "src/build/gen.py": "a folder called build anywhere is ignored\n",
    "docs/draft.md": "docs/**/draft.md matches zero folders too\n",
    "docs/x/y/draft.md": "ignored\n",
    "docs/x/final.md": "kept\n",
    "log1.txt": "ignored\n",
    "logA.txt": "kept\n",
    "trailing.txt": "trailing spaces are stripped: ignored\n",
    "only_root.cfg": "ignored\n",
    "sub/only_root.cfg": "kept: the pattern is anchored\n",
    "cache/junk.bin": "ignored\n",
    "cache/keep/kept.bin": "re-included folder\n",
    "nested/.gitignore": "deep/*.py\n!deep/keep.py\n",
    "nested/deep/drop.py": "ignored by the nested file\n",
    "nested/deep/keep.py": "re-included by the nested file\n",
    "nested/other/deep/x.py": "kept: nested patterns with a slash are anchored to their folder\n",
}


@pytest.mark.procs
def test_snapshot_outside_git_lists_what_git_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    _tree(plain, GITIGNORE_TREE)
    repo = tmp_path / "repo"
    _tree(repo, GITIGNORE_TREE)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert snapshot_code(repo).git_commit is None  # no commit yet; listed by git itself
    by_git = snapshot_code(repo).files
    by_pathspec = snapshot_code(plain).files
    assert by_pathspec == by_git
    assert "important.tmp" in by_git and "cache/keep/kept.bin" in by_git and "a.tmp" not in by_git
    assert "nested/deep/keep.py" in by_git and "nested/deep/drop.py" not in by_git


def _store_with(tmp_path: Path, data: bytes, sha: str | None = None) -> tuple[Store, str]:
    store = open_store(tmp_path / "store")
    sha = sha or sha256_hex(data)
    assert store.create(layout.code(sha), data)
    return store, sha


@pytest.mark.procs  # the snapshot asks git whether the folder is in a repository
def test_ensure_code_unpacks_once_and_imports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, {"snapmod_ok/__init__.py": "VALUE = 'from the snapshot'\n", "run.sh": "#!/bin/sh\n"})
    os.chmod(src / "run.sh", 0o755)
    snap = snapshot_code(src)
    store, sha = _store_with(tmp_path, snap.data)
    cache = tmp_path / "cache"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_code(store, sha, cache))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    folder = results[0]
    assert (folder / "snapmod_ok" / "__init__.py").read_text() == "VALUE = 'from the snapshot'\n"
    assert os.stat(folder / "run.sh").st_mode & stat.S_IXUSR
    # No half-unpacked leftovers beside the target.
    assert sorted(p.name for p in (cache / "code").iterdir() if not p.name.endswith(".lock")) == [sha]
    activate(folder)
    try:
        import snapmod_ok

        assert snapmod_ok.VALUE == "from the snapshot"
        assert sys.path[0] == str(folder)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("snapmod_ok", None)


@pytest.mark.procs  # the snapshot asks git whether the folder is in a repository
def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    good = snapshot_code(_mk(tmp_path / "a", {"m.py": "X = 1\n"}))
    evil = snapshot_code(_mk(tmp_path / "b", {"m.py": "X = 'replaced'\n"}))
    # The store holds other bytes under the good hash (a replaced or corrupted upload).
    store, sha = _store_with(tmp_path, evil.data, sha=good.sha256)
    with pytest.raises(CodeSnapshotError, match="hashes to"):
        ensure_code(store, sha, tmp_path / "cache")
    assert not (tmp_path / "cache" / "code" / sha).exists()


def test_missing_snapshot_and_bad_hash_text(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    with pytest.raises(CodeSnapshotError, match="missing"):
        ensure_code(store, "0" * 64, tmp_path / "cache")
    with pytest.raises(CodeSnapshotError, match="sha256"):
        ensure_code(store, "../../etc", tmp_path / "cache")


def _mk(root: Path, files: dict[str, str]) -> Path:
    _tree(root, files)
    return root


def _zip(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        ("../escape.py", 0o100644, r"'\.\.'"),
        ("pkg/../../escape.py", 0o100644, r"'\.\.'"),
        ("/tmp/abs.py", 0o100644, "absolute"),
        ("C:/win.py", 0o100644, "absolute"),
        ("pkg\\..\\x.py", 0o100644, "invalid name"),
        ("link", 0o120777, "symbolic link"),
    ],
)
def test_escaping_zip_is_refused(tmp_path: Path, name: str, mode: int, why: str) -> None:
    data = _zip(
        [("ok.py", b"X = 1\n", 0o100644), (name, b"../../etc/passwd" if mode == 0o120777 else b"bad\n", mode)]
    )
    store, sha = _store_with(tmp_path, data)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(CodeSnapshotError, match=why):
        ensure_code(store, sha, cache)
    # Nothing was written: not the good member, not the escaping one.
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "deep" / "escape.py").exists()
    assert [p.name for p in (cache / "code").iterdir() if not p.name.endswith(".lock")] == []


def test_unpack_rejects_non_zip(tmp_path: Path) -> None:
    with pytest.raises(CodeSnapshotError, match="not a zip"):
        unpack_zip(b"plain bytes", tmp_path)
