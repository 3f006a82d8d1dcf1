"""``ablator trials``, ``ablator logs`` and the running view of ``ablator status``, through real
processes (an agent running a toy ablation, the CLI in child processes) on a local folder and on
S3 (the moto server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit import ablator_cli

from ablator import layout

from .conftest import ROOT, experiment, launch_toy, open_, wait_for

pytestmark = pytest.mark.procs


def _launch(store_url: str, tmp_path: Path, *, held: bool = True) -> Path:
    """A three-trial ablation: ``baseline`` completes, ``broken`` raises in every attempt (2 =
    max_attempts: failed), ``held`` keeps stepping until the returned file exists (without
    ``held``: the first two only)."""
    hold = tmp_path / "release-held"
    ablations: dict[str, Any] = {"broken": {"mode": "raise", "fail_at": 2}}
    if held:
        ablations["held"] = {"hold_file": str(hold)}
    exp = experiment(
        config={"steps": 4, "checkpoint_every": 2, "sleep": 0.05},
        design={"kind": "ablation", "ablations": ablations},
    )
    code_dir = None
    if store_url.startswith("s3://"):
        code_dir = tmp_path / "code"
        code_dir.mkdir()
        (code_dir / "snap_toy_entry.py").write_text((ROOT / "tests" / "agent" / "toy.py").read_text())
        exp["entry"] = "snap_toy_entry:trial"
    launch_toy(store_url, exp, code_dir=code_dir)
    return hold


def _trials(store_url: str, env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    out = ablator_cli("trials", store_url, "--json", *extra, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_trials_logs_and_status_running_view(
    local_store: str, agents: Any, agent_env: dict[str, str], tmp_path: Path
) -> None:
    store_url = local_store
    hold = _launch(store_url, tmp_path)
    agent = agents(store_url)
    store = open_(store_url)
    # The held trial runs once the other two are settled (one slot: one trial at a time).
    wait_for("the held trial's metrics", lambda: store.list(layout.metrics_dir(2)), timeout=180)
    wait_for("the broken trial's failures", lambda: store.exists(layout.failed(1, 1)), timeout=180)

    lines = {t["index"]: t for t in _trials(store_url, agent_env)}
    assert [lines[i]["state"] for i in range(3)] == ["done", "failed", "running"]
    assert lines[0]["status"] == "completed" and lines[0]["variant"] == "baseline"
    assert lines[0]["metric"] == "score" and lines[0]["value"] == 4.0 and lines[0]["attempts"] == 1
    broken = lines[1]
    assert broken["variant"] == "broken" and broken["attempts"] == 2 and broken["failures"] == 2
    assert broken["errors"].startswith("exception: ValueError: toy trial 1 raised at step 2 on purpose")
    assert broken["host"]
    assert lines[2]["variant"] == "held" and lines[2]["holder"]
    assert [t["index"] for t in _trials(store_url, agent_env, "--state", "failed")] == [1]
    assert [t["index"] for t in _trials(store_url, agent_env, "--state", "completed,running")] == [0, 2]

    table = ablator_cli("trials", store_url, env=agent_env, timeout=120)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["trial", "state", "variant", "/"] and "score" in header
    assert rows[1].split()[:3] == ["1", "failed", "broken"] and "ValueError: toy trial 1 raised" in rows[1]
    assert "(so far)" in rows[2]

    status = ablator_cli("status", store_url, env=agent_env, timeout=120)
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert "holds trial 2" in text and "held:" not in text
    running = [ln for ln in text.splitlines() if ln.strip().startswith("trial 2")]
    assert len(running) == 1 and "variant held" in running[0] and "step " in running[0], text
    assert "score " in running[0] and "steps/s" in running[0]
    as_json = json.loads(ablator_cli("status", store_url, "--json", env=agent_env, timeout=120).stdout)
    (run,) = as_json["running_trials"]
    assert run["index"] == 2 and run["variant"] == "held" and run["step"] >= 1 and run["rate"] > 0
    assert run["total"] == 4 and run["total_estimated"] is True  # the baseline's steps: a median

    logs = ablator_cli("logs", store_url, "1", env=agent_env, timeout=120)
    assert logs.returncode == 0, logs.stderr
    out = logs.stdout
    assert "attempt 1 (epoch 0)" in out and "attempt 2 (epoch 1)" in out and "failed (exception)" in out
    assert out.count("toy trial 1 epoch 0 step 1") == 1 and "toy trial 1 epoch 1 step 1" in out
    assert out.count("Traceback (most recent call last)") == 2 and "ValueError: toy trial 1 raised" in out
    one = ablator_cli("logs", store_url, "1", "--attempt", "2", env=agent_env, timeout=120)
    assert one.returncode == 0 and "epoch 0" not in one.stdout and "toy trial 1 epoch 1 step 1" in one.stdout
    bad = ablator_cli("logs", store_url, "1", "--attempt", "5", env=agent_env, timeout=120)
    assert bad.returncode == 1 and "no attempt 5" in bad.stderr and "Traceback" not in bad.stderr

    follower = subprocess.Popen(
        [sys.executable, "-m", "ablator", "logs", store_url, "2", "--follow"],
        cwd=ROOT,
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hold.write_text("go")
        followed, err = follower.communicate(timeout=180)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert "toy trial 2 epoch 0 step 1" in followed and followed.rstrip().endswith("trial 2 is done ==")
    assert agent.wait(120) == 0, agent.output()
    done = {t["index"]: t for t in _trials(store_url, agent_env)}
    assert done[2]["state"] == "done" and done[2]["status"] == "completed"


def test_trials_and_logs_on_s3(s3_url: str, agents: Any, agent_env: dict[str, str], tmp_path: Path) -> None:
    """The same commands on an S3 store (fewer calls: each is a process start on a small machine)."""
    _launch(s3_url, tmp_path, held=False)
    assert agents(s3_url).wait(240) == 0
    lines = {t["index"]: t for t in _trials(s3_url, agent_env)}
    assert [(lines[i]["state"], lines[i]["variant"]) for i in range(2)] == [
        ("done", "baseline"),
        ("failed", "broken"),
    ]
    assert lines[1]["attempts"] == 2 and lines[1]["errors"].startswith("exception: ValueError: toy trial 1")
    logs = ablator_cli("logs", s3_url, "1", "--attempt", "2", env=agent_env, timeout=120)
    assert logs.returncode == 0, logs.stderr
    assert "attempt 2 (epoch 1)" in logs.stdout and "toy trial 1 epoch 1 step 1" in logs.stdout
    assert "ValueError: toy trial 1 raised at step 2 on purpose" in logs.stdout


def test_trials_and_logs_user_errors(tmp_path: Path, agent_env: dict[str, str]) -> None:
    missing = ablator_cli("trials", str(tmp_path / "nothing"), env=agent_env, timeout=120)
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    empty = ablator_cli("logs", str(tmp_path / "empty"), "0", env=agent_env, timeout=120)
    assert empty.returncode == 1 and "no experiment here" in empty.stderr
    url = str(tmp_path / "s")
    _launch(url, tmp_path)
    pending = ablator_cli("trials", url, "--state", "pending", env=agent_env, timeout=120)
    assert pending.returncode == 0 and len(pending.stdout.splitlines()) == 4  # header + 3 trials
    nostart = ablator_cli("logs", url, "0", env=agent_env, timeout=120)
    assert nostart.returncode == 1 and "has not started" in nostart.stderr


def test_status_watch_prints_report_after_report_until_ctrl_c(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    import signal

    url = str(tmp_path / "s")
    _launch(url, tmp_path, held=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ablator", "status", url, "--watch", "0.2"],
        cwd=ROOT,
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while sum(1 for ln in seen if ln.startswith("--- ")) < 3:  # two whole reports
            line = proc.stdout.readline()
            assert line, "status --watch ended by itself"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen) + rest
    assert proc.returncode == 130 and "Traceback" not in err
    # off a terminal: each report after a timestamped separator, not redrawn in place
    assert "every 0.2s; Ctrl-C stops" in seen[0] and "\x1b[" not in text
    assert text.count("trials      pending 2") >= 2
