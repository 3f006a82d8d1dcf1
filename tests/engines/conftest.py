"""Helpers of the engine tests: a tiny study launched into a local store, the environment of
child processes, and (in :mod:`tests.engines.slurmcluster`) a real one-node Slurm cluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import testkit

from ablator import layout, records
from ablator.experiment import experiment_from_dict
from ablator.ops import launch
from ablator.store import Store, open_store

ROOT = Path(__file__).resolve().parents[2]
TRIAL = "tests.engines.trial:trial"


def launch_study(store_url: str, trials: int, config: dict[str, Any], **limits: Any) -> None:
    """A random design of ``trials`` tiny CPU trials (tests/engines/trial.py), short leases."""
    exp = {
        "name": "engines",
        "entry": TRIAL,
        "config": config,
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": {
            "max_attempts": 2,
            "max_takeovers": 5,
            "lease_seconds": 3.0,
            "heartbeat_seconds": 0.5,
            "stall_seconds": 60,
            **limits,
        },
        "resources": {"gpu": "none"},
    }
    launch(experiment_from_dict(exp), store_url)


@pytest.fixture
def child_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of agent processes: this checkout importable, private cache and lock folders."""
    env = testkit.child_env(
        ABLATOR_CACHE_DIR=str(tmp_path / "cache"), ABLATOR_LOCK_DIR=str(tmp_path / "locks")
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    yield env


def wait_for(
    what: str,
    cond: Callable[[], Any],
    timeout: float = 60.0,
    every: float = 0.2,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``cond`` until it is truthy (a bound, not a measurement: tests never assert on time);
    on timeout the error carries ``context()`` (job logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{context()}" if context else ""))
        time.sleep(every)


def results(store: Store) -> dict[int, records.Result]:
    out = {}
    for name in store.list_dirs(layout.TRIALS_DIR):
        data = store.get(layout.result(int(name)))
        if data is not None:
            out[int(name)] = records.decode(data, records.Result, layout.result(int(name)))
    return out


def trial_records(store: Store, trial: int, kind: str) -> list[int]:
    """Epochs of trial ``trial`` that have a ``kind`` record (claim, attempt, release, failed)."""
    prefix = layout.trial_dir(trial)
    out = []
    for entry in store.list(prefix):
        rest = entry.key[len(prefix) :]
        parsed = layout.parse_record(rest) if "/" not in rest else None
        if parsed and parsed[0] == kind:
            out.append(parsed[1])
    return sorted(out)


def traces(trace_dir: Path) -> dict[int, list[list[str]]]:
    """trial -> its attempts' trace lines ``[trial, epoch, start_step, launcher variables]``."""
    out: dict[int, list[list[str]]] = {}
    for p in sorted(trace_dir.glob("*.txt")):
        out[int(p.stem)] = [line.split() for line in p.read_text().splitlines()]
    return out


def open_(url: str) -> Store:
    return open_store(url)


def read(store: Store, key: str, type_: type[Any]) -> Any:
    data = store.get(key)
    return None if data is None else records.decode(data, type_, key)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Any]:
    """A real one-node Slurm cluster for the whole session (tests/engines/slurmcluster.py)."""
    from tests.engines.slurmcluster import missing_binaries, running_cluster

    missing = missing_binaries()
    if missing:
        why = f"({', '.join(missing)} not found); .ci/run installs slurmctld, slurmd, slurm-client, munge"
        pytest.skip(f"Slurm is not installed {why}")
    with running_cluster() as cluster:
        yield cluster
