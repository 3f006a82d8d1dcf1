"""Real agent processes against a local store and S3 (moto): exactly-once results, takeovers
after SIGKILL and SIGSTOP, SIGTERM drains, failures, broken entry points and snapshots."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from testkit import ablator_cli

from ablator import layout, records
from ablator.codesnap import snapshot_code
from ablator.experiment import data_hash

from .conftest import (
    ROOT,
    canonical_steps,
    experiment,
    launch_toy,
    open_,
    read,
    records_of,
    results,
    status_json,
    wait_for,
)

pytestmark = pytest.mark.procs  # every test here starts processes


def test_three_agents_thirty_trials_exactly_once(
    store_url: str, agents: Any, agent_env: dict[str, str], tmp_path: Path
) -> None:
    exp = experiment(
        config={"steps": 2, "checkpoint_every": 2, "sleep": 0.01},
        design={"kind": "random", "trials": 30, "seed": 3, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    code_dir = None
    if store_url.startswith("s3://"):
        # On S3 the entry point lives only in a code snapshot: the agents import it from there.
        code_dir = tmp_path / "code"
        code_dir.mkdir()
        (code_dir / "snap_toy_entry.py").write_text((ROOT / "tests" / "agent" / "toy.py").read_text())
        exp["entry"] = "snap_toy_entry:trial"
    launch_toy(store_url, exp, code_dir=code_dir)
    procs = [agents(store_url) for _ in range(3)]
    codes = [p.wait(240) for p in procs]
    assert codes == [0, 0, 0], "\n".join(p.output() for p in procs)
    store = open_(store_url)
    res = results(store)
    assert sorted(res) == list(range(30))
    for i, r in res.items():
        assert r.trial == i and r.status == "completed"
        claim = read(store, layout.claim(i, r.epoch), records.Claim)
        assert claim.agent_id == r.agent_id  # the result was written by the epoch's holder
        assert canonical_steps(store, i) == [1, 2]
    # Every agent joined and left cleanly (how the trials split between them is up to timing).
    beats = [read(store, e.key, records.Heartbeat) for e in store.list(layout.AGENTS_DIR)]
    assert len(beats) == 3 and all(h.state == "exited" and h.held == [] for h in beats)
    # Each trial's config is the one its claim recorded.
    first = read(store, layout.claim(0, 0), records.Claim)
    assert first.spec is not None and first.spec.overrides["x"] == first.spec.config["x"]
    report = status_json(store_url, agent_env)
    assert report["counts"]["done"] == 30
    assert report["progress"]["finished"] == 30 and report["progress"]["total"] == 30
    if code_dir is not None:
        spec = records.decode_json(store.read(layout.EXPERIMENT), records.ExperimentSpec)
        assert spec.code_sha256 == snapshot_code(code_dir).sha256


def _holder_of(store: Any, trial: int, epoch: int) -> str | None:
    c = read(store, layout.claim(trial, epoch), records.Claim)
    return None if c is None else c.agent_id


def _agent_pid(agent_id: str) -> int:
    return int(agent_id.rsplit("-", 2)[-2])


def _ckpts(store: Any, trial: int, epoch: int) -> list[int]:
    out = []
    for e in store.list(layout.ckpt_dir(trial)):
        parsed = layout.parse_epoch_step(layout.basename(e.key))
        if parsed and parsed[0] == epoch:
            out.append(parsed[1])
    return sorted(out)


def _pair(agents: Any, store_url: str) -> tuple[Any, Any, Any]:
    """Two agents started together; (holder of trial 0, the other one, store) once the holder
    has checkpointed."""
    store = open_(store_url)
    both = [agents(store_url), agents(store_url)]
    holder = wait_for("trial 0 claimed", lambda: _holder_of(store, 0, 0))
    victim = next((a for a in both if a.pid == _agent_pid(holder)), None)
    assert victim is not None, holder
    other = both[1] if victim is both[0] else both[0]
    return victim, other, store


def test_sigkill_takeover_resumes_from_checkpoint(store_url: str, agents: Any, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    exp = experiment(
        config={"steps": 24, "checkpoint_every": 2, "sleep": 0.15, "trace_dir": str(trace)},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(store_url, exp)
    a, b, store = _pair(agents, store_url)
    wait_for("a checkpoint at step 4", lambda: [s for s in _ckpts(store, 0, 0) if s >= 4])
    a.signal(signal.SIGKILL)  # no release: B must wait out A's lease, then take over
    assert b.wait(240) == 0, b.output()
    killed_at = max(_ckpts(store, 0, 0))  # A's workers died with it: nothing newer appears
    res = read(store, layout.result(0), records.Result)
    assert res.epoch >= 1 and _agent_pid(res.agent_id) == b.pid
    att = records_of(store, 0, "attempt")
    assert att[1].resumed_from is not None
    ep, step = att[1].resumed_from
    assert ep == 0 and step >= 4 and step <= killed_at
    assert 0 not in records_of(store, 0, "release")  # a crash is a takeover, not a failure
    assert records_of(store, 0, "failed") == {}
    # The history continues from the checkpoint: no restart at step 1, no gap, no duplicate.
    assert canonical_steps(store, 0) == list(range(1, 25))
    # The winner wrote the trial's one-file summary; analysis reads it, not the records.
    from ablator.analysis import load

    assert store.exists(layout.trial_summary(0))
    summarised, plain = load(store_url), load(store_url, cache=False)
    assert summarised.info.from_summaries == 1 and summarised.trials.equals(plain.trials)
    assert summarised.history.filter(pl.col("metric") == "score")["step"].to_list() == list(range(1, 25))
    lines = [tuple(map(int, line.split())) for line in (trace / "0.txt").read_text().splitlines()]
    assert lines[0] == (0, 0, 0) and lines[-1][1] >= 1 and lines[-1][2] == step


def test_sigstop_past_lease_old_holder_stops(local_store: str, agents: Any) -> None:
    exp = experiment(
        config={"steps": 30, "checkpoint_every": 2, "sleep": 0.15},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(local_store, exp)
    a, b, store = _pair(agents, local_store)
    wait_for("a first checkpoint", lambda: _ckpts(store, 0, 0))
    a.signal(signal.SIGSTOP)  # A's heartbeat stops; its worker keeps running until it fences
    wait_for("the takeover by B", lambda: read(store, layout.attempt(0, 1), records.Attempt))
    a.signal(signal.SIGCONT)
    assert b.wait(240) == 0, b.output()
    assert a.wait(120) == 0, a.output()
    res = read(store, layout.result(0), records.Result)
    assert res.epoch == 1 and _agent_pid(res.agent_id) == b.pid
    # The old holder wrote no result, no failure and no release: it noticed and stopped.
    assert records_of(store, 0, "failed") == {} and records_of(store, 0, "release") == {}
    assert sorted(records_of(store, 0, "claim")) == [0, 1]
    out = a.output()
    assert "lease lost" in out or "fenced" in out, out
    assert canonical_steps(store, 0) == list(range(1, 31))


def test_sigterm_releases_and_another_agent_resumes_at_once(
    store_url: str, agents: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"  # A's attempts keep running until this file exists (it never does)
    # A lease far longer than the test may run: B can only finish by picking up the releases.
    # The hold applies to A's attempts (epoch 0) only: B resumes the moment a release appears,
    # and its attempt must end right at the released checkpoint, whenever that happens (a hold
    # in B's attempt too would race the test's creating the file against B's next step).
    exp = experiment(
        config={
            "steps": 4,
            "checkpoint_every": 2,
            "sleep": 0.05,
            "hold_file": str(go),
            "hold_epoch": 0,
        },
        design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"lease_seconds": 600, "heartbeat_seconds": 0.5},
    )
    launch_toy(store_url, exp)
    store = open_(store_url)
    a = agents(store_url, "--slots", "2", "--grace-seconds", "30")
    wait_for("both trials checkpointed", lambda: _ckpts(store, 0, 0) and _ckpts(store, 1, 0))
    b = agents(store_url)  # idle: everything is held by A, whose lease is long
    wait_for("B's heartbeat", lambda: len(store.list(layout.AGENTS_DIR)) == 2)
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0, a.output()
    released = {}
    for t in (0, 1):
        rel = records_of(store, t, "release")[0]
        assert rel.step is not None and rel.step in _ckpts(store, t, 0)
        assert "SIGTERM" in rel.reason
        released[t] = rel.step
    last = read(store, layout.agent(_holder_of(store, 0, 0) or ""), records.Heartbeat)
    assert last.state == "exited" and last.held == []
    assert b.wait(120) == 0, b.output()
    for t in (0, 1):
        att = records_of(store, t, "attempt")[1]
        assert att.resumed_from == (0, released[t])
        res = read(store, layout.result(t), records.Result)
        assert res.epoch == 1 and _agent_pid(res.agent_id) == b.pid
        # The released checkpoint is where the history continues (the hold is over, so the
        # resumed attempt ends right there): no step lost, none twice.
        assert canonical_steps(store, t) == list(range(1, released[t] + 1))


def test_failures_retried_then_failed_and_crashes_contained(local_store: str, agents: Any) -> None:
    exp = experiment(
        config={"steps": 3, "checkpoint_every": 1, "sleep": 0.05},
        design={
            "kind": "ablation",
            "ablations": {
                "raises": {"mode": "raise", "fail_at": 2},
                "aborts": {"mode": "abort", "only_epoch": 0},
                "hangs": {"mode": "hang", "only_epoch": 0},
            },
        },
        # No takeover belongs here, so a long lease: with FAST_LIMITS' 2 s an agent fences its
        # own trials after 1.2 s without a renewal, and heartbeats a second late were seen at
        # load 10+ (a self-takeover would shift every epoch below). The stall limit is what the
        # hanging trial waits for and what a healthy attempt must never reach: its first report
        # comes after durable (fsynced) attempt and checkpoint writes on a shared, busy disk.
        # At 4 s, one run in 11 at load 8-10 recorded a raising attempt's failure as something
        # other than its exception (the only other kind its attempts can get is "stalled").
        limits={"max_attempts": 2, "stall_seconds": 15, "lease_seconds": 30, "heartbeat_seconds": 0.5},
    )
    launch_toy(local_store, exp)
    a = agents(local_store)
    assert a.wait(240) == 0, a.output()  # the agent survived the aborts and finished the rest
    store = open_(local_store)
    assert read(store, layout.result(0), records.Result).status == "completed"  # the baseline
    raised = records_of(store, 1, "failed")
    assert sorted(raised) == [0, 1]  # max_attempts = 2, then failed for good
    assert all(
        f.kind == "exception" and "ValueError" in f.traceback and "on purpose" in f.message
        for f in raised.values()
    ), {e: (f.kind, f.message) for e, f in raised.items()}
    assert raised[0].step == 1
    # The retry resumed from the checkpoint of step 1 and raised again at step 2.
    assert records_of(store, 1, "attempt")[1].resumed_from == (0, 1)
    # The aborting and the hanging trial fail once (crashed / stalled), then their retry
    # completes in a fresh worker.
    aborted = records_of(store, 2, "failed")
    assert sorted(aborted) == [0] and aborted[0].kind == "crashed" and "SIGABRT" in aborted[0].message
    stalled = records_of(store, 3, "failed")
    assert sorted(stalled) == [0] and stalled[0].kind == "stalled" and "stall_seconds" in stalled[0].message
    for t in (2, 3):
        assert read(store, layout.result(t), records.Result).epoch == 1
    assert read(store, layout.result(1), records.Result) is None
    # Each attempt's output is kept in the store, bounded.
    log = store.read(layout.log(1, 0)).decode()
    assert "toy trial 1 epoch 0 step 1" in log and "ValueError" in log


@pytest.mark.parametrize("broken", ["entry", "snapshot_hash", "snapshot_escape"])
def test_broken_code_exits_nonzero_and_claims_nothing(
    broken: str, local_store: str, agents: Any, tmp_path: Path
) -> None:
    import io
    import zipfile

    from ablator.codesnap import sha256_hex

    exp = experiment(design={"kind": "random", "trials": 3, "space": {"x": {"range": [0.0, 1.0]}}})
    store = open_(local_store)
    if broken == "entry":
        # The code changed after launch (or this machine has another version): the entry is gone.
        exp["entry"] = "tests.agent.toy:no_such_trial"
        spec = records.ExperimentSpec(name="toy", experiment=exp, experiment_hash=data_hash(exp), budget=3)
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("snapmod.py", "def trial(c, ctx): pass\n")
            if broken == "snapshot_escape":
                zf.writestr("../escaped.py", "X = 1\n")
        data = buf.getvalue()
        sha = sha256_hex(data) if broken == "snapshot_escape" else sha256_hex(b"other bytes")
        store.create(layout.code(sha), data)
        spec = records.ExperimentSpec(
            name="toy", experiment=exp, experiment_hash=data_hash(exp), budget=3, code_sha256=sha
        )
    store.create(layout.EXPERIMENT, records.encode_json(spec))
    a = agents(local_store)
    assert a.wait(120) == 1
    out = a.output()
    expected = {
        "entry": "no_such_trial",
        "snapshot_hash": "hashes to",
        "snapshot_escape": "escape the cache folder",
    }
    assert expected[broken] in out, out
    assert store.list(layout.TRIALS_DIR) == [] and store.list(layout.AGENTS_DIR) == []
    assert not (tmp_path / "escaped.py").exists()


def test_status_and_cli_launch_roundtrip(local_store: str, agent_env: dict[str, str], tmp_path: Path) -> None:
    import yaml

    exp = experiment(design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return ablator_cli(*args, env=agent_env, timeout=120)

    first = cli("launch", str(path), "--store", local_store)
    assert first.returncode == 0 and "launched" in first.stdout, first.stderr
    again = cli("launch", str(path), "--store", local_store)
    assert again.returncode == 0 and "already launched" in again.stdout
    other = cli("launch", str(path), "--store", local_store, "--set", "config.steps=9")
    assert other.returncode == 1 and "config.steps" in other.stderr and "differs" in other.stderr
    ext = cli("launch", str(path), "--store", local_store, "--extend", "3")
    assert ext.returncode == 0 and "budget: 5 trials" in ext.stdout, ext.stdout + ext.stderr


def test_retry_extend_stop_while_a_tpe_agent_runs(local_store: str, agents: Any, tmp_path: Path) -> None:
    from ablator.ops import retry_failed, stop

    fixed = tmp_path / "bug-fixed"
    exp = experiment(
        config={"steps": 2, "checkpoint_every": 1, "mode": "raise", "unless_file": str(fixed)},
        design={"kind": "tpe", "trials": 4, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"max_attempts": 1},
    )
    launch_toy(local_store, exp)
    store = open_(local_store)
    a = agents(local_store, "--watch")
    wait_for("every trial failed", lambda: all(records_of(store, t, "failed") for t in range(4)), timeout=120)
    assert results(store) == {}
    fixed.touch()  # "the bug fix"
    rec = retry_failed(local_store)
    assert rec is not None and rec.epochs == {0: 0, 1: 0, 2: 0, 3: 0}
    assert retry_failed(local_store) is None  # nothing is failed now: no second record
    wait_for("the retried trials' results", lambda: len(results(store)) == 4)
    for t, r in results(store).items():
        assert r.epoch == 1 and records_of(store, t, "failed")[0].kind == "exception"  # the old failure stays
    ext = launch_toy(local_store, exp, extend=2)
    assert ext.budget == 6 and ext.extension == 0 and not ext.created
    wait_for("the extension's results", lambda: len(results(store)) == 6)
    assert stop(local_store, "test") is True and stop(local_store) is False
    assert a.wait(60) == 0, a.output()
    assert "stopped by the operator" in a.output()
    # TPE: each claim records its point (overrides and the sampler's params), chosen once.
    xs = []
    for t in range(6):
        spec = read(store, layout.claim(t, 0), records.Claim).spec
        assert spec.params and spec.overrides["x"] == spec.config["x"] == spec.params["x"]
        point = read(store, layout.design_point(t), records.DesignPoint)
        assert point.overrides == spec.overrides
        xs.append(spec.config["x"])
    assert len(set(xs)) == 6


def test_reused_workers_claim_while_results_are_written(local_store: str, agents: Any) -> None:
    # Short trials on two slots, and a budget grown while the agent waits (--watch): the agent
    # claims the next trial while it still holds the previous one. Every trial must run once,
    # under its first claim, and no hold may be lost on the way (a long lease: any takeover
    # here would be a bug, not a slow machine).
    from ablator.ops import stop

    exp = experiment(
        config={"mode": "noop"},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"lease_seconds": 300, "heartbeat_seconds": 1},
    )
    launch_toy(local_store, exp)
    store = open_(local_store)
    a = agents(local_store, "--watch", "--slots", "2")
    wait_for("the first result", lambda: store.exists(layout.result(0)))
    launch_toy(local_store, exp, extend=30)
    wait_for("30 more results", lambda: len(results(store)) == 31)
    stop(local_store)
    assert a.wait(60) == 0, a.output()
    assert "lease lost" not in a.output() and "warning" not in a.output(), a.output()
    for t in range(31):
        assert sorted(records_of(store, t, "claim")) == [0], t


def test_a_loss_seen_only_by_the_worker_reaches_the_agent(
    local_store: str, agents: Any, tmp_path: Path
) -> None:
    """A result appears for the trial a worker is running (another agent finished it): only the
    worker's fence sees it (the agent's own check waits a heartbeat of 100 s). The agent must let
    the claim go, stop listing the trial, and be done."""
    exp = experiment(
        config={"steps": 4, "checkpoint_every": 2, "sleep": 0.05, "hold_file": str(tmp_path / "never")},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"lease_seconds": 600, "heartbeat_seconds": 100},
    )
    launch_toy(local_store, exp)
    store = open_(local_store)
    a = agents(local_store)
    wait_for("a first checkpoint", lambda: _ckpts(store, 0, 0))
    elsewhere = records.Result(trial=0, epoch=0, agent_id="elsewhere-1-abcd", metrics={"score": -1.0})
    assert store.create(layout.result(0), records.encode(elsewhere))
    assert a.wait(120) == 0, a.output()
    assert "lease lost" in a.output() and "a result already exists" in a.output()
    last = read(store, layout.agent(_holder_of(store, 0, 0) or ""), records.Heartbeat)
    assert last.state == "exited" and last.held == []
    assert read(store, layout.result(0), records.Result).agent_id == "elsewhere-1-abcd"  # untouched
    assert records_of(store, 0, "failed") == {} and records_of(store, 0, "release") == {}
