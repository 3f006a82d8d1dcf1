"""The rendered artifacts, checked offline: the Kubernetes objects against the Kubernetes JSON
schemas (``kubernetes-validate``, strict: no unknown fields), the SkyPilot task with SkyPilot's
own loader when ``skypilot`` is installed (optional: it is not in the dev extra), the Slurm
script's directives, the wheel every node installs, the shell wrapper's exit mapping under
``/bin/sh`` with a real signal, and the CLI's errors."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import testkit
import yaml

from ablator.cli import main
from ablator.engines import submit
from ablator.engines.common import (
    DRAINED_EXIT,
    build_wheel,
    package_digest,
    runner_script,
)
from tests.engines.conftest import launch_study


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(*argv: str, env: dict[str, str] | None = None) -> Ran:
    """``ablator submit ARGV`` through the real CLI entry point, in this process (the Slurm tests
    run it as ``python -m ablator``); ``env`` is set for the call only."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env or {}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        rc = main(["submit", *argv])
    return Ran(rc, out.getvalue(), err.getvalue())


def k8s_docs(*extra: str) -> list[dict[str, Any]]:
    out = cli("k8s", "s3://bucket/studies/digits", "--agents", "4", "--image", "pytorch/pytorch", *extra)
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


def test_the_kubernetes_objects_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = k8s_docs("--gpus", "2", "--memory", "32G", "--secret", "store-creds", "--grace-seconds", "45")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    for version in ("1.29.0", kv.latest_version()):  # podFailurePolicy is GA from 1.31, beta since 1.26
        for doc in docs:
            kv.validate(doc, version, strict=True)  # raises on any schema violation
    configmap, job = docs
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] == 4
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [1]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 45 + 15
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "memory": "32Gi"}
    assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    script = container["command"][2]
    assert "ablator.agent s3://bucket/studies/digits --grace-seconds 45" in script
    assert f"ablator.engines.check {package_digest()}" in script
    # the wheel in the ConfigMap is the one this ablator builds, and it carries this code
    wheel = build_wheel()
    assert base64.b64decode(configmap["binaryData"]["wheel"]) == wheel.data
    assert pod["volumes"][0]["configMap"]["items"] == [{"key": "wheel", "path": wheel.filename}]
    assert f"/opt/ablator/{wheel.filename}[s3]" in script


def test_the_schema_check_is_real_a_broken_job_is_refused() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    _, job = k8s_docs()
    job["spec"]["parallelism"] = "four"
    with pytest.raises(kv.ValidationError):
        kv.validate(job, kv.latest_version(), strict=True)
    _, job = k8s_docs()
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a field: strict refuses it
    with pytest.raises(kv.ValidationError):
        kv.validate(job, kv.latest_version(), strict=True)


def test_the_skypilot_task_loads_with_skypilots_own_loader(tmp_path: Path) -> None:
    task_path = tmp_path / "task.yaml"
    out = cli(
        "sky",
        "s3://bucket/studies/digits",
        "--agents",
        "3",
        "--gpus",
        "1",
        "--accelerators",
        "A100:1",
        "--memory",
        "16G",
        "--secret",
        "AWS_ACCESS_KEY_ID",
        "--out",
        str(task_path),
    )
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(task_path.read_text())
    res = task["resources"]
    assert res["use_spot"] is True and res["accelerators"] == "A100:1" and res["memory"] == "16+"
    assert res["job_recovery"] == {
        "strategy": "EAGER_NEXT_REGION",
        "max_restarts_on_errors": 0,
        "recover_on_exit_codes": [DRAINED_EXIT],
    }
    ((remote, local),) = task["file_mounts"].items()
    assert Path(local).read_bytes() == build_wheel().data and remote.endswith(Path(local).name)
    assert f"pip install --quiet --disable-pip-version-check '{remote}[s3]'" in task["setup"]
    assert task["secrets"] == {"AWS_ACCESS_KEY_ID": None}
    sky = pytest.importorskip(
        "sky", reason="skypilot is not installed (python -m pip install -e '.[sky]' in the checkout)"
    )
    from sky.utils import common_utils, schemas

    common_utils.validate_schema(task, schemas.get_task_schema(), "invalid task YAML: ")
    loaded = sky.Task.from_yaml(str(task_path))
    (resources,) = loaded.resources
    assert resources.use_spot and resources.accelerators == {"A100": 1}


