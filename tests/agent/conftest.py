"""Helpers of the agent tests: launch a toy experiment into a store (a local folder or S3 through
the moto server), start real agent processes (``python -m ablator.agent STORE --cpu``), read the
store back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import ablator_cli

from ablator import layout, lineage, records
from ablator.experiment import experiment_from_dict
from ablator.ops import launch
from ablator.store import Store, open_store

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.agent.toy:trial"
# Short leases and heartbeats so that takeovers happen within seconds; the machine that runs
# the tests is small and shared, so not shorter.
FAST_LIMITS = {
    "max_attempts": 2,
    "max_takeovers": 5,
    "lease_seconds": 2.0,
    "heartbeat_seconds": 0.4,
    "stall_seconds": 60,
}


def experiment(
    name: str = "toy",
    *,
    config: dict[str, Any] | None = None,
    design: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    entry: str = TOY,
) -> dict[str, Any]:
    return {
        "name": name,
        "entry": entry,
        "config": config or {},
        "metric": {"name": "score", "mode": "max"},
        "design": design or {"kind": "random", "trials": 4, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": {**FAST_LIMITS, **(limits or {})},
        "resources": {"gpu": "none"},
    }


def launch_toy(store_url: str, exp: dict[str, Any], **kw: Any) -> Any:
    return launch(experiment_from_dict(exp), store_url, **kw)


@pytest.fixture
def local_store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def agent_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment of agent processes: ablator importable, the S3 server's address, a private
    code cache and lock folder."""
    env = dict(subprocess_env)
    env["ABLATOR_CACHE_DIR"] = str(tmp_path / "cache")
    env["ABLATOR_LOCK_DIR"] = str(tmp_path / "locks")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


class AgentProc:
    """A real agent process; its stderr goes to a file (read it with :meth:`output`)."""

    def __init__(self, store_url: str, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        self.args = [sys.executable, "-m", "ablator.agent", store_url, "--cpu", *extra]
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"agent {self.pid} still running after {timeout} s:\n{self.output()}"
            ) from None

    def kill_tree(self) -> None:
        """Kill the agent and its workers (its own session) -- cleanup only."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.fixture
def agents(agent_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """``agents(store_url, *flags)`` starts an agent; all are killed at the end of the test."""
    started: list[AgentProc] = []

    def start(store_url: str, *extra: str) -> AgentProc:
        a = AgentProc(store_url, agent_env, tmp_path / f"agent-{len(started)}.log", *extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill_tree()


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 90.0, every: float = 0.1) -> Any:
    """Poll ``cond`` until it is truthy (a bound, not a measurement: tests never assert on time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def read(store: Store, key: str, type_: type[Any]) -> Any:
    data = store.get(key)
    return None if data is None else records.decode(data, type_, key)


def trial_keys(store: Store, trial: int) -> list[str]:
    return [e.key for e in store.list(layout.trial_dir(trial))]


def records_of(store: Store, trial: int, kind: str) -> dict[int, Any]:
    """epoch -> record for ``claim``, ``attempt``, ``release`` or ``failed`` of ``trial``."""
    types = {
        "claim": records.Claim,
        "attempt": records.Attempt,
        "release": records.Release,
        "failed": records.Failure,
    }
    out = {}
    prefix = layout.trial_dir(trial)
    for key in trial_keys(store, trial):
        parsed = layout.parse_record(key[len(prefix) :]) if "/" not in key[len(prefix) :] else None
        if parsed and parsed[0] == kind:
            out[parsed[1]] = read(store, key, types[kind])
    return out


def results(store: Store) -> dict[int, records.Result]:
    out = {}
    for name in store.list_dirs(layout.TRIALS_DIR):
        res = read(store, layout.result(int(name)), records.Result)
        if res is not None:
            out[int(name)] = res
    return out


def canonical_steps(store: Store, trial: int) -> list[int]:
    res = read(store, layout.result(trial), records.Result)
    assert res is not None
    return [r.step for r in lineage.canonical_rows(store, trial, res.epoch)]


def status_json(store_url: str, env: dict[str, str]) -> dict[str, Any]:
    import json

    out = ablator_cli("status", store_url, "--json", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def open_(url: str) -> Store:
    return open_store(url)
