"""Trial indexes of a million and more, and ``gc`` racing ``retry --failed``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, records, status
from ablator.experiment import experiment_from_dict
from ablator.lease import Claimer, LeaseLimits, Membership, group_by_trial
from ablator.ops import gc, launch, retry_failed
from ablator.store import Entry, open_store
from ablator.store.counting import CountingStore
from ablator.store.posix import PosixStore
from tests.agent.conftest import experiment
from tests.lease.helpers import FakeClock, spec

BIG = 1_000_000
LIMITS = LeaseLimits(max_attempts=1, lease_seconds=30.0, heartbeat_seconds=5.0)


def test_layout_round_trips_indexes_past_six_digits() -> None:
    for i in (0, 42, 999_999, BIG, 1_234_567, 10**9 + 7):
        assert layout.parse_trial(layout.claim(i, 0)) == i
        assert layout.parse_trial_dir(layout.trial_dir(i)[len(layout.TRIALS_DIR) : -1]) == i
    # only what trial_dir builds is a trial: no aliasing of trial 1 by a padded name
    assert layout.parse_trial("trials/0000001/claim.e0000.msgpack") is None
    assert layout.parse_trial("trials/99999/claim.e0000.msgpack") is None
    assert layout.trial_indexes(["000001", "1000000", "0000001", "abc", "99999"]) == {1, BIG}
    grouped = group_by_trial(
        [Entry(layout.claim(BIG + 3, 0), 1), Entry(layout.result(BIG + 3), 1), Entry(layout.claim(7, 0), 1)]
    )
    assert sorted(grouped) == [7, BIG + 3] and len(grouped[BIG + 3]) == 2


def _big_store(tmp_path: Path, trials: int) -> tuple[str, Any]:
    url = str(tmp_path / "s")
    exp = experiment(
        design={"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"max_attempts": 1},
    )
    launch(experiment_from_dict(exp), url)
    return url, open_store(url)


def test_status_and_retry_see_trials_past_a_million(tmp_path: Path) -> None:
    url, store = _big_store(tmp_path, BIG + 2)
    clock = FakeClock()
    m = Membership(store, LIMITS, clock=clock, host="h", versions={})
    c = Claimer(store, m, budget=BIG + 2)
    held = c.claim(BIG + 1, spec)
    assert held is not None and (held.trial, held.epoch) == (BIG + 1, 0)
    held.fail("exception", "boom")
    done = c.claim(BIG, spec)
    assert done is not None and done.finish(records.Outcome(status="completed", metrics={"score": 1.0}))
    report = status.collect(store, url=url)
    assert report.counts.get("done") == 1 and report.counts.get("failed") == 1, report.counts
    rec = retry_failed(store)
    assert rec is not None and rec.epochs == {BIG + 1: 0}
    # the claimer sees the reopened trial by its index too
    again = c.claim(BIG + 1, spec)
    assert again is not None and (again.trial, again.epoch) == (BIG + 1, 1)


# --- gc racing retry --failed ----------------------------------------------------------------------


class RetryDuringGc(PosixStore):
    """When gc lists trial 0's checkpoints, an operator's retry and an agent's new attempt
    happen first: the retry record, claim e1, and the new attempt's first checkpoint."""

    def __init__(self, root: str, url: str) -> None:
        super().__init__(root)
        self.url_ = url
        self.fired = False

    def list(self, prefix: str) -> list[Entry]:
        if prefix == layout.ckpt_dir(0) and not self.fired:
            self.fired = True
            assert retry_failed(self.url_) is not None
            clock = FakeClock()
            m = Membership(self, LIMITS, clock=clock, host="h2", versions={})
            held = Claimer(self, m, budget=1).claim(0, spec)
            assert held is not None and held.epoch == 1
            super().create(layout.checkpoint(0, 1, 5), b"new attempt's checkpoint", durable=True)
        return super().list(prefix)


def test_gc_never_deletes_a_retry_that_started_meanwhile(tmp_path: Path) -> None:
    url, store = _big_store(tmp_path, 1)
    m = Membership(store, LIMITS, clock=FakeClock(), host="h", versions={})
    held = Claimer(store, m, budget=1).claim(0, spec)
    assert held is not None
    held.attempt()
    for step in (1, 2, 3):
        store.create(layout.checkpoint(0, 0, step), b"ckpt %d" % step, durable=True)
    held.fail("exception", "boom")  # max_attempts 1: failed for good
    racing = RetryDuringGc(str(tmp_path / "s"), url)
    report = gc(racing)
    assert racing.fired
    left = sorted(e.key for e in store.list(layout.ckpt_dir(0)))
    # The new attempt's checkpoint and its resume point survive; nothing of the reopened trial
    # was deleted (it was decided again at the moment of deleting).
    assert layout.checkpoint(0, 1, 5) in left and layout.checkpoint(0, 0, 3) in left
    assert report.deleted == []
    assert records.decode(store.read(layout.claim(0, 1)), records.Claim, "c").epoch == 1


def test_gc_without_a_race_still_deletes_what_nobody_needs(tmp_path: Path) -> None:
    url, store = _big_store(tmp_path, 1)
    m = Membership(store, LIMITS, clock=FakeClock(), host="h", versions={})
    held = Claimer(store, m, budget=1).claim(0, spec)
    assert held is not None
    held.attempt()
    for step in (1, 2, 3):
        store.create(layout.checkpoint(0, 0, step), b"ckpt %d" % step, durable=True)
    held.fail("exception", "boom")
    report = gc(url)
    assert sorted(report.deleted) == [layout.checkpoint(0, 0, 1), layout.checkpoint(0, 0, 2)]
    assert [e.key for e in store.list(layout.ckpt_dir(0))] == [layout.checkpoint(0, 0, 3)]


