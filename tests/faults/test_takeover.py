"""Prompt takeover whoever watches, with fake clocks: a claim timed by its own first sight, a
fresh observer that ages heartbeats and claims on the store's clock, and a holder of this very
machine whose process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablator import layout, records
from ablator.lease import Claimer, LeaseLimits, Membership, identity
from ablator.store import open_store
from tests.lease.helpers import FakeClock, spec

LIMITS = LeaseLimits(lease_seconds=30.0, heartbeat_seconds=5.0)


def _age(root: Path, key: str, seconds: float) -> None:
    """Make the key's modification time ``seconds`` old (as if written that long ago)."""
    path = Path(root, *key.split("/"))
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_fresh_claim_of_a_holder_with_failing_heartbeats_is_not_taken_within_its_lease(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path / "s"))
    clock = FakeClock()
    holder = Membership(store, LIMITS, clock=clock, host="h", agent_id="h-1-x", versions={})
    holder.beat()  # its last successful heartbeat
    observer = Claimer(store, Membership(store, LIMITS, clock=clock, host="o", versions={}), budget=2)
    assert observer.state(0).status == "pending"
    observer.done()  # first sight of the holder's heartbeat
    clock.advance(LIMITS.lease_seconds + 1)  # its heartbeat has not changed for a lease ...
    held = Claimer(store, holder, budget=2).claim(0, spec)  # ... but its claims still succeed
    assert held is not None
    observer.done()
    assert observer.liveness.is_dead("h-1-x")
    # The claim itself is new: never taken within a lease of its own making.
    assert observer.state(0).status == "running"
    clock.advance(LIMITS.lease_seconds - 1)
    assert observer.state(0).status == "running"
    clock.advance(2)
    assert observer.state(0).status == "orphaned"


def test_a_fresh_observer_judges_ages_on_the_store_clock(tmp_path: Path) -> None:
    """An agent started after a holder died takes its trial at once when the heartbeat and the
    claim are older than a lease by the store's clock (no lease of its own watching), and not
    when they are recent."""
    root = tmp_path / "s"
    store = open_store(str(root))
    clock = FakeClock()
    for agent_id, trial in (("dead-1-x", 0), ("live-2-x", 1)):
        m = Membership(store, LIMITS, clock=clock, host="elsewhere", agent_id=agent_id, versions={})
        held = Claimer(store, m, budget=2).claim(trial, spec)
        assert held is not None
        m.beat()  # lists the claim
    _age(root, layout.agent("dead-1-x"), 3 * LIMITS.lease_seconds)
    _age(root, layout.claim(0, 0), 3 * LIMITS.lease_seconds)
    fresh = Claimer(store, Membership(store, LIMITS, clock=clock, host="new", versions={}), budget=2)
    got = fresh.claim_next(spec)  # no time passes on the observer's clock
    assert got is not None and (got.trial, got.epoch) == (0, 1)
    assert fresh.state(1).status == "running"  # the live one's heartbeat is recent: not taken


@pytest.mark.procs
def test_a_holder_of_this_machine_whose_process_is_gone_is_taken_at_once(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    clock = FakeClock()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = identity.process_start(child.pid)
    assert start is not None
    # The child's claim and heartbeat, as an agent in it would have written them: same boot, same
    # pid namespace, its pid and start time; it holds trial 0.
    agent_id = f"here-{child.pid}-x"
    claim = records.Claim(trial=0, epoch=0, agent_id=agent_id, host="here", spec=spec(0))
    assert store.create(layout.claim(0, 0), records.encode(claim))
    hb = records.Heartbeat(
        agent_id=agent_id,
        host="here",
        pid=child.pid,
        counter=1,
        lease_s=LIMITS.lease_seconds,
        heartbeat_s=LIMITS.heartbeat_seconds,
        held=[(0, 0)],
        boot_id=identity.boot_id(),
        pid_ns=identity.pid_namespace(),
        start_ticks=start,
    )
    store.replace(layout.agent(agent_id), records.encode(hb))
    observer = Claimer(store, Membership(store, LIMITS, clock=clock, host="here", versions={}), budget=1)
    observer.done()
    assert observer.state(0).status == "running"  # alive: its process exists
    child.kill()
    child.wait()
    clock.advance(LIMITS.heartbeat_seconds)
    assert identity.dead_here(identity.boot_id(), identity.pid_namespace(), child.pid, start)
    got = observer.claim_next(spec)  # long before a lease: the process is gone
    assert got is not None and (got.trial, got.epoch) == (0, 1)
    # and an agent's own heartbeat says who it is
    me = Membership(store, LIMITS, clock=clock, host="here", versions={})
    me.beat()
    mine = records.decode(store.read(layout.agent(me.agent_id)), records.Heartbeat, "hb")
    assert mine.boot_id == identity.boot_id() and mine.pid == os.getpid()
    assert mine.start_ticks == identity.process_start(os.getpid())
