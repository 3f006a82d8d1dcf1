"""A self-takeover (an agent that fenced itself and took its own trial back) never counts
against ``max_takeovers``; takeovers by other agents do."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ablator import layout, records
from ablator.lease import Claimer, LeaseLimits, Membership
from ablator.store import Store, open_store
from tests.lease.helpers import FakeClock, spec


def _history(store: Store, holders: list[str]) -> None:
    """Trial 0 claimed by ``holders[e]`` at each epoch e, each vanished (no failure, no release)."""
    for e, agent in enumerate(holders):
        rec = records.Claim(trial=0, epoch=e, agent_id=agent, host="h", spec=spec(0) if e == 0 else None)
        assert store.create(layout.claim(0, e), records.encode(rec))
    last = records.Heartbeat(
        agent_id=holders[-1], host="h", pid=1, counter=9, lease_s=30.0, heartbeat_s=5.0, state="exited"
    )
    store.replace(layout.agent(holders[-1]), records.encode(last))


def test_self_takeovers_never_count_against_max_takeovers(tmp_path: Path) -> None:
    limits = LeaseLimits(lease_seconds=30.0, heartbeat_seconds=5.0, max_takeovers=2)
    store = open_store(str(tmp_path / "a"))
    _history(store, ["a-1-x", "a-1-x", "a-1-x", "a-1-x"])  # one agent took its own trial back thrice
    observer = Claimer(store, Membership(store, limits, clock=FakeClock(), host="o", versions={}), budget=1)
    got = observer.claim(0, spec)
    assert got is not None and got.epoch == 4  # run again: it never killed another host
    # Three different hosts vanished with it: it is a poison pill, failed as "lost".
    store = open_store(str(tmp_path / "b"))
    _history(store, ["a-1-x", "b-2-x", "c-3-x", "d-4-x"])
    observer = Claimer(store, Membership(store, limits, clock=FakeClock(), host="o", versions={}), budget=1)
    assert observer.claim(0, spec) is None
    failure = records.decode(store.read(layout.failed(0, 4)), records.Failure, "f")
    assert failure.kind == "lost"


def test_a_busy_observer_keeps_watching_and_takes_the_orphan_before_new_indexes(tmp_path: Path) -> None:
    limits = LeaseLimits(lease_seconds=30.0, heartbeat_seconds=5.0)
    store = open_store(str(tmp_path / "s"))
    clock = FakeClock()
    b_m = Membership(store, limits, clock=clock, host="b", agent_id="b-2-x", versions={})
    b = Claimer(store, b_m, budget=50)
    busy = b.claim_next(spec)  # B's only slot is busy from now on
    assert busy is not None
    # A joins while B is busy, claims trial 40, and dies (SIGKILL) right after listing it.
    a = Membership(store, limits, clock=clock, host="a", agent_id="a-1-x", versions={})
    a.beat()
    held_a = Claimer(store, a, budget=50).claim(40, spec)
    assert held_a is not None
    a.beat()
    # By the store's clock the claim will be as old as the fake time below makes it (a fake
    # clock does not move the store's): it was made a lease and more before the slot frees.
    aged = time.time() - limits.lease_seconds - 2 * limits.heartbeat_seconds
    os.utime(Path(tmp_path / "s", *layout.claim(40, 0).split("/")), (aged, aged))
    for _ in range(int(limits.lease_seconds / limits.heartbeat_seconds) + 2):
        clock.advance(limits.heartbeat_seconds)
        b_m.beat()
        b.watch()  # what the agent does about once a heartbeat while its slots are full
    assert busy.finish()
    got = b.claim_next(spec)  # the slot is free: the orphan first, at once
    assert got is not None and (got.trial, got.epoch) == (40, 1)
