"""Agents on a real one-node Slurm cluster, started by ``ablator submit slurm --submit``: a job
array runs a study to completion; a task cancelled mid-trial releases its trial to the other
task; a requeued task rejoins; a task reaching its time limit drains on ``--signal``, releases,
requeues itself and finishes the study. The cluster (munged, slurmctld, slurmd) is started by the
session fixture ``slurm_cluster``; the tests skip only when the Slurm binaries are absent."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import testkit

from ablator import layout, records
from tests.engines.conftest import ROOT, launch_study, open_, read, results, traces, trial_records, wait_for
from tests.engines.slurmcluster import SlurmCluster, missing_binaries

pytestmark = pytest.mark.skipif(
    bool(missing_binaries()),
    reason="Slurm is not installed (.ci/run installs slurmctld, slurmd, slurm-client and munge)",
)


def submit(cluster: SlurmCluster, env: dict[str, str], store: str, logs: Path, *extra: str) -> str:
    """``python -m ablator submit slurm STORE --submit ...`` against the test cluster; the job id."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablator",
            "submit",
            "slurm",
            store,
            "--output",
            str(logs / "%A_%a.out"),
            "--submit",
            *extra,
        ],
        cwd=ROOT,
        env={**env, "SLURM_CONF": str(cluster.conf)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"submitted Slurm array job (\d+)", out.stdout)
    assert m, out.stdout
    return m.group(1)


def finished(cluster: SlurmCluster, job: str, n: int) -> dict[str, str] | None:
    """The tasks' final states once none of the ``n`` tasks is pending or running."""
    states = cluster.job_states(job)
    if len(states) == n and all(
        s in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT") for s in states.values()
    ):
        return states
    return None


def job_logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(logs.glob("*")))


def attempt_agent(store: Any, trial: int, epoch: int) -> str:
    att = read(store, layout.attempt(trial, epoch), records.Attempt)
    assert att is not None, (trial, epoch)
    return str(att.agent_id)


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "store": tmp_path / "store",
        "trace": tmp_path / "trace",
        "logs": tmp_path / "logs",
        "hold": tmp_path / "hold",
    }
    paths["trace"].mkdir()
    paths["logs"].mkdir()
    return paths


class TimeLimited:
    """The time-limit scenario. Submitted when this module starts, so that it runs while the other
    tests do: a one-task array with a 10-minute limit; once its trial runs, the limit is cut to
    about 45 s from now (``scontrol update``, as an administrator might), so that Slurm's
    ``--signal`` warning (40 s before the limit with the default 25 s grace; slurmctld checks every
    30 s) comes while the trial is running. The last test checks the outcome."""

    def __init__(self, cluster: SlurmCluster, env: dict[str, str], root: Path) -> None:
        self.cluster = cluster
        self.store = str(root / "store")
        self.trace = root / "trace"
        self.logs = root / "logs"
        self.hold = root / "hold"
        self.trace.mkdir()
        self.logs.mkdir()
        self.error: BaseException | None = None
        launch_study(self.store, 1, {"trace_dir": str(self.trace), "hold_file": str(self.hold), "sleep": 0.2})
        self.job = submit(cluster, env, self.store, self.logs, "--agents", "1", "--time", "10")
        self.task = f"{self.job}_0"
        self.thread = threading.Thread(target=self._shorten, daemon=True)
        self.thread.start()

    def _shorten(self) -> None:
        try:
            s = open_(self.store)
            wait_for("the trial to run", lambda: trial_records(s, 0, "attempt") == [0], 120)
            h, m, sec = ([0, 0, *map(int, self.cluster.task_field(self.task, "RunTime").split(":"))])[-3:]
            elapsed = 3600 * h + 60 * m + sec
            minutes = max(1, math.ceil((elapsed + 45) / 60))
            self.cluster.run("scontrol", "update", f"JobId={self.task}", f"TimeLimit={minutes}")
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture(scope="module", autouse=True)
def time_limited(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TimeLimited]:
    root = tmp_path_factory.mktemp("time-limited")
    env = testkit.child_env(ABLATOR_CACHE_DIR=str(root / "cache"), ABLATOR_LOCK_DIR=str(root / "locks"))
    tl = TimeLimited(slurm_cluster, env, root)
    yield tl
    tl.hold.touch()
    tl.thread.join(130)
    slurm_cluster.cancel_all()


