"""Hostile or damaged stores whose records are gigabytes long (issue 12: "files that expand
enormously"): every reader refuses them from their size and treats them as it treats a torn
record of that kind (docs/failures.md). The files are sparse: 5 GiB each, no disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import ablator_cli

from ablator import layout
from ablator.records import CorruptRecordWarning

from .conftest import experiment, launch_toy

HUGE = 5 * 1024**3
SIZE_TEXT = f"{HUGE:,} bytes"


def _huge(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(HUGE)


def _study(tmp_path: Path, trials: int, run_: int) -> tuple[Path, dict[str, Any]]:
    """A launched local store of ``trials`` trials, the first ``run_`` of them finished."""
    from ablator.agent.run import run

    store = tmp_path / "store"
    exp = experiment(design={"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}})
    launch_toy(str(store), exp)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(exp))
    for i in range(run_):
        assert run(exp_file, store=str(store), trial=i, progress=False).status == "completed"
    return store, exp


@pytest.mark.procs
def test_huge_records_are_read_as_unreadable_ones_by_status_analysis_and_agents(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    store, _ = _study(tmp_path, trials=3, run_=2)
    (hb,) = [p for p in (store / layout.AGENTS_DIR).iterdir() if p.is_file()][:1]
    _huge(hb)  # a heartbeat: its holder is unknown
    _huge(store / layout.result(0))  # a result: needs repair, never absent
    chunk = sorted((store / layout.metrics_dir(1)).iterdir())[0]
    _huge(chunk)  # a metric chunk: skipped with a warning, the other rows kept
    (store / layout.trial_summary(1)).unlink()  # analysis reads trial 1's chunks

    out = ablator_cli("status", str(store), "--json", env=agent_env, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["counts"]["needs_repair"] == 1 and report["counts"]["done"] == 1
    problems = "\n".join(report["problems"])
    for key in (layout.result(0), f"{layout.AGENTS_DIR}{hb.name}"):
        assert f"'{key}'" in problems and SIZE_TEXT in problems

    from ablator.analysis import load

    with pytest.warns(CorruptRecordWarning, match=SIZE_TEXT) as caught:
        res = load(str(store))
    assert any(chunk.name in str(w.message) for w in caught)
    finished = res.trials.filter(res.trials["status"] == "completed")["index"].to_list()
    assert sorted(finished) == [0, 1]  # trial 0 from its summary, trial 1 from its records
    steps = res.history.filter(res.history["trial"] == 1)["step"].unique().sort().to_list()
    assert steps == [3, 4]  # trial 1 kept its other chunk's rows (steps 3-4), not the huge one's

    # an agent goes on: it runs the trial left and exits, past the unreadable heartbeat
    agent = subprocess.run(
        [sys.executable, "-m", "ablator.agent", str(store), "--cpu"],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert agent.returncode == 0, agent.stderr[-3000:]
    assert (store / layout.result(2)).is_file()


@pytest.mark.procs
def test_a_huge_experiment_json_is_refused_by_every_reader_without_a_traceback(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    store, _ = _study(tmp_path, trials=1, run_=1)
    _huge(store / layout.EXPERIMENT)
    status = ablator_cli("status", str(store), env=agent_env, timeout=120)
    assert status.returncode == 0, status.stderr  # status lists it
    assert f"'{layout.EXPERIMENT}'" in status.stdout and SIZE_TEXT in status.stdout
    assert "experiment.json is unreadable: budget unknown" in status.stdout  # not "no experiment.json"
    for argv in (["analyze", str(store)], ["trials", str(store)]):
        out = ablator_cli(*argv, env=agent_env, timeout=120)
        assert out.returncode == 1, (argv, out.stdout, out.stderr)
        assert SIZE_TEXT in out.stderr and "restore it from a backup" in out.stderr
        assert "Traceback" not in out.stderr
    agent = subprocess.run(
        [sys.executable, "-m", "ablator.agent", str(store), "--cpu"],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agent.returncode == 1 and SIZE_TEXT in agent.stderr and "Traceback" not in agent.stderr


def test_a_huge_log_is_shown_as_a_line_saying_so(tmp_path: Path) -> None:
    from ablator.lineage import stored_log
    from ablator.store import open_store

    store, _ = _study(tmp_path, trials=1, run_=0)
    _huge(store / layout.log(0, 0))
    text = stored_log(open_store(store), 0, 0).decode()
    assert text.startswith("[log not shown:") and SIZE_TEXT in text


def test_status_on_s3_reads_an_oversized_heartbeat_as_an_unreadable_one(s3_url: str) -> None:
    """On the moto S3 server, with the limit lowered by the store's parameter (the object stays
    small): the agent is listed with a corrupt heartbeat and the problem names key and size."""
    from ablator import status
    from ablator.store import open_store

    launch_toy(
        s3_url, experiment(design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}})
    )
    store = open_store(s3_url, max_record_bytes=100_000)
    key = layout.agent("vm-1-deadbeef")
    store.replace(key, b"\x00" * 100_001)
    report = status.collect(store)
    problems = "\n".join(report.problems)
    assert f"'{key}'" in problems and "100,001 bytes" in problems and "100,000" in problems
    assert report.counts["pending"] == 1  # the study's numbers are untouched
