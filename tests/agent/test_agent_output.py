"""What an agent prints when its output is not a terminal: progress lines, each trial's outcome
before the next trial's start, and no death when the reader of its pipe goes away."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ablator import layout

from .conftest import ROOT, experiment, launch_toy, open_, results, wait_for

pytestmark = pytest.mark.procs


def test_progress_lines_and_order_on_a_pipe(local_store: str, agents: Any) -> None:
    exp = experiment(
        config={"steps": 30, "checkpoint_every": 10, "sleep": 0.05},
        design={"kind": "random", "trials": 3, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(local_store, exp)
    agent = agents(local_store, "--progress-seconds", "0.3")  # its output goes to a file
    assert agent.wait(240) == 0, agent.output()
    out = agent.output()
    progress = re.findall(r"trial (\d) step (\d+) score=([\d.]+) \(([\d.]+) steps/s\)", out)
    assert progress, out
    assert all(0 < int(step) <= 30 for _, step, _, _ in progress)
    events = [
        (m.group(2), int(m.group(1)))
        for m in re.finditer(r"trial (\d)\S* (?:\([^)]*\) )?(started|completed)", out)
    ]
    assert sorted(t for e, t in events if e == "started") == [0, 1, 2], out
    # one slot: each trial's "completed" comes before the next trial's "started"
    order = [e for e, _ in events]
    assert order == ["started", "completed"] * 3, out
    # The trial's log has the loop's step lines besides the trial's own prints.
    log = (open_(local_store).get(layout.log(0, 0)) or b"").decode()
    assert "trial 0 e0 | start at step 0" in log and "toy trial 0 epoch 0 step 30" in log, log


def test_agent_keeps_running_when_its_pipe_closes(
    local_store: str, agent_env: dict[str, str], tmp_path: Path
) -> None:
    exp = experiment(
        config={"steps": 3, "checkpoint_every": 3, "sleep": 0.02},
        design={"kind": "random", "trials": 4, "seed": 2, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(local_store, exp)
    # `head -n 1` exits after the first line: every later write of the agent meets a closed pipe.
    script = (
        f"python -m ablator.agent {local_store} --cpu 2>&1 | head -n 1; echo agent-exit=${{PIPESTATUS[0]}}"
    )
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=agent_env, capture_output=True, text=True, timeout=240
    )
    assert "agent-exit=0" in done.stdout, done.stdout + done.stderr
    res = results(open_(local_store))
    assert sorted(res) == [0, 1, 2, 3] and all(r.status == "completed" for r in res.values())


def test_agent_on_a_mistyped_store_leaves_no_folder(tmp_path: Path, agent_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ablator.agent", "nosuch", "--cpu"],
        cwd=tmp_path,
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "no experiment in nosuch" in done.stderr
    assert "ablator launch" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nosuch").exists()


def test_a_running_trials_log_reaches_the_store_before_the_agent_is_killed(
    local_store: str, agents: Any, tmp_path: Path
) -> None:
    exp = experiment(
        config={"steps": 2, "sleep": 0.05, "checkpoint_every": 1000, "hold_file": str(tmp_path / "never")},
        design={"kind": "random", "trials": 1, "seed": 3, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(local_store, exp)
    agent = agents(local_store)
    store = open_(local_store)
    # The trial never ends by itself: its log can only come from the periodic copy.
    wait_for("the running trial's log in the store", lambda: store.get(layout.log(0, 0)), timeout=120)
    agent.signal(signal.SIGKILL)
    agent.wait(30)
    log = (store.get(layout.log(0, 0)) or b"").decode()
    assert "trial 0 e0 | start at step 0" in log and "toy trial 0 epoch 0 step 1" in log, log
    assert not store.exists(layout.result(0)) and not store.exists(layout.failed(0, 0))
