"""A store that stops answering while ``ablator run`` trains (issue 11 item 2): run rides it out
as an agent's worker and loop do. Its writes and fence checks retry with back-off while the lease
lasts; renewals failing for lease - 2 heartbeats fence the trial (left to be taken over, never
failed); the last record is retried until written or the lease is lost; past ``--store-timeout``
run exits 1 with a clear message and nothing finished lost.

Each outage is switched on once the trial has logged a step after its first checkpoint and
lifted once run said it is waiting (or exited), so that it falls mid-trial whatever the load.
The trial keeps stepping until the test creates its ``hold_file``: it ends only once the test
is done with the outage."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ablator import layout, records
from ablator.ops import launch
from ablator.store import faults
from tests.agent.conftest import canonical_steps, experiment, open_, read, records_of, wait_for
from tests.faults.conftest import lift, outage, store_url

pytestmark = pytest.mark.procs

WAITING = "ablator run: the store did not answer"
ANSWERS = "ablator run: the store answers again"
HEARTBEAT_FAILED = "heartbeat to"
NOT_FAILED = "was not failed"


class RunProc:
    """``python -m ablator run EXP --store URL --trial 0`` with its output in a file."""

    def __init__(self, exp: Path, url: str, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ablator",
                    "run",
                    str(exp),
                    "--store",
                    url,
                    "--trial",
                    "0",
                    "--no-progress",
                    *extra,
                ],
                cwd=exp.parent,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def exited(self) -> bool:
        return self.proc.poll() is not None


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path, spec_path: Path) -> dict[str, str]:
    e = dict(subprocess_env)
    e["ABLATOR_LOCK_DIR"] = str(tmp_path / "locks")
    e[faults.ENV] = str(spec_path)
    e.pop(faults.ENV_PROCESS, None)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    e["OMP_NUM_THREADS"] = "1"
    return e


@pytest.fixture
def start_run(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., RunProc]]:
    started: list[RunProc] = []

    def start(exp: Path, url: str, *extra: str) -> RunProc:
        r = RunProc(exp, url, env, tmp_path / f"run-{len(started)}.log", *extra)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def _launch(url: str, tmp_path: Path, lease: float, heartbeat: float, **config: Any) -> tuple[Path, Path]:
    """One toy trial that checkpoints every 2 steps and steps on until ``hold`` exists."""
    hold = tmp_path / "hold"
    exp = experiment(
        "runoutage",
        config={"steps": 4, "checkpoint_every": 2, "sleep": 0.05, "hold_file": str(hold), **config},
        design={"kind": "random", "trials": 1, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        # any failure record would be final (and is asserted absent anyway)
        limits={"max_attempts": 1, "lease_seconds": lease, "heartbeat_seconds": heartbeat},
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    launch(path, url)
    return path, hold


def _mid_trial(run: RunProc, epoch: int = 0) -> None:
    """Wait until the trial stepped past its first checkpoint."""
    wait_for(
        "the trial stepping past its first checkpoint",
        lambda: f"toy trial 0 epoch {epoch} step 3" in run.output() or run.exited(),
        timeout=180,
    )
    assert not run.exited(), run.output()


def _completed_once(url: str, epoch: int, at_least: int) -> records.Result:
    """Trial 0 completed by attempt ``epoch`` with its whole metric history (``at_least`` steps,
    none missing or repeated) and no failure."""
    store = open_(url)
    res = read(store, layout.result(0), records.Result)
    assert res is not None and res.status == "completed" and res.epoch == epoch, res
    assert records_of(store, 0, "failed") == {}
    steps = canonical_steps(store, 0)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= at_least, steps
    return res


def _error(backend: str) -> str:
    return "EIO" if backend == "posix" else "SlowDown"


@pytest.mark.parametrize("backend", ["posix", "s3"])
def test_an_outage_shorter_than_the_lease_mid_trial_is_ridden_out(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    start_run: Callable[..., RunProc],
    spec_path: Path,
) -> None:
    url = store_url(backend, tmp_path, request)
    # a lease long enough that the outage below never fences, however loaded the machine
    exp, hold = _launch(url, tmp_path, lease=12.0, heartbeat=0.5)
    run = start_run(exp, url)
    _mid_trial(run)
    outage(spec_path, _error(backend))
    # both sides of run see it: the trial's writes wait, and a heartbeat failed
    wait_for(
        "run waiting for the store while a heartbeat fails",
        lambda: (WAITING in run.output() and HEARTBEAT_FAILED in run.output()) or run.exited(),
        timeout=120,
    )
    time.sleep(1.0)  # a few more failed tries (the back-off grows), then the store answers again
    lift(spec_path)
    wait_for("run resuming", lambda: ANSWERS in run.output() or run.exited(), timeout=120)
    hold.touch()  # now the trial may end
    assert run.wait(240) == 0, run.output()
    out = run.output()
    assert "Traceback" not in out and "trial 0" in out and "completed" in out, out
    _completed_once(url, epoch=0, at_least=5)  # held past step 4 by the outage
    store = open_(url)
    assert records_of(store, 0, "release") == {}
    assert sorted(records_of(store, 0, "claim")) == [0]  # one attempt: never taken over


def _lost_then_rerun(
    url: str,
    exp: Path,
    hold: Path,
    spec_path: Path,
    start_run: Callable[..., RunProc],
    error: str,
    prefix: str,
    *extra: str,
) -> tuple[str, records.Result]:
    """Run the trial into an outage of ``prefix`` that outlasts the lease (or --store-timeout):
    run exits 1 saying the trial was not failed; once the store answers a later run completes it
    (from the first attempt's checkpoint). Returns the first run's output and the result."""
    first = start_run(exp, url, *extra)
    _mid_trial(first)
    outage(spec_path, error, prefix)
    assert first.wait(240) == 1, first.output()
    lift(spec_path)
    out = first.output()
    assert "Traceback" not in out and NOT_FAILED in out, out
    store = open_(url)
    assert not store.exists(layout.result(0))
    assert records_of(store, 0, "failed") == {}  # fenced, never failed
    hold.touch()
    again = start_run(exp, url)
    assert again.wait(240) == 0, again.output()
    res = _completed_once(url, epoch=1, at_least=4)
    assert res.lineage[0][0] == 0 and res.lineage[-1][0] == 1, res.lineage
    assert "resumed from step" in again.output(), again.output()
    return out, res


@pytest.mark.parametrize("backend", ["posix", pytest.param("s3", marks=pytest.mark.slow)])
def test_an_outage_longer_than_the_lease_fences_the_trial_and_a_later_run_completes_it(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    start_run: Callable[..., RunProc],
    spec_path: Path,
) -> None:
    url = store_url(backend, tmp_path, request)
    exp, hold = _launch(url, tmp_path, lease=4.0, heartbeat=0.4)  # fenced 3.2 s after a renewal
    out, _ = _lost_then_rerun(url, exp, hold, spec_path, start_run, _error(backend), "")
    assert WAITING in out and "lease" in out, out


def test_failing_heartbeats_alone_fence_the_trial_as_they_fence_an_agent(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    """Only the heartbeat fails (its key's prefix): the trial's own writes still succeed, yet the
    trial may not outlive lease - 2 heartbeats without a renewal: observers could judge it dead."""
    url = str(tmp_path / "store")
    exp, hold = _launch(url, tmp_path, lease=4.0, heartbeat=0.4)
    out, _ = _lost_then_rerun(url, exp, hold, spec_path, start_run, "ESTALE", layout.AGENTS_DIR)
    assert "fenced itself: no heartbeat renewal" in out, out


def test_an_outage_longer_than_store_timeout_ends_run_clearly_and_loses_nothing(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    url = str(tmp_path / "store")
    exp, hold = _launch(url, tmp_path, lease=6.0, heartbeat=0.5)  # fence after 5 s > the timeout
    out, _ = _lost_then_rerun(url, exp, hold, spec_path, start_run, "ETIMEDOUT", "", "--store-timeout", "1")
    assert f"{url} has not answered for" in out and "(--store-timeout 1 s)" in out, out
    assert "Connection timed out" in out, out  # the last error, as the store reported it


def test_a_private_store_rides_out_an_outage_mid_trial(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    """No lease in a private store: its writes wait for the store up to --store-timeout."""
    hold = tmp_path / "hold"
    exp_dict = experiment(
        "private",
        config={"steps": 4, "checkpoint_every": 2, "sleep": 0.05, "hold_file": str(hold)},
        design={"kind": "random", "trials": 1, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(exp_dict))
    url = str(tmp_path / "private")
    run = start_run(exp, url)
    _mid_trial(run)
    outage(spec_path, "EIO")
    wait_for("run waiting for the store", lambda: WAITING in run.output() or run.exited(), timeout=120)
    time.sleep(1.0)
    lift(spec_path)
    wait_for("run resuming", lambda: ANSWERS in run.output() or run.exited(), timeout=120)
    hold.touch()
    assert run.wait(240) == 0, run.output()
    _completed_once(url, epoch=0, at_least=5)  # held past step 4 by the outage


def test_the_result_waits_for_the_store_while_the_lease_holds(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    """Only the result's key fails as the trial ends (its last fence checks and the result
    itself): run keeps the trial held and writes the result once the store takes it."""
    url = str(tmp_path / "store")
    exp, hold = _launch(url, tmp_path, lease=4.0, heartbeat=0.4)
    run = start_run(exp, url)
    _mid_trial(run)
    outage(spec_path, "ESTALE", layout.result(0))
    hold.touch()  # the trial ends into the outage
    wait_for("run waiting for the store", lambda: WAITING in run.output() or run.exited(), timeout=120)
    time.sleep(1.0)  # a few failed tries; the heartbeats go on meanwhile, so nothing fences
    lift(spec_path)
    assert run.wait(240) == 0, run.output()
    assert ANSWERS in run.output(), run.output()
    _completed_once(url, epoch=0, at_least=4)
    assert sorted(records_of(open_(url), 0, "claim")) == [0]


def test_a_failure_record_waits_for_the_store_and_is_written_once(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    """The trial raises while its failure record's key does not answer: run retries the record
    until the store takes it (the heartbeat keeps the trial held), then reports the failure."""
    url = str(tmp_path / "store")
    exp, _ = _launch(url, tmp_path, lease=4.0, heartbeat=0.4, mode="raise", fail_at=3)
    outage(spec_path, "EIO", layout.failed(0, 0))
    run = start_run(exp, url)
    wait_for(
        "run waiting to record the failure",
        lambda: f"{WAITING} (writing the failure record)" in run.output() or run.exited(),
        timeout=180,
    )
    time.sleep(1.0)
    lift(spec_path)
    assert run.wait(240) == 1, run.output()
    out = run.output()
    assert "toy trial 0 raised at step 3 on purpose" in out and ANSWERS in out, out
    store = open_(url)
    failures = records_of(store, 0, "failed")
    assert sorted(failures) == [0] and "raised at step 3" in failures[0].message, failures
    assert not store.exists(layout.result(0))


def test_a_private_store_failure_record_waits_for_the_store(
    tmp_path: Path, start_run: Callable[..., RunProc], spec_path: Path
) -> None:
    exp_dict = experiment(
        "private",
        config={"steps": 4, "checkpoint_every": 2, "mode": "raise", "fail_at": 3},
        design={"kind": "random", "trials": 1, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(exp_dict))
    url = str(tmp_path / "private")
    outage(spec_path, "ETIMEDOUT", layout.failed(0, 0))
    run = start_run(exp, url)
    wait_for(
        "run waiting to record the failure",
        lambda: f"{WAITING} (writing the failure record)" in run.output() or run.exited(),
        timeout=180,
    )
    lift(spec_path)
    assert run.wait(240) == 1, run.output()
    failures = records_of(open_(url), 0, "failed")
    assert sorted(failures) == [0] and "raised at step 3" in failures[0].message, failures


def test_a_result_written_by_another_holder_mid_trial_ends_run_saying_nothing_is_left(
    tmp_path: Path, start_run: Callable[..., RunProc]
) -> None:
    """Another holder finished the trial while this run trained (its result appeared): run stops
    writing, leaves that result alone, and says the trial is done, not "left to be taken over"."""
    url = str(tmp_path / "store")
    exp, _ = _launch(url, tmp_path, lease=12.0, heartbeat=0.5)
    run = start_run(exp, url)
    _mid_trial(run)
    theirs = records.Result(trial=0, epoch=0, agent_id="another-holder", metrics={"loss": 0.5}, steps=9)
    assert open_(url).create(layout.result(0), records.encode(theirs))
    assert run.wait(240) == 1, run.output()
    out = run.output()
    assert "Traceback" not in out and "a result already exists" in out, out
    assert "finished by another holder" in out and "nothing is lost" in out, out
    assert "left to be taken over" not in out, out
    store = open_(url)
    assert read(store, layout.result(0), records.Result) == theirs
    assert records_of(store, 0, "failed") == {}
