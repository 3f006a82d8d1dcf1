"""A store that does not answer while an agent or ``ablator run`` starts (issue 11 item 2): every
store access before the main loop (the experiment, the store self-test, the code snapshot, the
first heartbeat, the budget) waits for the store with the loop's back-off, up to
``--store-timeout``; then the agent exits 1 with the loop's message, nothing lost.

The outage is switched on before the process starts and lifted only once the process said it is
waiting, so that it covers the start whatever the machine's load (the spec file is re-read)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import child_env

from ablator import layout, records
from ablator.errors import StoreUnavailable
from ablator.ops import launch
from ablator.store import faults, open_store
from ablator.store.retry import Outage, backoff, wait_for_store
from tests.agent.conftest import (
    ROOT,
    AgentProc,
    canonical_steps,
    experiment,
    launch_toy,
    open_,
    read,
    records_of,
    results,
    wait_for,
)
from tests.faults.conftest import lift, outage, store_url

pytestmark = pytest.mark.procs

TRIALS = 3
STEPS = 4
WAITING = "the store did not answer"


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path, spec_path: Path) -> dict[str, str]:
    e = dict(subprocess_env)
    e["ABLATOR_CACHE_DIR"] = str(tmp_path / "cache")  # a fresh code cache: the snapshot is downloaded
    e["ABLATOR_LOCK_DIR"] = str(tmp_path / "locks")
    e[faults.ENV] = str(spec_path)
    e.pop(faults.ENV_PROCESS, None)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


@pytest.fixture
def start_agent(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    started: list[AgentProc] = []

    def start(url: str, *extra: str) -> AgentProc:
        a = AgentProc(url, env, tmp_path / f"agent-{len(started)}.log", *extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill_tree()


def _launch(url: str, tmp_path: Path, **limits: float) -> None:
    # The entry point lives only in a code snapshot: the agent must download it while starting.
    code = tmp_path / "code"
    code.mkdir()
    (code / "outage_toy_entry.py").write_text((ROOT / "tests" / "agent" / "toy.py").read_text())
    exp = experiment(
        config={"steps": STEPS, "checkpoint_every": 2, "sleep": 0.05},
        design={"kind": "random", "trials": TRIALS, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"max_attempts": 1, **limits},  # any failure record would be final: none may appear
        entry="outage_toy_entry:trial",
    )
    launch_toy(url, exp, code_dir=code)


def _sha(store: Any) -> str:
    spec = records.decode_json(store.read(layout.EXPERIMENT), records.ExperimentSpec)
    assert spec.code_sha256 is not None
    return spec.code_sha256


def _all_completed_once(url: str) -> None:
    store = open_(url)
    res = results(store)
    assert sorted(res) == list(range(TRIALS))
    for i, r in res.items():
        assert r.status == "completed"
        assert records_of(store, i, "failed") == {}
        assert canonical_steps(store, i) == list(range(1, STEPS + 1))


# What each outage makes the agent wait on while it starts (a prefix of the store's keys).
STEPS_WAITED = {
    "everything": ("", "reading the experiment"),
    "code": (layout.CODE_DIR, "downloading the code"),
    "self-test": (layout.SELFTEST_DIR, "testing the store"),
    "heartbeat": (layout.AGENTS_DIR, "writing the first heartbeat"),
    "budget": (layout.EXTEND_DIR, "reading the budget"),
}
SLOW = pytest.mark.slow
CASES = [
    pytest.param("posix", "everything", id="posix-everything"),
    pytest.param("s3", "code", id="s3-code"),
    pytest.param("posix", "code", id="posix-code", marks=SLOW),
    pytest.param("posix", "self-test", id="posix-self-test", marks=SLOW),
    pytest.param("posix", "heartbeat", id="posix-heartbeat", marks=SLOW),
    pytest.param("posix", "budget", id="posix-budget", marks=SLOW),
    pytest.param("s3", "everything", id="s3-everything", marks=SLOW),
]


@pytest.mark.parametrize(("backend", "step"), CASES)
def test_an_outage_while_the_agent_starts_is_waited_out(
    backend: str,
    step: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    start_agent: Callable[..., AgentProc],
    spec_path: Path,
) -> None:
    url = store_url(backend, tmp_path, request)
    _launch(url, tmp_path)
    prefix, doing = STEPS_WAITED[step]
    outage(spec_path, "EIO" if backend == "posix" else "SlowDown", prefix)
    agent = start_agent(url)
    wait_for("the agent waiting for the store", lambda: WAITING in agent.output(), timeout=120)
    time.sleep(2.0)  # a few more failed tries (the back-off grows), then the store answers again
    lift(spec_path)
    assert agent.wait(240) == 0, agent.output()
    out = agent.output()
    assert f"{WAITING} ({doing})" in out, out
    assert "the store answers again" in out, out
    _all_completed_once(url)
    store = open_(url)
    beats = [read(store, e.key, records.Heartbeat) for e in store.list(layout.AGENTS_DIR)]
    assert len(beats) == 1 and beats[0].state == "exited"


def test_an_outage_longer_than_store_timeout_ends_the_start_clearly_and_loses_nothing(
    tmp_path: Path, start_agent: Callable[..., AgentProc], spec_path: Path
) -> None:
    url = str(tmp_path / "store")
    _launch(url, tmp_path)
    outage(spec_path, "ESTALE")
    agent = start_agent(url, "--store-timeout", "2")
    code = agent.wait(240)
    out = agent.output()
    assert code == 1 and "Traceback" not in out, out
    assert f"the store {url} has not answered for" in out and "(--store-timeout 2 s)" in out, out
    assert "Stale file handle" in out, out  # the last error, as the store reported it
    store = open_(url)
    assert store.exists(layout.EXPERIMENT) and store.exists(layout.code(_sha(store)))
    assert not any(store.list(layout.trial_dir(i)) for i in range(TRIALS))  # nothing claimed
    # The store answers again: a new agent runs the whole experiment.
    lift(spec_path)
    again = start_agent(url)
    assert again.wait(240) == 0, again.output()
    _all_completed_once(url)


def test_a_signal_while_waiting_for_the_store_ends_the_start(
    tmp_path: Path, start_agent: Callable[..., AgentProc], spec_path: Path
) -> None:
    url = str(tmp_path / "store")
    _launch(url, tmp_path)
    outage(spec_path, "EIO", layout.AGENTS_DIR)  # the first heartbeat
    agent = start_agent(url)
    wait_for("the agent waiting for the store", lambda: WAITING in agent.output(), timeout=120)
    agent.signal(signal.SIGTERM)
    assert agent.wait(120) == 0, agent.output()
    out = agent.output()
    assert "SIGTERM received" in out and "Traceback" not in out, out
    lift(spec_path)
    store = open_(url)
    assert not any(store.list(layout.trial_dir(i)) for i in range(TRIALS))  # nothing was claimed


TRAIN = ROOT / "tests" / "train"
RUN_EXPERIMENT = """
name: tiny
entry: trainlib:TinyWrapper
config:
  model: {hidden: 16}
  train: {batch_size: 8, epochs: 1, eval_every: 4, optimizer: {name: adam, lr: 0.01}}
