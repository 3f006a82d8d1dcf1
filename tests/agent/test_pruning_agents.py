"""Pruning across real agent processes, on a local folder and on S3 (moto), for both trial
styles: trials that one agent ran set the bar at each rung, and another agent's trials that fall
below it end ``pruned`` -- a result, not a failure -- at the rung's step."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, records
from ablator.pruners import asha_promotes

from .conftest import ROOT, launch_toy, open_, read, results, wait_for

pytestmark = pytest.mark.procs  # every test here starts processes

GOOD = [0.6, 0.7, 0.9]  # run first, by agent A: each is the best so far, so each is promoted
BAD = [0.1, 0.3, 0.05]  # run by agent B: behind all of A's trials at rung 0
PRUNER = {"kind": "asha", "min_steps": 1, "reduction_factor": 3, "max_steps": 9}  # rungs at steps 1, 3


def curve_experiment(
    style: str, xs: list[float], entry_module: str = "tests.agent.prunetoy", **config: Any
) -> dict[str, Any]:
    common = {
        "name": f"prune-{style}",
        "limits": {
            "max_attempts": 2,
            "max_takeovers": 5,
            "lease_seconds": 6.0,
            "heartbeat_seconds": 1.0,
            "stall_seconds": 60,
        },
        "resources": {"gpu": "none"},
    }
    if style == "function":
        return {
            **common,
            "entry": f"{entry_module}:trial",
            "config": {"steps": 9, **config},
            "metric": {"name": "score", "mode": "max"},
            "design": {"kind": "grid", "space": {"x": {"choice": xs}}, "pruner": PRUNER},
        }
    return {
        **common,
        "entry": f"{entry_module}:CurveWrapper",
        "config": {
            "model": {"x": 0.5},
            "train": {"batch_size": 2, "epochs": 2, "max_steps": 9, "eval_every": 1},
        },
        "metric": {"name": "val_score", "mode": "max"},
        "design": {"kind": "grid", "space": {"model.x": {"choice": xs}}, "pruner": PRUNER},
    }


def _agent_pid(agent_id: str) -> int:
    return int(agent_id.rsplit("-", 2)[-2])


def rung_records(store: Any, rung: int) -> dict[int, records.RungValue]:
    out = {}
    for e in store.list(layout.rung_dir(rung)):
        rec = read(store, e.key, records.RungValue)
        out[rec.trial] = rec
    return out


@pytest.mark.parametrize(
    ("where", "style"),
    [
        ("posix", "function"),
        ("posix", "wrapper"),
        ("s3", "function"),
        # torch in an agent and its worker on top of the moto server: a minute on a shared machine
        pytest.param("s3", "wrapper", marks=pytest.mark.slow),
    ],
)
def test_one_agents_trials_prune_anothers(
    where: str, style: str, agents: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = str(tmp_path / "store") if where == "posix" else str(request.getfixturevalue("s3_url"))
    module = "tests.agent.prunetoy"
    code_dir = None
    if store_url.startswith("s3://"):  # on S3 the entry lives in the launched code snapshot
        code_dir = tmp_path / "code"
        code_dir.mkdir()
        (code_dir / "snap_prunetoy.py").write_text((ROOT / "tests" / "agent" / "prunetoy.py").read_text())
        module = "snap_prunetoy"
    launch_toy(store_url, curve_experiment(style, GOOD + BAD, module), code_dir=code_dir)
    first = agents(store_url, "--max-trials", "3")
    assert first.wait(240) == 0, first.output()
    second = agents(store_url)
    assert second.wait(240) == 0, second.output()

    store = open_(store_url)
    res = results(store)
    assert sorted(res) == list(range(6))
    metric = "score" if style == "function" else "val_score"
    key = "x" if style == "function" else "model.x"
    x = {i: read(store, layout.claim(i, 0), records.Claim).spec.overrides[key] for i in res}
    ran_by = {i: _agent_pid(res[i].agent_id) for i in res}
    assert set(ran_by.values()) == {first.pid, second.pid}
    # A finished before B started and each runs one trial at a time, so the rung records were
    # decided one after another, in the order of their writers' clock (one host): each decision
    # must be the rule's over the values recorded before it
    pruned_across = 0
    for rung in (0, 1):
        recs = sorted(rung_records(store, rung).values(), key=lambda rec: rec.wall_time)
        for k, rec in enumerate(recs):
            earlier = [e.value for e in recs[:k]]
            assert rec.promoted == asha_promotes(rec.value, [*earlier, rec.value], 3, "max"), (rung, rec)
            assert rec.value == pytest.approx(x[rec.trial] * rec.step / 9)
            same_agent = [e.value for e in recs[:k] if ran_by[e.trial] == ran_by[rec.trial]]
            if not rec.promoted and asha_promotes(rec.value, [*same_agent, rec.value], 3, "max"):
                pruned_across += 1  # only the other agent's values put it below the bar
    assert pruned_across >= 1
    rung0 = rung_records(store, 0)
    for i, r in res.items():
        if rung0[i].promoted:
            assert r.status == "completed" and r.steps == 9, r
            continue
        # pruned at rung 0 (step 1): a result with its last value, not a failure
        assert r.status == "pruned" and r.steps == 1 and "rung 0 (step 1)" in r.message, r
        assert r.metrics[metric] == pytest.approx(x[i] / 9) == pytest.approx(rung0[i].value)
        assert read(store, layout.failed(i, r.epoch), records.Failure) is None
    assert sum(r.status == "pruned" for r in res.values()) >= 2


def test_a_takeover_keeps_a_promoted_trials_decisions(local_store: str, agents: Any, tmp_path: Path) -> None:
    """A promoted trial whose agent is SIGKILLed past rung 1 is resumed by another agent from its
    checkpoint: it finishes, and its rung records (its decisions) are the ones written before."""
    trace = tmp_path / "trace"
    trace.mkdir()
    exp = curve_experiment("function", [0.5], sleep=0.3, trace_dir=str(trace))
    launch_toy(local_store, exp)
    store = open_(local_store)
    a = agents(local_store)
    wait_for("rung 1 decided", lambda: rung_records(store, 1))
    before = (rung_records(store, 0)[0], rung_records(store, 1)[0])
    assert before[0].promoted and before[1].promoted
    a.signal(signal.SIGKILL)
    a.wait(30)
    b = agents(local_store)
    assert b.wait(240) == 0, b.output()
    res = read(store, layout.result(0), records.Result)
    assert res.status == "completed" and res.epoch >= 1 and res.steps == 9
    assert (rung_records(store, 0)[0], rung_records(store, 1)[0]) == before
    starts = [tuple(map(int, line.split())) for line in (trace / "0.txt").read_text().splitlines()]
    assert starts[0] == (0, 0, 0) and starts[-1][1] >= 1 and starts[-1][2] >= 3  # resumed past rung 1