def logs_of(logs: Path) -> Callable[[], str]:
    return lambda: job_logs(logs)


@pytest.mark.procs
def test_a_two_task_array_runs_a_study_to_completion(
    slurm_cluster: SlurmCluster, child_env: dict[str, str], study: dict[str, Path]
) -> None:
    store = str(study["store"])
    ctx = logs_of(study["logs"])
    # The first trials hold until both tasks' agents run one, so that both take part however
    # unevenly the machine starts them.
    launch_study(store, 6, {"trace_dir": str(study["trace"]), "hold_file": str(study["hold"]), "sleep": 0.1})
    job = submit(slurm_cluster, child_env, store, study["logs"], "--agents", "2", "--grace-seconds", "5")
    s = open_(store)

    def running_agents() -> set[str]:
        return {attempt_agent(s, t, 0) for t in range(6) if trial_records(s, t, "attempt")}

    wait_for("both tasks' agents to run a trial", lambda: len(running_agents()) == 2, 90, context=ctx)
    study["hold"].touch()
    states = wait_for("both tasks to finish", lambda: finished(slurm_cluster, job, 2), 90, context=ctx)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, job_logs(study["logs"])
    assert sorted(results(s)) == list(range(6))
    seen = traces(study["trace"])
    # Inside a real Slurm job, no trial saw the job's SLURM_* variables.
    assert {line[3] for lines in seen.values() for line in lines} == {"-"}
    # Two agents, one per task, ran all the trials, each trial once.
    assert len({attempt_agent(s, t, 0) for t in range(6)}) == 2
    assert all(trial_records(s, t, "attempt") == [0] for t in range(6))
    for i in range(2):
        assert "is done; exiting" in (study["logs"] / f"{job}_{i}.out").read_text()


@pytest.mark.procs
def test_scancel_mid_trial_releases_it_and_the_other_task_takes_it_over(
    slurm_cluster: SlurmCluster, child_env: dict[str, str], study: dict[str, Path]
) -> None:
    store = str(study["store"])
    ctx = logs_of(study["logs"])
    launch_study(store, 2, {"trace_dir": str(study["trace"]), "hold_file": str(study["hold"]), "sleep": 0.2})
    job = submit(slurm_cluster, child_env, store, study["logs"], "--agents", "2", "--grace-seconds", "10")
    s = open_(store)
    wait_for(
        "both trials running",
        lambda: all(trial_records(s, t, "attempt") == [0] for t in (0, 1)),
        90,
        context=ctx,
    )
    slurm_cluster.run("scancel", f"{job}_0")
    released = wait_for(
        "the cancelled task's release",
        lambda: [t for t in (0, 1) if trial_records(s, t, "release") == [0]],
        60,
    )
    assert len(released) == 1
    (trial,) = released
    study["hold"].touch()
    states = wait_for("the array to end", lambda: finished(slurm_cluster, job, 2), 90, context=ctx)
    # scancel meant it: the cancelled task was not requeued by its script.
    assert states == {f"{job}_0": "CANCELLED", f"{job}_1": "COMPLETED"}, job_logs(study["logs"])
    assert slurm_cluster.task_field(f"{job}_0", "Restarts") == "0"
    res = results(s)
    assert sorted(res) == [0, 1]
    assert res[trial].epoch == 1
    # The other task's agent continued the released trial from its checkpoint.
    assert attempt_agent(s, trial, 1) == attempt_agent(s, 1 - trial, 0) != attempt_agent(s, trial, 0)
    first, second = traces(study["trace"])[trial]
    assert second[1] == "1" and int(second[2]) > 0, (first, second)
    rel = read(s, layout.release(trial, 0), records.Release)
    assert "SIGTERM" in rel.reason