@pytest.mark.parametrize("n", [3])
def test_retry_by_trial_number_past_a_million(tmp_path: Path, n: int) -> None:
    url, store = _big_store(tmp_path, BIG + n)
    m = Membership(store, LIMITS, clock=FakeClock(), host="h", versions={})
    c = Claimer(store, m, budget=BIG + n)
    held = c.claim(BIG + n - 1, spec)
    assert held is not None
    held.fail("exception", "boom")
    rec = retry_failed(url, [BIG + n - 1])
    assert rec is not None and rec.epochs == {BIG + n - 1: 0}


# --- heartbeats: scan cost follows live agents ------------------------------------------------------


def test_dead_agents_heartbeats_are_not_read_again(tmp_path: Path) -> None:
    inner = open_store(str(tmp_path / "s"))
    store = CountingStore(inner)
    clock = FakeClock()
    limits = LeaseLimits(lease_seconds=3.0, heartbeat_seconds=1.0)
    dead = [
        Membership(inner, limits, clock=clock, host="d", agent_id=f"d-{k}-x", versions={}) for k in range(40)
    ]
    for m in dead:
        m.beat()  # one heartbeat, then silence
    live = [
        Membership(inner, limits, clock=clock, host="l", agent_id=f"l-{k}-x", versions={}) for k in range(2)
    ]
    me = Membership(store, limits, clock=clock, host="me", versions={})
    claimer = Claimer(store, me, budget=0)
    reads_per_scan = []
    for _ in range(12):
        for m in live:
            m.beat()
        before = store.total("read", "agents")
        claimer.done()  # scans the heartbeats (at most once per heartbeat interval)
        reads_per_scan.append(store.total("read", "agents") - before)
        clock.advance(limits.heartbeat_seconds)
    assert reads_per_scan[0] == 42  # the first scan reads everyone once
    # Until a silent agent is judged dead (a lease), its body is read again every half lease;
    # from then on only the live ones are read, however long the experiment runs.
    after_a_lease = int(limits.lease_seconds / limits.heartbeat_seconds) + 1
    assert max(reads_per_scan[after_a_lease:]) <= 2, reads_per_scan
    assert sum(reads_per_scan[1:after_a_lease]) <= 2 * after_a_lease + 40, reads_per_scan
    # and liveness still works: the silent ones are dead, the renewing ones alive
    assert all(claimer.liveness.is_dead(m.agent_id) for m in dead)
    assert not any(claimer.liveness.is_dead(m.agent_id) for m in live)


def test_heartbeats_on_a_file_system_with_whole_second_timestamps_are_read(tmp_path: Path) -> None:
    """Where a listing entry need not change with every write (whole-second mtimes, no ETag),
    the listing cannot stand for a read: the body is read at every scan, and a renewing agent
    whose file keeps its timestamp is never judged dead."""
    inner = open_store(str(tmp_path / "s"))
    store = CountingStore(inner)
    clock = FakeClock()
    limits = LeaseLimits(lease_seconds=4.0, heartbeat_seconds=1.0)
    other = Membership(inner, limits, clock=clock, host="o", agent_id="o-1-x", versions={})
    path = Path(tmp_path / "s", *layout.agent("o-1-x").split("/"))
    other.beat()
    os.utime(path, (1_700_000_000, 1_700_000_000))
    me = Membership(store, limits, clock=clock, host="me", versions={})
    claimer = Claimer(store, me, budget=0)
    claimer.done()
    for _ in range(10):
        clock.advance(limits.heartbeat_seconds)
        other.beat()  # renewed ... but the file keeps its whole-second mtime
        os.utime(path, (1_700_000_000, 1_700_000_000))
        before = store.total("read", "agents")
        claimer.done()
        assert store.total("read", "agents") == before + 1
        assert not claimer.liveness.is_dead("o-1-x")


def test_scan_reads_stay_bounded_with_many_live_agents_and_a_dead_holder_is_still_taken_promptly(
    tmp_path: Path,
) -> None:
    from ablator.lease.claimer import BODY_READS_PER_SCAN

    inner = open_store(str(tmp_path / "s"))
    store = CountingStore(inner)
    clock = FakeClock()
    limits = LeaseLimits(lease_seconds=6.0, heartbeat_seconds=1.0)
    crowd = [
        Membership(inner, limits, clock=clock, host="c", agent_id=f"c-{k}-x", versions={}) for k in range(30)
    ]
    holder = Membership(inner, limits, clock=clock, host="h", agent_id="h-1-x", versions={})
    holder.beat()
    held = Claimer(inner, holder, budget=1).claim(0, spec)
    assert held is not None
    me = Membership(store, limits, clock=clock, host="me", versions={})
    claimer = Claimer(store, me, budget=1)
    reads, taken_at, died_at = [], None, None
    for step in range(30):
        for m in crowd:
            m.beat()
        if step < 5:
            holder.beat()  # alive for 5 intervals, then SIGKILLed
            died_at = clock()
        before = store.total("read", "agents")
        got = claimer.claim_next(spec)
        reads.append(store.total("read", "agents") - before)
        if got is not None:
            assert (got.trial, got.epoch) == (0, 1)
            taken_at = clock()
            break
        clock.advance(limits.heartbeat_seconds)
    assert reads[0] == 31  # first sight of everyone
    # Afterwards: a bounded number of bodies per scan (plus the holder's last word, and reads of
    # the holder when its claim is judged), however many agents renew.
    assert max(reads[1:]) <= BODY_READS_PER_SCAN + 2, reads
    assert taken_at is not None and died_at is not None
    assert taken_at - died_at <= limits.lease_seconds + 2 * limits.heartbeat_seconds
    assert not any(claimer.liveness.is_dead(m.agent_id) for m in crowd)
