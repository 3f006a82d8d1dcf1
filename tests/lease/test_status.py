"""``python -m ablator status STORE [--json] [--check]`` on a local folder and on S3."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import ablator_cli, put_claim

from ablator import layout, records
from ablator.errors import StoreError
from ablator.experiment import data_hash
from ablator.lease import Claimer, LeaseLimits, Membership
from ablator.status import collect
from ablator.store import open_store
from ablator.store.base import Store

from .helpers import Wrapped, spec


def _build(store: Store) -> Membership:
    """Budget 8: 0 done, 1 retryable, 2 released, 3 running (live agent), 4 orphaned (dead
    agent), 5 corrupt result, 6-7 pending. Returns the live agent (started)."""
    store.replace(
        layout.EXPERIMENT,
        records.encode_json(
            records.ExperimentSpec(
                name="demo",
                experiment={"limits": {"lease_seconds": 30, "heartbeat_seconds": 5}},
                experiment_hash=data_hash({"limits": {"lease_seconds": 30, "heartbeat_seconds": 5}}),
                budget=8,
            )
        ),
    )
    dead = records.Heartbeat(
        agent_id="oldbox-77-dead",
        host="oldbox",
        pid=77,
        counter=3,
        lease_s=1.0,
        heartbeat_s=0.25,
        held=[(4, 0)],
    )
    store.replace(layout.agent(dead.agent_id), records.encode(dead))
    put_claim(store, 4, spec=spec(4), agent=dead.agent_id)
    for t in (0, 1, 2, 5):
        put_claim(store, t, spec=spec(t), agent="gone-1-aaaa")
    store.create(layout.result(0), records.encode(records.Result(trial=0, epoch=0, agent_id="gone-1-aaaa")))
    store.create(
        layout.failed(1, 0), records.encode(records.Failure(trial=1, epoch=0, agent_id="gone-1-aaaa"))
    )
    store.create(
        layout.release(2, 0), records.encode(records.Release(trial=2, epoch=0, agent_id="gone-1-aaaa"))
    )
    store.create(layout.result(5), b"\x92\x01")  # truncated
    gpus = [records.GpuInfo(index=0, name="H100"), records.GpuInfo(index=1, name="H100")]
    m = Membership(store, LeaseLimits(lease_seconds=30, heartbeat_seconds=5), host="gpubox", gpus=gpus)
    m.start()
    c = Claimer(store, m, budget=8)
    held = c.claim(3, spec)
    assert held is not None
    m.beat()  # list it now
    return m


@pytest.mark.procs
def test_status_counts_agents_and_progress(backend: str, store_url: str, backend_env: dict[str, str]) -> None:
    url, env = store_url, backend_env
    store = open_store(url)
    live = _build(store)
    try:
        time.sleep(3)  # the dead agent's heartbeat (lease 1 s) ages past lease + slack by the store's clock
        live.beat()
        out = ablator_cli("status", url, "--json", env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["experiment"] == "demo" and rep["budget"] == 8 and rep["clock"] == "store"
        assert rep["counts"] == {
            "pending": 2,
            "running": 1,
            "done": 1,
            "failed": 0,
            "retryable": 1,
            "released": 1,
            "orphaned": 1,
            "needs_repair": 1,
        }
        assert rep["progress"] == {"finished": 2, "total": 8, "fraction": 0.25}
        assert rep["needs_repair"] == [5] and rep["orphaned"] == [4] and rep["running"] == [3]
        agents = {a["agent_id"]: a for a in rep["agents"]}
        a = agents[live.agent_id]
        assert (
            a["live"] is True
            and a["host"] == "gpubox"
            and a["gpus"] == ["H100", "H100"]
            and a["held"] == [[3, 0]]
        )
        assert 0 <= a["age_s"] <= 30  # within its lease by the store clock
        d = agents["oldbox-77-dead"]
        assert d["live"] is False and d["age_s"] >= 1.0 and d["held"] == [[4, 0]]
        assert any("result.msgpack" in p and "needs repair" in p for p in rep["problems"])
        # read-only apart from the probe: nothing left behind
        assert not [e for e in store.list(layout.SELFTEST_DIR)]

        if backend == "s3":
            return  # the text and --check paths do not depend on the backend (and moto is slow)
        text = ablator_cli("status", url, "--check", env=env, timeout=120)
        assert text.returncode == 0, text.stderr
        for needle in (
            "experiment  demo",
            "needs repair 1",
            "orphaned 1",
            "progress    2/8",
            "gpubox",
            "oldbox",
            "2 GPU (H100)",
            "self-test   passed",
        ):
            assert needle in text.stdout, (needle, text.stdout)
    finally:
        live.close()


def test_status_without_a_writable_store_says_unknown(tmp_path: Path) -> None:
    """No probe can be written: ages are unknown and claims count as running (never orphaned)."""
    store = open_store(str(tmp_path / "exp"))
    live = _build(store)
    live.close()
    w = Wrapped(store)

    def refuse(key: str, call: Any) -> None:
        raise StoreError("read-only")

    w.hooks["replace"] = refuse
    rep = collect(w)  # type: ignore[arg-type]
    assert rep.clock.startswith("unknown")
    assert all(a.age_s is None for a in rep.agents)
    assert rep.counts["orphaned"] == 0 and rep.counts["running"] == 2  # 3 and 4: cannot tell
    assert rep.counts["needs_repair"] == 1


@pytest.mark.procs
def test_status_of_a_missing_store_is_an_error(tmp_path: Path) -> None:
    out = ablator_cli("status", str(tmp_path / "nope"), timeout=120)
    assert out.returncode == 1 and "no such folder" in out.stderr
    (tmp_path / "empty").mkdir()
    out = ablator_cli("status", str(tmp_path / "empty"), timeout=120)
    assert out.returncode == 1 and "no experiment here" in out.stderr
