"""Liveness on the observer's clock and self-fencing on the holder's, with a hand-moved clock:
deterministic, no sleeping."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from ablator import layout, records
from ablator.errors import ConfigError, LeaseLost, StoreError
from ablator.lease import Claimer, LeaseLimits, Liveness, Membership, new_agent_id
from ablator.store import memory as memory_backend
from ablator.store import open_store
from ablator.store.base import Store

from .helpers import FakeClock, Wrapped, spec

LIMITS = LeaseLimits(lease_seconds=30, heartbeat_seconds=5)  # fence after 20 s


@pytest.fixture
def store() -> Iterator[Store]:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    yield open_store(f"memory://{name}")
    memory_backend.clear(name)


def _hb(
    agent_id: str, counter: int, held: Sequence[tuple[int, int]] = (), state: str = "running"
) -> records.Heartbeat:
    return records.Heartbeat(
        agent_id=agent_id,
        host="h",
        pid=1,
        counter=counter,
        lease_s=30,
        heartbeat_s=5,
        held=list(held),
        state=state,  # type: ignore[arg-type]
    )


# --- the observer ----------------------------------------------------------------------------


def test_dead_only_after_a_lease_from_first_sight_of_a_counter() -> None:
    clock = FakeClock()
    live = Liveness(30, clock)
    live.observe("a", _hb("a", 7))
    clock.advance(29.9)
    live.observe("a", _hb("a", 7))
    assert live.is_dead("a") is False
    clock.advance(0.1)
    assert live.is_dead("a") is True
    live.observe("a", _hb("a", 8))  # it renewed: a new value restarts the timer
    assert live.is_dead("a") is False
    assert live.is_dead("nobody") is None


def test_a_late_observer_starts_its_own_timer() -> None:
    """The heartbeat may have been written long ago; only our first sight counts (we never
    compare the writer's wall clock with ours)."""
    clock = FakeClock(5_000_000.0)
    live = Liveness(30, clock)
    old = records.Heartbeat(
        agent_id="a", host="h", pid=1, counter=1, lease_s=30, heartbeat_s=5, wall_time=0.0
    )
    live.observe("a", old)
    assert live.is_dead("a") is False
    clock.advance(30)
    assert live.is_dead("a") is True


def test_claim_unlisted_for_a_lease_is_orphaned_even_with_a_live_holder() -> None:
    clock = FakeClock()
    live = Liveness(30, clock)
    live.observe("a", _hb("a", 1, held=[(3, 0)]))
    assert live.claim_orphaned(3, 0, "a") is False
    assert live.claim_orphaned(4, 0, "a") is False  # first sight of (4, 0) unlisted
    for counter in range(2, 8):  # the holder keeps beating, never listing (4, 0)
        clock.advance(5)
        live.observe("a", _hb("a", counter, held=[(3, 0)]))
    assert live.claim_orphaned(4, 0, "a") is True
    assert live.claim_orphaned(3, 0, "a") is False


def test_unknown_holder_and_exited_holder() -> None:
    clock = FakeClock()
    live = Liveness(30, clock)
    live.observe("gone", None)  # missing or corrupt heartbeat
    assert live.claim_orphaned(1, 0, "gone") is False
    assert live.claim_orphaned(2, 0, None) is False  # corrupt claim: holder unknown
    clock.advance(30)
    assert live.claim_orphaned(1, 0, "gone") is True
    assert live.claim_orphaned(2, 0, None) is True
    live.observe("x", _hb("x", 1, state="exited"))
    assert live.claim_orphaned(5, 0, "x") is True  # an exited agent holds nothing


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"at least 3 x limits\.heartbeat_seconds"):
        LeaseLimits(lease_seconds=10, heartbeat_seconds=5)
    with pytest.raises(ConfigError, match="max_attempts"):
        LeaseLimits(max_attempts=0)
    lim = LeaseLimits.from_limits(LeaseLimits(lease_seconds=90, heartbeat_seconds=10), lease_seconds=60)
    assert (lim.lease_seconds, lim.heartbeat_seconds, lim.fence_after) == (60, 10, 40)


