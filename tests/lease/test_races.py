"""Deterministic races: the store's primitives are gated with barriers and events (as filelock's
tests gate ``os.link``), so that two agents interleave exactly at the point that matters. Real
files (a local folder), two agents as two threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from testkit import put_claim

from ablator import layout, records
from ablator.errors import LeaseLost
from ablator.lease import Claimer, Held, LeaseLimits, Membership
from ablator.store import open_store

from .helpers import FakeClock, Wrapped, spec

LIMITS = LeaseLimits(lease_seconds=30, heartbeat_seconds=5)


def _agent(store: Any, clock: FakeClock, budget: int = 1) -> tuple[Membership, Claimer]:
    m = Membership(store, LIMITS, clock=clock, host="h")
    assert m.beat()
    return m, Claimer(store, m, budget=budget, poll_s=0.0)


def _done(metrics: dict[str, float]) -> records.Outcome:
    return records.Outcome(status="completed", metrics=metrics)


def _both(fn_a: Callable[[], Any], fn_b: Callable[[], Any]) -> tuple[Any, Any]:
    out: list[Any] = [None, None]
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            out[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate((fn_a, fn_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return out[0], out[1]


def _gate(w: Wrapped, key: str, parties: int = 2) -> threading.Barrier:
    """Both creators of ``key`` arrive before either creates it."""
    barrier = threading.Barrier(parties, timeout=30)

    def hook(k: str, call: Callable[[], Any]) -> Any:
        if k == key:
            barrier.wait()
        return call()

    w.hooks["create"] = hook
    return barrier


def test_two_agents_race_for_a_new_index(tmp_path: Path) -> None:
    w = Wrapped(open_store(str(tmp_path)))
    _gate(w, layout.claim(0, 0))
    (m1, c1), (m2, c2) = _agent(w, FakeClock()), _agent(w, FakeClock())
    a, b = _both(lambda: c1.claim_next(spec), lambda: c2.claim_next(spec))
    winners = [h for h in (a, b) if h is not None]
    assert len(winners) == 1
    claim = records.decode(w.inner.read(layout.claim(0, 0)), records.Claim)
    assert claim.agent_id == winners[0].agent_id
    loser = m2 if winners[0].agent_id == m1.agent_id else m1
    assert loser.held() == []  # the loser does not list a trial it lost


def test_two_agents_race_for_a_takeover(tmp_path: Path) -> None:
    w = Wrapped(open_store(str(tmp_path)))
    put_claim(w.inner, 0, spec=spec(0), agent="x-1-a")
    w.inner.create(layout.release(0, 0), records.encode(records.Release(trial=0, epoch=0, agent_id="x-1-a")))
    _gate(w, layout.claim(0, 1))
    (_, c1), (_, c2) = _agent(w, FakeClock()), _agent(w, FakeClock())
    a, b = _both(lambda: c1.claim_next(spec), lambda: c2.claim_next(spec))
    winners = [h for h in (a, b) if h is not None]
    assert len(winners) == 1 and (winners[0].trial, winners[0].epoch) == (0, 1)
    assert winners[0].spec == spec(0)  # read back from claim.e0000
    assert not w.inner.exists(layout.claim(0, 2))


def _zombie_and_successor(tmp_path: Path) -> tuple[Wrapped, Held, Held]:
    """Agent 1 holds (0, 0) and, on its own clock, is still fine; agent 2's clock says agent 1
    has been silent for a lease, so agent 2 takes over (0, 1). Both believe they may write."""
    w = Wrapped(open_store(str(tmp_path)))
    _, c1 = _agent(w, FakeClock())
    zombie = c1.claim_next(spec)
    assert zombie is not None
    clock2 = FakeClock()
    _, c2 = _agent(w, clock2)
    assert c2.claim_next(spec) is None  # first sight of agent 1's heartbeat
    clock2.advance(30)
    successor = c2.claim_next(spec)
    assert successor is not None and (successor.trial, successor.epoch) == (0, 1)
    return w, zombie, successor


def test_zombie_and_successor_finish_together_exactly_one_result(tmp_path: Path) -> None:
    w, zombie, successor = _zombie_and_successor(tmp_path)
    _gate(w, layout.result(0))
    a, b = _both(lambda: zombie.finish(_done({"who": 0.0})), lambda: successor.finish(_done({"who": 1.0})))
    assert sorted([a, b]) == [False, True]
    res = records.decode(w.inner.read(layout.result(0)), records.Result)
    winner = zombie if a else successor
    assert res.epoch == winner.epoch and res.metrics == {"who": float(winner.epoch)}


def test_result_first_then_takeover_the_taker_gets_lease_lost(tmp_path: Path) -> None:
    """The holder's result lands between a taker's verdict and its claim: the taker wins the
    epoch (nothing else to win) but its first check stops it; the result stays the holder's."""
    w = Wrapped(open_store(str(tmp_path)))
    _, c1 = _agent(w, FakeClock())
    holder = c1.claim_next(spec)
    assert holder is not None
    clock2 = FakeClock()
    _, c2 = _agent(w, clock2)
    assert c2.claim_next(spec) is None
    clock2.advance(30)
    result_written = threading.Event()

    def hook(k: str, call: Callable[[], Any]) -> Any:
        if k == layout.claim(0, 1):
            assert result_written.wait(30)  # the verdict was made; the result lands now
        return call()

    w.hooks["create"] = hook

    def finish() -> bool:
        ok = holder.finish()
        result_written.set()
        return ok

    taken, finished = _both(lambda: c2.claim_next(spec), finish)
    assert finished is True
    assert taken is not None and taken.epoch == 1
    with pytest.raises(LeaseLost, match="a result already exists"):
        taken.check()
    assert records.decode(w.inner.read(layout.result(0)), records.Result).epoch == 0


def test_takeover_between_check_and_write_fences_the_next_check(tmp_path: Path) -> None:
    """The zombie passed check() just before the takeover: its one write lands under its own
    epoch (never a key of the successor), and its next check raises."""
    w, zombie, successor = _zombie_and_successor(tmp_path)
    key0 = layout.metrics(0, 0, 5)
    key1 = layout.metrics(0, 1, 5)
    assert w.inner.create(key1, b"successor")
    assert w.inner.create(key0, b"zombie")  # the write that had passed its check
    with pytest.raises(LeaseLost, match="taken over"):
        zombie.check()
    assert w.inner.read(key1) == b"successor"
    assert successor.finish() is True
