"""Special files (FIFOs, sockets, device nodes, huge files) among the inputs a user hands
ablator (issue 12): the code folder of ``launch --code``, experiment files for every command
that reads one, and store folders handed to readers. None may block or read without end: each
is left out or refused with a message that says what and where. Config files are
tests/test_hostile_files.py's."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import yaml
from testkit import ablator_cli, child_env

from ablator import codesnap, layout
from ablator.errors import ConfigError, StoreError
from ablator.store import open_store

MODULE = """
from ablator.config import BaseConfig


class C(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.0


def trial(config: C, ctx):
    return {"score": config.x}
"""

EXPERIMENT = {
    "name": "special",
    "entry": "specialmod:trial",
    "config": {},
    "metric": {"name": "score", "mode": "max"},
    "design": {"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
    "resources": {"gpu": "none"},
}


def _code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "specialmod.py").write_text(MODULE)
    return code


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))  # the file stays after the socket is closed
    finally:
        s.close()


def _device(path: Path) -> bool:
    """A character device node (/dev/null's numbers) at ``path``; False where this user may not
    create one (CI runs as root; elsewhere the FIFO and the socket stand for special files)."""
    try:
        os.mknod(path, 0o644 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return False
    return True


@pytest.mark.procs
def test_special_files_in_the_code_folder_are_left_out_and_named(tmp_path: Path) -> None:
    code = _code(tmp_path)
    os.mkfifo(code / "feed.pipe")
    _socket(code / "server.sock")
    expected = ["feed.pipe (a FIFO)", "server.sock (a socket)"]
    if _device(code / "null.dev"):
        expected.insert(1, "null.dev (a character device)")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(EXPERIMENT))
    store = tmp_path / "store"
    out = ablator_cli(
        "launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"left out {len(expected)} file(s) that are not regular files: {', '.join(expected)}" in out.stdout
    with zipfile.ZipFile(io.BytesIO(next((store / "code").glob("*.zip")).read_bytes())) as zf:
        assert zf.namelist() == ["specialmod.py"]


@pytest.mark.procs
@pytest.mark.parametrize("git", [False, True])
def test_a_gitignore_that_is_not_a_file_is_refused_without_blocking(tmp_path: Path, git: bool) -> None:
    code = _code(tmp_path)
    if git:  # git itself blocks reading it: ablator checks before asking git
        subprocess.run(["git", "init", "-q", str(code)], check=True)
        subprocess.run(["git", "-C", str(code), "add", "specialmod.py"], check=True)
    (code / "sub").mkdir()
    os.mkfifo(code / "sub" / ".gitignore")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(EXPERIMENT))
    store = tmp_path / "store"
    # the timeout is a bound on a hang, not a measurement: the git fallback alone would wait 60 s
    out = ablator_cli(
        "launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path, timeout=50
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{code / 'sub' / '.gitignore'} is a FIFO, not a .gitignore ablator can read" in out.stderr
    assert not store.exists()


@pytest.mark.procs  # git is asked whether the folder is a work tree
def test_a_huge_file_in_the_code_folder_is_refused_before_it_is_read(tmp_path: Path) -> None:
    code = _code(tmp_path)
    with open(code / "weights.bin", "wb") as f:
        f.truncate(codesnap.MAX_SNAPSHOT_BYTES + 1)  # sparse: costs no disk
    tracemalloc.start()
    try:
        with pytest.raises(
            ConfigError, match=r"the snapshot exceeds 256 MiB \(weights\.bin alone is 268,435,457"
        ):
            codesnap.snapshot_code(code)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < codesnap.MAX_SNAPSHOT_BYTES // 16  # never read into memory


@pytest.mark.procs
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_experiment_files_that_are_not_files_are_refused_by_every_command(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "exp.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")  # endless
    store = str(tmp_path / "store")
    for cmd in (
        ("plan", str(path)),
        ("launch", str(path), "--store", store),
        ("run", str(path), "--store", store),
        ("run", str(path)),
    ):
        out = ablator_cli(*cmd, cwd=tmp_path, timeout=60)
        assert out.returncode == 1, (cmd, out.stderr)
        assert f"{path}: not a regular file (a folder, pipe or device)" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "ablator-runs").exists()


@pytest.mark.procs
def test_special_files_in_a_store_are_refused_by_its_readers(tmp_path: Path) -> None:
    code = _code(tmp_path)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(EXPERIMENT))
    store = tmp_path / "store"
    env = child_env(code)
    assert ablator_cli("launch", str(exp_file), "--store", str(store), cwd=tmp_path, env=env).returncode == 0
    assert ablator_cli("run", str(exp_file), "--store", str(store), cwd=tmp_path, env=env).returncode == 0
    # a finished result replaced by a link to an endless device, the experiment by a FIFO (a
    # hostile copy of a store): readers say which file and what to do, and never block
    result = store / layout.result(0)
    result.unlink()
    result.symlink_to("/dev/zero")
    (store / layout.trial_summary(0)).unlink()
    for cmd in (("status", str(store)), ("analyze", str(store)), ("trials", str(store))):
        out = ablator_cli(*cmd, env=env, timeout=60)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (cmd, out.stderr)
        assert f"{result} is not a regular file (a device); a store holds only files" in out.stderr
    spec = store / layout.EXPERIMENT
    spec.rename(tmp_path / "experiment.json.bak")
    os.mkfifo(spec)
    readers: list[tuple[str, ...]] = [
        ("status", str(store)),
        ("analyze", str(store)),
        ("report", str(store), "--out", "rep"),
    ]
    for reader in readers:
        out = ablator_cli(*reader, cwd=tmp_path, env=env, timeout=60)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (reader, out.stderr)
        assert (
            f"{spec} is not a regular file (a FIFO)" in out.stderr and "Remove it, or restore" in out.stderr
        )
    agent = subprocess.run(
        [sys.executable, "-m", "ablator.agent", str(store), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 1 and f"{spec} is not a regular file (a FIFO)" in agent.stderr
    # through the API: a StoreError naming the key, never an endless read
    with pytest.raises(StoreError, match=r"read 'experiment\.json' in file://.*: .* is not a regular file"):
        open_store(store, read_only=True).get(layout.EXPERIMENT)