metric: {name: val_accuracy, mode: max}
design: {kind: ablation, repeats: 1, seed: 0, ablations: {wide: {model.hidden: 32}}}
limits: {lease_seconds: 5, heartbeat_seconds: 1}
"""


def test_ablator_run_waits_out_an_outage_while_it_starts(
    tmp_path: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TRAIN))  # launch imports the entry point (trainlib) here too
    exp = tmp_path / "exp.yaml"
    exp.write_text(RUN_EXPERIMENT)
    url = str(tmp_path / "launched")
    launch(exp, url)
    outage(spec_path, "ETIMEDOUT")
    log = tmp_path / "run.log"
    env = child_env(TRAIN, OMP_NUM_THREADS="1", **{faults.ENV: str(spec_path)})
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ablator",
                "run",
                str(exp),
                "--store",
                url,
                "--trial",
                "1",
                "--no-progress",
            ],
            cwd=tmp_path,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for("ablator run waiting for the store", lambda: WAITING in log.read_text(), timeout=120)
        time.sleep(2.0)
        lift(spec_path)
        assert proc.wait(240) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert f"ablator run: {WAITING} (reading the experiment)" in out and "the store answers again" in out, out
    store = open_(url)
    res = read(store, layout.result(1), records.Result)
    assert res.status == "completed" and res.epoch == 0
    assert records_of(store, 1, "failed") == {}


# --- the pieces, in this process ---------------------------------------------------------------------


def test_a_local_store_folder_that_does_not_answer_is_unavailable_not_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soft NFS mount answers EIO when its server is away: the agent must wait for the store,
    not say there is no experiment ("no such folder")."""
    root = tmp_path / "store"
    root.mkdir()
    real_stat = os.stat
    failures = [3]

    def stat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        if os.fspath(path) == str(root) and failures[0] > 0:
            failures[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(root))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(StoreUnavailable, match="cannot look at the folder"):
        open_store(str(root), read_only=True)
    said: list[str] = []
    outage = Outage(str(root), 60.0)
    store = wait_for_store(
        lambda: open_store(str(root), read_only=True), outage, doing="opening the store", say=said.append
    )
    assert store.url.endswith("/store") and failures == [0]
    assert said[0].startswith("the store did not answer (opening the store)")
    assert said[-1].startswith("the store answers again") and outage.since is None


def test_wait_for_store_gives_up_after_the_timeout_with_the_message() -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    outage = Outage("s3://bucket/exp", 120.0, clock=lambda: now[0], sleep=sleep)
    calls = [0]

    def never() -> None:
        calls[0] += 1
        now[0] += 50.0  # each try takes 50 s (a slow timeout); the waits between them add a little
        raise StoreUnavailable(f"read 'experiment.json' failed: SlowDown (try {calls[0]})")

    with pytest.raises(StoreUnavailable) as caught:
        wait_for_store(never, outage, doing="reading the experiment", say=lambda _: None)
    # first failure at 1050; the fourth try (after waits of at most 0.4 + 0.8 + 1.6 s) finds the
    # store silent for 150 to 153 s > 120 s
    assert calls[0] == 4
    msg = str(caught.value)
    assert msg.startswith("the store s3://bucket/exp has not answered for 15"), msg
    assert msg.endswith(
        " s (--store-timeout 120 s); last error: read 'experiment.json' failed: SlowDown (try 4)"
    )


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    for tries, step in [(1, 0.4), (2, 0.8), (3, 1.6), (7, 25.6), (8, 30.0), (60, 30.0)]:
        waits = [backoff(tries, base=0.4, cap=30.0) for _ in range(50)]
        assert all(step / 2 <= w <= step for w in waits), (tries, min(waits), max(waits))
        assert len(set(waits)) > 1  # jittered: processes do not retry in lockstep