def test_agent_ids_are_new_per_start() -> None:
    a, b = new_agent_id("node 7/x"), new_agent_id("node 7/x")
    assert a != b and a.startswith("node_7_x-") and "/" not in a


# --- the holder ------------------------------------------------------------------------------


def _member(store: Store, clock: FakeClock) -> tuple[Membership, Claimer]:
    # No start(): the test calls beat() itself, so that nothing runs on real time.
    m = Membership(store, LIMITS, clock=clock, host="h")
    assert m.beat()
    return m, Claimer(store, m, budget=10)


def test_holder_fences_itself_when_it_cannot_renew(store: Store) -> None:
    clock = FakeClock()
    w = Wrapped(store)
    m, c = _member(w, clock)  # type: ignore[arg-type]
    held = c.claim_next(spec)
    assert held is not None
    clock.advance(4)
    assert m.beat()
    hb = records.decode(store.read(layout.agent(m.agent_id)), records.Heartbeat)
    assert hb.held == [(held.trial, 0)] and hb.lease_s == 30

    def fail(key: str, call: object) -> None:
        raise StoreError("store unreachable")

    w.hooks["replace"] = fail
    clock.advance(19.9)  # 19.9 s since the last renewal (started at t=4)
    assert not m.beat()
    held.check(remote=False)
    assert held.valid_until() > time.monotonic()
    clock.advance(0.2)  # past lease - 2 x heartbeat = 20 s
    with pytest.raises(LeaseLost, match="fenced itself"):
        held.check(remote=False)
    # fencing is sticky: a renewal that works again does not revive the trial
    del w.hooks["replace"]
    assert m.beat()
    with pytest.raises(LeaseLost):
        held.check(remote=False)
    with pytest.raises(LeaseLost):
        held.finish()
    assert not store.exists(layout.result(held.trial))
    assert records.decode(store.read(layout.agent(m.agent_id)), records.Heartbeat).held == []