@pytest.mark.procs
def test_a_requeued_task_drains_and_rejoins(
    slurm_cluster: SlurmCluster, child_env: dict[str, str], study: dict[str, Path]
) -> None:
    store = str(study["store"])
    ctx = logs_of(study["logs"])
    launch_study(store, 2, {"trace_dir": str(study["trace"]), "hold_file": str(study["hold"]), "sleep": 0.2})
    job = submit(slurm_cluster, child_env, store, study["logs"], "--agents", "2", "--grace-seconds", "10")
    s = open_(store)
    wait_for(
        "both trials running",
        lambda: all(trial_records(s, t, "attempt") == [0] for t in (0, 1)),
        90,
        context=ctx,
    )
    slurm_cluster.run("scontrol", "requeue", f"{job}_1")
    released = wait_for(
        "the requeued task's release",
        lambda: [t for t in (0, 1) if trial_records(s, t, "release") == [0]],
        60,
    )
    (trial,) = released
    # The requeued task starts again (after the credential expiry) and its new agent claims the
    # trial its previous run released; the other task is still busy with its own.
    wait_for(
        "the rejoined agent's attempt", lambda: trial_records(s, trial, "attempt") == [0, 1], 90, context=ctx
    )
    study["hold"].touch()
    states = wait_for("the array to end", lambda: finished(slurm_cluster, job, 2), 90, context=ctx)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, job_logs(study["logs"])
    assert slurm_cluster.task_field(f"{job}_1", "Restarts") == "1"
    assert sorted(results(s)) == [0, 1]
    new_agent = attempt_agent(s, trial, 1)
    assert new_agent not in (attempt_agent(s, trial, 0), attempt_agent(s, 1 - trial, 0))
    log = (study["logs"] / f"{job}_1.out").read_text()
    assert "start 1" in log and "start 2" in log, log


def test_the_time_limit_signal_drains_releases_and_requeues(
    slurm_cluster: SlurmCluster, time_limited: TimeLimited
) -> None:
    tl = time_limited
    ctx = logs_of(tl.logs)
    tl.thread.join(130)
    assert tl.error is None, f"{tl.error}\n{ctx()}"
    s = open_(tl.store)
    task = tl.task
    wait_for(
        "the drain's release before the time limit",
        lambda: 0 in trial_records(s, 0, "release"),
        90,
        context=ctx,
    )
    rel = read(s, layout.release(0, 0), records.Release)
    assert "SIGTERM" in rel.reason
    # The script requeued its own task (it was still RUNNING: the time-limit warning), and the
    # next run's agent takes the released trial.
    # (each later run may reach the short limit again: it drains and requeues the same way)
    wait_for("the requeued run's attempt", lambda: len(trial_records(s, 0, "attempt")) >= 2, 90, context=ctx)
    tl.hold.touch()
    states = wait_for("the task to end", lambda: finished(slurm_cluster, tl.job, 1), 90, context=ctx)
    assert states == {task: "COMPLETED"}, job_logs(tl.logs)
    runs = int(slurm_cluster.task_field(task, "Restarts")) + 1
    res = results(s)
    assert sorted(res) == [0] and res[0].epoch >= 1
    attempts = trial_records(s, 0, "attempt")
    # every run but the last drained and released its attempt; each next one resumed from it
    assert trial_records(s, 0, "release") == attempts[:-1] and 2 <= len(attempts) <= runs
    starts = [int(line[2]) for line in traces(tl.trace)[0]]
    assert starts[0] == 0 and starts == sorted(set(starts))  # each run resumed further on
    log = job_logs(tl.logs)
    assert "drained before the time limit; requeueing" in log


@pytest.mark.procs
@pytest.mark.slow
def test_the_lightning_example_runs_inside_a_slurm_job_as_single_process_trials(
    slurm_cluster: SlurmCluster, child_env: dict[str, str], study: dict[str, Path]
) -> None:
    """The Lightning function trial under a real Slurm array: Lightning must not take the job's
    SLURM_* variables (ranks, world size) for the trial's, nor warn about srun."""
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    from ablator.ops import launch

    store = str(study["store"])
    ctx = logs_of(study["logs"])
    launch(
        ROOT / "examples" / "function_trial" / "experiment.yaml",
        store,
        overrides=["config.train.epochs=1", "design.repeats=1", "resources.gpu=none"],
    )
    job = submit(slurm_cluster, child_env, store, study["logs"], "--agents", "2", "--grace-seconds", "5")
    states = wait_for("both tasks to finish", lambda: finished(slurm_cluster, job, 2), 300, context=ctx)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, ctx()
    s = open_(store)
    assert sorted(results(s)) == [0, 1, 2, 3]
    for t in range(4):
        log = (s.get(layout.log(t, 0)) or b"").decode(errors="replace")
        assert "GPU available" in log  # Lightning's own start-up lines: the log is the trial's
        assert "srun" not in log and "SLURMEnvironment" not in log, log
