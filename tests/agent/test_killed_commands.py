"""Commands SIGKILLed midway (issue 12): ``launch --extend``, ``report``, ``gc`` and ``retry
--failed``. Running the command again works, and nothing finished is lost: every record is
created whole or not at all, and what a command deletes it decides trial by trial. (``launch``
itself: tests/agent/test_bad_inputs.py.)

Where the command's progress can be seen from outside (a report's hidden work folder, the
checkpoints gc deletes one by one, slowed by the fault injector), the kill lands at that point;
elsewhere it lands at several moments, and what is asserted holds wherever it landed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import ROOT, ablator_cli

from ablator import layout, records
from ablator.store import faults, open_store

from .conftest import experiment, launch_toy, results, status_json, wait_for


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablator", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait(30)


def _slowed(env: dict[str, str], tmp_path: Path, **rule: Any) -> dict[str, str]:
    """``env`` with the fault injector slowing the command's operations named by ``rule``."""
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"rules": [{"process": "cli", **rule}]}))
    return {**env, faults.ENV: str(spec)}


def _finished(store: str) -> dict[int, records.Result]:
    return results(open_store(store))


@pytest.mark.procs
@pytest.mark.parametrize(
    "after", [1.0, pytest.param(0.4, marks=pytest.mark.slow), pytest.param(2.0, marks=pytest.mark.slow)]
)
def test_an_extend_killed_midway_can_be_run_again(
    tmp_path: Path, agents: Any, agent_env: dict[str, str], after: float
) -> None:
    exp = experiment()  # 4 trials
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(exp))
    store = str(tmp_path / "store")
    launch_toy(store, exp)
    assert agents(store).wait(120) == 0
    before = _finished(store)
    proc = _start(["launch", str(exp_file), "--store", store, "--extend", "2"], agent_env, ROOT)
    time.sleep(after)
    _kill(proc)
    # the extension is there whole, or not at all: never a torn record that shrinks the budget
    exts = [
        records.decode(p.read_bytes(), records.Extension) for p in (tmp_path / "store" / "extend").glob("*")
    ]
    assert all(e.trials == 2 for e in exts) and len(exts) <= 1
    out = ablator_cli("launch", str(exp_file), "--store", store, "--extend", "2", env=agent_env)
    assert out.returncode == 0, out.stderr
    budget = 4 + 2 * (len(exts) + 1)
    assert f"budget: {budget} trials" in out.stdout
    done = _finished(store)
    assert {i: r.nonce for i, r in before.items()} == {i: r.nonce for i, r in done.items()}  # nothing lost
    st = status_json(store, agent_env)
    assert st["progress"]["total"] == budget and st["counts"]["pending"] == budget - 4 and not st["problems"]


@pytest.mark.procs
def test_a_report_killed_midway_leaves_the_previous_one_and_runs_again(
    tmp_path: Path, agents: Any, agent_env: dict[str, str]
) -> None:
    store = str(tmp_path / "store")
    launch_toy(store, experiment())
    assert agents(store).wait(120) == 0
    out_dir = tmp_path / "rep"
    first = ablator_cli("report", store, "--out", str(out_dir), env=agent_env)
    assert first.returncode == 0, first.stderr
    previous = (out_dir / "report.md").read_text()
    proc = _start(["report", store, "--out", str(out_dir)], agent_env, tmp_path)
    # killed while it writes into its hidden work folder beside the target
    wait_for("the report's work folder", lambda: any(tmp_path.glob(".rep.tmp-*")), timeout=120, every=0.01)
    _kill(proc)
    assert (out_dir / "report.md").read_text() == previous  # the previous report, whole
    again = ablator_cli("report", store, "--out", str(out_dir), env=agent_env)
    assert again.returncode == 0, again.stderr
    assert {p.name for p in out_dir.iterdir()} >= {"report.md", "report.html", "effects.json"}
    # the killed run's leftovers are cleared by the next one
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".rep.")]


@pytest.mark.procs
def test_a_gc_killed_midway_runs_again_and_keeps_what_trials_need(
    tmp_path: Path, agents: Any, agent_env: dict[str, str]
) -> None:
    store = str(tmp_path / "store")
    launch_toy(store, experiment(config={"steps": 12, "checkpoint_every": 2}))
    assert agents(store).wait(120) == 0
    before = _finished(store)
    analysis = ablator_cli("analyze", store, "--json", env=agent_env)
    assert analysis.returncode == 0, analysis.stderr
    ckpts = sorted((tmp_path / "store").glob("trials/*/ckpt/*.pt"))
    assert len(ckpts) == 8  # two per trial; gc keeps the newest (the best is the newest here)
    # trial 1's deletes hang: the kill lands after gc deleted trial 0's old checkpoint
    slow = _slowed(
        agent_env, tmp_path, ops=["delete"], prefix=layout.trial_dir(1), error="hang", end=time.time() + 600
    )
    proc = _start(["gc", store], slow, tmp_path)
    wait_for("gc's first delete", lambda: not ckpts[0].exists(), timeout=120, every=0.01)
    assert ckpts[0].name == "e0000-s00000010.pt"
    _kill(proc)
    assert sum(p.exists() for p in ckpts) == 7
    out = ablator_cli("gc", store, env=agent_env)
    assert out.returncode == 0, out.stderr
    left = sorted((tmp_path / "store").glob("trials/*/ckpt/*.pt"))
    assert [p.name for p in left] == ["e0000-s00000012.pt"] * 4  # the newest of each trial, kept
    assert {i: r.nonce for i, r in before.items()} == {i: r.nonce for i, r in _finished(store).items()}
    again = ablator_cli("analyze", store, "--json", env=agent_env)
    assert json.loads(again.stdout)["effects"] == json.loads(analysis.stdout)["effects"]


@pytest.mark.procs
@pytest.mark.parametrize(
    "after", [1.0, pytest.param(0.4, marks=pytest.mark.slow), pytest.param(2.0, marks=pytest.mark.slow)]
)
def test_a_retry_killed_midway_can_be_run_again(
    tmp_path: Path, agents: Any, agent_env: dict[str, str], after: float
) -> None:
    fixed = tmp_path / "fixed"
    store = str(tmp_path / "store")
    exp = experiment(
        config={"mode": "raise", "unless_file": str(fixed)},
        limits={"max_attempts": 1},
    )
    launch_toy(store, exp)
    assert agents(store).wait(120) == 0
    assert not _finished(store)  # all four failed
    fixed.write_text("the bug is fixed")
    proc = _start(["retry", store, "--failed"], agent_env, tmp_path)
    time.sleep(after)
    _kill(proc)
    retries = sorted((tmp_path / "store").glob("control/retry/*"))
    for p in retries:  # whole, or not there at all
        assert sorted(records.decode(p.read_bytes(), records.Retry).epochs) == [0, 1, 2, 3]
    out = ablator_cli("retry", store, "--failed", env=agent_env)
    assert out.returncode == 0, out.stderr
    assert ("4 failed trial(s) are retryable again" in out.stdout) == (not retries)
    assert agents(store).wait(120) == 0
    assert sorted(_finished(store)) == [0, 1, 2, 3]
    assert len(list((tmp_path / "store").glob("trials/*/failed.e0000.msgpack"))) == 4  # the history stays