def test_failing_heartbeats_warn_once_per_lease_and_say_when_they_work_again(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Failed writes are retried every heartbeat/4: a minute's outage must not print hundreds
    # of lines, but the first failure, a reminder per lease and the recovery must be seen.
    clock = FakeClock()
    w = Wrapped(store)
    m, _ = _member(w, clock)  # type: ignore[arg-type]

    def fail(key: str, call: object) -> None:
        raise StoreError("store unreachable")

    w.hooks["replace"] = fail
    caplog.set_level("WARNING", logger="ablator")
    for _ in range(60):  # 60 failed beats 1.25 s apart: 75 s, two and a half leases
        assert not m.beat()
        clock.advance(1.25)
    failed = [r.getMessage() for r in caplog.records if "heartbeat to" in r.getMessage()]
    assert len(failed) == 3, failed  # at 0 s, 30 s and 60 s
    assert "(1 in a row)" in failed[0] and "(25 in a row)" in failed[1] and "(49 in a row)" in failed[2]
    assert all("store unreachable" in f for f in failed)
    caplog.clear()
    del w.hooks["replace"]
    assert m.beat()
    again = [r.getMessage() for r in caplog.records]
    assert any("written again after 60 failed writes" in a for a in again), again
    caplog.clear()
    w.hooks["replace"] = fail
    assert not m.beat()  # a new outage warns at once again
    assert ["(1 in a row)" in r.getMessage() for r in caplog.records] == [True]


def test_a_renewal_that_lands_after_the_deadline_does_not_count(store: Store) -> None:
    clock = FakeClock()
    w = Wrapped(store)
    m, c = _member(w, clock)  # type: ignore[arg-type]
    held = c.claim_next(spec)
    assert held is not None

    def slow(key: str, call: object) -> object:
        clock.advance(25)  # the write took longer than the fence margin (a stalled process)
        return call()  # type: ignore[operator]

    w.hooks["replace"] = slow
    assert m.beat()  # the store took it...
    with pytest.raises(LeaseLost, match="fenced itself"):
        held.check(remote=False)  # ...but observers may have judged us dead meanwhile


def test_check_sees_a_takeover_and_a_result(store: Store) -> None:
    clock = FakeClock()
    m, c = _member(store, clock)
    a, b = c.claim_next(spec), c.claim_next(spec)
    assert a is not None and b is not None
    other = records.Claim(trial=a.trial, epoch=1, agent_id="someone-else")
    assert store.create(layout.claim(a.trial, 1), records.encode(other))
    with pytest.raises(LeaseLost, match=r"taken over \(claim.e0001 exists\)"):
        a.check()
    with pytest.raises(LeaseLost):
        a.fail("exception", "boom")  # nothing written for a trial that is no longer ours
    assert not store.exists(layout.failed(a.trial, 0))
    store.create(layout.result(b.trial), records.encode(records.Result(trial=b.trial, epoch=0, agent_id="x")))
    with pytest.raises(LeaseLost, match="a result already exists"):
        b.check()
    with pytest.raises(LeaseLost):
        b.release("drain")
    assert not store.exists(layout.release(b.trial, 0))
    assert m.held() == []


def test_finish_is_exactly_once(store: Store) -> None:
    clock = FakeClock()
    _, c = _member(store, clock)
    held = c.claim_next(spec)
    assert held is not None
    held.attempt()
    assert held.finish(records.Outcome(status="completed", metrics={"acc": 0.9}, steps=3)) is True
    res = records.decode(store.read(layout.result(held.trial)), records.Result)
    assert (res.epoch, res.metrics, res.lineage) == (0, {"acc": 0.9}, [(0, None)])
    with pytest.raises(LeaseLost, match="no longer held"):
        held.finish()
    again = c.claim(held.trial, spec)
    assert again is None  # done: nothing to claim


def test_close_fences_what_is_left_and_says_exited(store: Store) -> None:
    clock = FakeClock()
    m, c = _member(store, clock)
    held = c.claim_next(spec)
    assert held is not None
    m.start()
    m.close()
    with pytest.raises(LeaseLost, match="closed"):
        held.check(remote=False)
    hb = records.decode(store.read(layout.agent(m.agent_id)), records.Heartbeat)
    assert hb.state == "exited" and hb.held == []
    assert held.valid_until() == -math.inf


def test_heartbeat_thread_renews(tmp_path: object) -> None:
    """The real thread with the real clock: the counter moves and held trials are listed."""
    store = open_store(str(tmp_path))
    # Beats every 50 ms, but a long lease: with 0.6 s the thread fences the held trial after a
    # 0.5 s pause of this process (pauses of a second were seen at load 10+), and held.check()
    # below would raise LeaseLost. What is tested does not depend on the lease.
    m = Membership(store, LeaseLimits(lease_seconds=30, heartbeat_seconds=0.05))
    m.start()
    try:
        c = Claimer(store, m, budget=3)
        held = c.claim_next(spec)
        assert held is not None
        first = records.decode(store.read(m.key), records.Heartbeat).counter
        deadline = time.monotonic() + 30
        hb = None
        while time.monotonic() < deadline:
            hb = records.decode(store.read(m.key), records.Heartbeat)
            if hb.counter >= first + 3 and hb.held == [(held.trial, 0)]:
                break
            time.sleep(0.02)
        assert hb is not None and hb.counter >= first + 3 and hb.held == [(held.trial, 0)]
        held.check()
        held.release("test", step=None)
        assert (held.trial, 0) not in m.held()
    finally:
        m.close()
    hb = records.decode(store.read(m.key), records.Heartbeat)
    assert hb.state == "exited" and (0, 0) in [tuple(x) for x in hb.released]


def test_first_heartbeat_must_be_written(tmp_path: object) -> None:
    store = open_store(str(tmp_path), read_only=True)
    m = Membership(store, LIMITS)
    with pytest.raises(StoreError, match="cannot write its first heartbeat"):
        m.start()
