"""Real agent processes riding out store faults (``$ABLATOR_FAULTS``, shared by the agents and
their workers): outages shorter and longer than the lease, a worker-only outage, outages while
claims and results are written, failing heartbeats. Each run must end with every trial completed
once, no failure records, full metric histories, and every agent exiting 0."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, records
from ablator.store import faults
from ablator.store.faults import Rule, write_spec
from tests.agent.conftest import (
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
from tests.faults.conftest import store_url

pytestmark = pytest.mark.procs

TRIALS = 4
STEPS = 6


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    return tmp_path / "faults.json"


@pytest.fixture
def start_agent(
    subprocess_env: dict[str, str], tmp_path: Path, spec_path: Path
) -> Iterator[Callable[[str], AgentProc]]:
    env = dict(subprocess_env)
    env["ABLATOR_CACHE_DIR"] = str(tmp_path / "cache")
    env["ABLATOR_LOCK_DIR"] = str(tmp_path / "locks")
    env[faults.ENV] = str(spec_path)
    env.pop(faults.ENV_PROCESS, None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    started: list[AgentProc] = []

    def start(url: str) -> AgentProc:
        a = AgentProc(url, env, tmp_path / f"agent-{len(started)}.log")
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill_tree()


def _launch(url: str) -> None:
    exp = experiment(
        config={"steps": STEPS, "checkpoint_every": 2, "sleep": 0.15},
        design={"kind": "random", "trials": TRIALS, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"max_attempts": 1},  # any failure record would be final: none may appear
    )
    launch_toy(url, exp)


def _outage(spec_path: Path, seconds: float, **rule: Any) -> None:
    now = time.time()
    write_spec(spec_path, [Rule(start=now, end=now + seconds, **rule)])


def _started(store: Any) -> bool:
    return any(store.list(layout.metrics_dir(i)) for i in range(TRIALS))


def _check_clean_end(url: str, procs: list[AgentProc]) -> None:
    codes = [p.wait(240) for p in procs]
    assert codes == [0] * len(procs), "\n\n".join(p.output() for p in procs)
    store = open_(url)
    res = results(store)
    assert sorted(res) == list(range(TRIALS)), "\n\n".join(p.output() for p in procs)
    for i, r in res.items():
        assert r.status == "completed"
        assert records_of(store, i, "failed") == {}, (i, records_of(store, i, "failed"))
        assert canonical_steps(store, i) == list(range(1, STEPS + 1))
    beats = [read(store, e.key, records.Heartbeat) for e in store.list(layout.AGENTS_DIR)]
    assert len(beats) == len(procs) and all(h.state == "exited" for h in beats)


SLOW = pytest.mark.slow
SCENARIOS: dict[str, tuple[float, dict[str, Any]]] = {
    "short": (1.0, {"error": "EIO"}),  # shorter than the lease (2 s)
    "longer-than-lease": (4.0, {"error": "SlowDown"}),
    "worker-only": (3.0, {"error": "ETIMEDOUT", "process": "worker"}),  # only the workers lose the store
    "creates": (3.0, {"error": "ESTALE", "ops": ["create"], "prefix": "trials/"}),  # claims, metrics, results
}
# ~25 s each on 2 cores: one of each kind by default, every combination under -m slow.
CASES = [
    pytest.param("posix", "longer-than-lease", id="posix-longer-than-lease"),
    pytest.param("s3", "creates", id="s3-creates"),
    pytest.param("posix", "worker-only", id="posix-worker-only"),
    pytest.param("posix", "short", id="posix-short", marks=SLOW),
    pytest.param("posix", "creates", id="posix-creates", marks=SLOW),
    pytest.param("s3", "short", id="s3-short", marks=SLOW),
    pytest.param("s3", "longer-than-lease", id="s3-longer-than-lease", marks=SLOW),
    pytest.param("s3", "worker-only", id="s3-worker-only", marks=SLOW),
]


@pytest.mark.parametrize(("backend", "scenario"), CASES)
def test_agents_ride_out_an_outage(
    backend: str,
    scenario: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    start_agent: Callable[[str], AgentProc],
    spec_path: Path,
) -> None:
    url = store_url(backend, tmp_path, request)
    seconds, rule = SCENARIOS[scenario]
    _launch(url)
    procs = [start_agent(url), start_agent(url)]
    store = open_(url)
    wait_for("a trial running", lambda: _started(store), timeout=120)
    _outage(spec_path, seconds, **rule)
    _check_clean_end(url, procs)


@pytest.mark.parametrize("backend", ["posix", pytest.param("s3", marks=SLOW)])
def test_failing_heartbeats_stop_claims_and_lose_nothing(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    start_agent: Callable[[str], AgentProc],
    spec_path: Path,
) -> None:
    url = store_url(backend, tmp_path, request)
    _launch(url)
    procs = [start_agent(url), start_agent(url)]
    store = open_(url)
    wait_for("a trial running", lambda: _started(store), timeout=120)
    _outage(spec_path, 3.0, error="EIO", ops=["replace"], prefix=layout.AGENTS_DIR)
    _check_clean_end(url, procs)