@pytest.mark.procs
def test_the_slurm_script_asks_for_what_was_given(tmp_path: Path) -> None:
    store = tmp_path / "digits"
    launch_study(str(store), 2, {})
    out = cli(
        "slurm",
        str(store),
        "--agents",
        "5",
        "--gpus",
        "2",
        "--slots-per-gpu",
        "2",
        "--cpus",
        "8",
        "--memory",
        "64G",
        "--time",
        "12:00:00",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--python",
        "/shared/venv/bin/python",
        "--setup",
        "module load cuda",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    directives = [ln.removeprefix("#SBATCH ") for ln in lines if ln.startswith("#SBATCH")]
    for d in (
        "--array=0-4",
        "--cpus-per-task=8",
        "--gres=gpu:2",
        "--mem=64G",
        "--time=12:00:00",
        "--partition=gpu",
        "--account=lab",
        "--requeue",
        "--signal=B:TERM@40",
        "--job-name=ablator-digits",
    ):
        assert d in directives
    assert "module load cuda" in lines
    assert f"/shared/venv/bin/python -m ablator.agent {store} --slots-per-gpu 2 --grace-seconds 25 &" in lines
    assert "has no --code snapshot" in out.stderr  # a note, not an error: the entry may be installed
    proc = subprocess.run(["bash", "-n"], input=out.stdout, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_wheel_is_deterministic_and_carries_this_code() -> None:
    a, b = build_wheel(), build_wheel()
    assert a.data == b.data and a.digest == package_digest()
    with zipfile.ZipFile(io.BytesIO(a.data)) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "ablator/engines/check.py" in names and not any("__pycache__" in n for n in names)
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    version = a.filename.split("-")[1]
    assert f"Version: {version}\n" in meta and version.endswith(f"+src.{a.digest[:12]}")
    assert 'Requires-Dist: s3fs>=2025.7; extra == "s3"' in meta
    assert len(record.splitlines()) == len(names)


@pytest.mark.procs
@pytest.mark.parametrize(("agent_exit", "expected"), [(0, DRAINED_EXIT), (1, 1)])
def test_the_wrapper_under_sh_forwards_sigterm_and_maps_a_drain_to_143(
    tmp_path: Path, agent_exit: int, expected: int
) -> None:
    """A stand-in agent (a real process) exits ``agent_exit`` on SIGTERM; the wrapper, PID 1 of a
    container in real life, must forward the signal and report a drained agent as 143."""
    ready = tmp_path / "ready"
    agent = [
        sys.executable,
        "-c",
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: sys.exit({agent_exit}))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n",
    ]
    script = runner_script(agent, digest=package_digest(), python=sys.executable) + 'exit "$ablator_rc"\n'
    sh = shutil.which("sh") or "/bin/sh"
    proc = subprocess.Popen([sh, "-c", script], env=testkit.child_env())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to the shell only, as a kubelet does to PID 1
        assert proc.wait(30) == expected
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.procs
def test_a_different_ablator_on_the_node_is_refused_before_the_agent_starts(tmp_path: Path) -> None:
    script = runner_script(["true"], digest="0" * 64, python=sys.executable) + 'exit "$ablator_rc"\n'
    out = subprocess.run(
        ["sh", "-c", script], env=testkit.child_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "is not the ablator this job was rendered with" in out.stderr


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = cli("slurm", "/s", "--agents", "0", "--slots", "0", "--memory", "lots")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    for text in ("--agents 0: must be at least 1", "--slots 0", "--memory 'lots'"):
        assert text in out.stderr
    out = cli("sky", "s3://b/s", "--gpus", "1")
    assert out.returncode == 1 and "needs --accelerators" in out.stderr
    out = cli("slurm", "/s", "--time", "soon")
    assert out.returncode == 1 and "--time 'soon'" in out.stderr
    out = cli("k8s", "./runs/exp", "--image", "x")
    assert out.returncode == 1 and "which a Kubernetes pod cannot reach" in out.stderr
    out = cli("sky", "file:///runs/exp")
    assert out.returncode == 1 and "which a SkyPilot VM cannot reach" in out.stderr
    out = cli("slurm", "memory://x")
    assert out.returncode == 1 and "a memory store lives in one process" in out.stderr
    # a Slurm job names a relative folder store by its absolute path (its nodes share the folder)
    out = cli("slurm", str(tmp_path / "nothing-here"))
    assert out.returncode == 1 and "no experiment in" in out.stderr and "ablator launch" in out.stderr
    monkeypatch.chdir(tmp_path)
    launch_study(str(tmp_path / "runs" / "exp"), 1, {})
    out = cli("slurm", "runs/exp")
    assert out.returncode == 0 and f"ablator.agent {tmp_path / 'runs' / 'exp'} " in out.stdout


@pytest.mark.parametrize(
    ("engine", "extra", "tool"),
    [("slurm", (), "sbatch"), ("k8s", ("--image", "x"), "kubectl"), ("sky", (), "sky")],
)
def test_submit_without_the_engines_command_says_what_to_do(
    tmp_path: Path, engine: str, extra: tuple[str, ...], tool: str
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = cli(engine, "s3://b/s", "--submit", *extra, "--out", str(tmp_path / "a"), env={"PATH": str(empty)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{tool} is not on PATH" in out.stderr
    assert (tmp_path / "a").exists()  # the artifact was still written, for submitting by hand


@pytest.mark.procs
def test_the_wheel_installs_and_the_node_check_accepts_it(tmp_path: Path) -> None:
    """What a pod or VM does with the wheel: pip installs it into its Python (here a fresh virtual
    environment that sees this machine's dependencies) and ``ablator.engines.check`` accepts the
    installed code; the installed distribution's version names the build."""
    wheel = build_wheel()
    (tmp_path / wheel.filename).write_bytes(wheel.data)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            py,
            "install",
            "--quiet",
            "--no-deps",
            str(tmp_path / wheel.filename),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    where = subprocess.run(
        [py, "-c", "import ablator; print(ablator.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    check = subprocess.run(
        [py, "-m", "ablator.engines.check", wheel.digest],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    version = subprocess.run(
        [py, "-c", "import importlib.metadata as m; print(m.version('ablator'))"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == wheel.filename.split("-")[1], version.stdout + version.stderr


def test_a_slurm_store_that_does_not_look_shared_gets_a_note(tmp_path: Path) -> None:
    store = tmp_path / "digits"  # pytest's tmp_path: /tmp on this machine, each node's own
    launch_study(str(store), 2, {})
    out = cli("slurm", str(store), "--agents", "2")
    assert out.returncode == 0, out.stderr
    if os.path.realpath(store).startswith("/tmp/"):
        assert f"every node must see the store folder {store} at that same path" in out.stderr
        assert "/tmp is each machine's own" in out.stderr
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "tmpfs /tmp tmpfs rw 0 0\n"
        "nas:/export /shared nfs4 rw 0 0\n"
        "mds@tcp:/lus /lus/my\\040lab lustre rw 0 0\n"
    )
    assert submit.file_system_of("/shared/studies/digits", str(mounts)) == "nfs4"
    assert submit.file_system_of("/lus/my lab/x", str(mounts)) == "lustre"
    assert submit.file_system_of("/sharedness", str(mounts)) == "ext4"
    assert submit.shared_folder_note("/shared/studies/digits", mounts=str(mounts)) is None
    assert submit.shared_folder_note("/lus/my lab/digits", mounts=str(mounts)) is None
    home = submit.shared_folder_note("/home/me/runs/digits", mounts=str(mounts))
    assert home is not None and "on a local ext4 file system here" in home
    assert "s3://" in home and "same path" in home
    tmp = submit.shared_folder_note("/tmp/runs/digits", mounts=str(mounts))
    assert tmp is not None and "/tmp is each machine's own" in tmp
