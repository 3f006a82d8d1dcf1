"""Trial state from records (the order of docs/protocol.md), the claimer's fill order, attempts, takeovers,
retries, extensions, stop, corrupt records, and the late joiner's O(1) first claim."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import put_claim

from ablator import layout, records
from ablator.lease import Claimer, LeaseLimits, Membership, read_trial
from ablator.records import CorruptRecordWarning
from ablator.store import memory as memory_backend
from ablator.store import open_store
from ablator.store.base import Store

from .helpers import FakeClock, Wrapped, spec

LIMITS = LeaseLimits(lease_seconds=30, heartbeat_seconds=5, max_attempts=2, max_takeovers=1)


@pytest.fixture
def store() -> Iterator[Store]:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    yield open_store(f"memory://{name}")
    memory_backend.clear(name)


def _agent(
    store: Store, clock: FakeClock, budget: int = 4, limits: LeaseLimits = LIMITS
) -> tuple[Membership, Claimer]:
    m = Membership(store, limits, clock=clock, host="h")
    assert m.beat()
    return m, Claimer(store, m, budget=budget, poll_s=0.0)


def _put(store: Store, key: str, rec: records.Record) -> None:
    assert store.create(key, records.encode(rec))


def _claim(store: Store, t: int, e: int, agent: str = "ghost-1-aaaa", with_spec: bool = True) -> None:
    put_claim(store, t, e, spec=spec(t) if with_spec else None, agent=agent)


def _state(store: Store, t: int, orphaned: bool = False, forgiven: int = -1) -> str:
    return read_trial(store, t, judge=lambda *a: orphaned, limits=LIMITS, forgiven=forgiven).status


def test_state_order(store: Store) -> None:
    assert _state(store, 0) == "pending"
    _claim(store, 0, 0)
    assert _state(store, 0) == "running"
    assert _state(store, 0, orphaned=True) == "orphaned"
    _put(store, layout.release(0, 0), records.Release(trial=0, epoch=0, agent_id="a"))
    assert _state(store, 0) == "released"
    _claim(store, 0, 1)
    assert _state(store, 0) == "running"  # the highest epoch decides
    _put(store, layout.failed(0, 1), records.Failure(trial=0, epoch=1, agent_id="a"))
    assert _state(store, 0) == "retryable"  # 1 failure < max_attempts 2
    _claim(store, 0, 2)
    _put(store, layout.failed(0, 2), records.Failure(trial=0, epoch=2, agent_id="a"))
    st = read_trial(store, 0, judge=lambda *a: False, limits=LIMITS)
    assert (st.status, st.failures, st.takeovers) == ("failed", 2, 0)
    assert _state(store, 0, forgiven=2) == "retryable"  # an operator's retry forgave them
    _put(store, layout.result(0), records.Result(trial=0, epoch=2, agent_id="a"))
    assert _state(store, 0) == "done"  # a result beats everything


def test_takeovers_are_counted_and_capped(store: Store) -> None:
    clock = FakeClock()
    _claim(store, 0, 0, agent="dead-1-aaaa")
    _claim(store, 0, 1, agent="dead-2-bbbb")  # one takeover already happened
    assert read_trial(store, 0, judge=lambda *a: True, limits=LIMITS).takeovers == 1
    _, c = _agent(store, clock, budget=1)
    assert c.claim_next(spec) is None  # first sight of the holders: timers start
    clock.advance(30)
    assert c.claim_next(spec) is None  # orphaned again, past max_takeovers=1: failed as lost
    fail = records.decode(store.read(layout.failed(0, 2)), records.Failure)
    assert fail.kind == "lost" and "max_takeovers" in fail.message
    assert _state(store, 0) == "failed"
    assert c.stats.lost_written == 1 and c.done()


def test_fill_order_released_then_retryable_then_new(store: Store) -> None:
    clock = FakeClock()
    _claim(store, 1, 0)
    _put(store, layout.failed(1, 0), records.Failure(trial=1, epoch=0, agent_id="ghost-1-aaaa"))
    _claim(store, 2, 0)
    _put(store, layout.release(2, 0), records.Release(trial=2, epoch=0, agent_id="ghost-1-aaaa"))
    _, c = _agent(store, clock, budget=4)
    got = []
    while (h := c.claim_next(spec)) is not None:
        got.append((h.trial, h.epoch, h.spec.index))
        h.finish()
    # The new-index walk comes first here because the agent knows nothing yet; the sweep then
    # finds the released trial and the retryable one, in that order.
    takeovers = [g for g in got if g[1] > 0]
    assert takeovers == [(2, 1, 2), (1, 1, 1)]
    assert sorted(g[0] for g in got) == [0, 1, 2, 3]
    assert c.done()


def test_released_trial_is_taken_at_once_via_heartbeat_hint(store: Store) -> None:
    clock = FakeClock()
    m1, c1 = _agent(store, clock, budget=3)
    _, c2 = _agent(store, clock, budget=3)
    a = c1.claim_next(spec)
    assert a is not None
    a.release("drain", step=7)
    assert m1.beat()  # the heartbeat carries the hint
    b = c2.claim_next(spec)
    assert b is not None and (b.trial, b.epoch) == (a.trial, 1)  # before any new index
    assert b.spec == a.spec


def test_corrupt_claim_is_never_a_free_index(store: Store) -> None:
    clock = FakeClock()
    assert store.create(layout.claim(0, 0), b"\x93garbage")
    _, c = _agent(store, clock, budget=1)
    with pytest.warns(CorruptRecordWarning, match="claim.e0000"):
        assert c.claim_next(spec) is None  # holder unknown: running for now, never free
        clock.advance(29)
        assert c.claim_next(spec) is None
        clock.advance(1)  # a lease since first sight
        held = c.claim_next(spec)
    assert held is not None and (held.trial, held.epoch) == (0, 1)
    # the spec could not be read from claim.e0000: the takeover claim records it
    claim = records.decode(store.read(layout.claim(0, 1)), records.Claim)
    assert claim.spec == spec(0) == held.spec


def test_corrupt_heartbeat_means_holder_unknown(store: Store) -> None:
    clock = FakeClock()
    _claim(store, 0, 0, agent="h-9-dead")
    store.replace(layout.agent("h-9-dead"), b"\x01\x02")
    _, c = _agent(store, clock, budget=1)
    with pytest.warns(CorruptRecordWarning, match="agents/h-9-dead"):
        assert c.claim_next(spec) is None
        clock.advance(30)
        held = c.claim_next(spec)
    assert held is not None and held.epoch == 1 and held.spec == spec(0)


def test_corrupt_result_needs_repair_and_is_never_absent(store: Store) -> None:
    clock = FakeClock()
    _claim(store, 0, 0)
    store.create(layout.result(0), b"\xc1")
    with pytest.warns(CorruptRecordWarning, match="result.msgpack"):
        st = read_trial(store, 0, judge=lambda *a: True, limits=LIMITS, validate_result=True)
    assert st.status == "needs_repair" and st.problems == (layout.result(0),)
    _, c = _agent(store, clock, budget=1)
    clock.advance(60)
    assert c.claim_next(spec) is None and c.claim(0, spec) is None
    assert store.list(layout.trial_dir(0))[0].key == layout.claim(0, 0)
    assert not store.exists(layout.claim(0, 1))


def test_corrupt_hint_and_extension_are_reported_not_fatal(store: Store) -> None:
    clock = FakeClock()
    store.replace(layout.frontier(0), b"nope")
    store.create(layout.extension(0), b"nope")
    _, c = _agent(store, clock, budget=2)
    with pytest.warns(CorruptRecordWarning):
        got = []
        while (h := c.claim_next(spec)) is not None:
            got.append(h.trial)
            h.finish()
    assert sorted(got) == [0, 1]


def test_extension_and_stop(store: Store) -> None:
    clock = FakeClock()
    m, c = _agent(store, clock, budget=2)
    for _ in range(2):
        h = c.claim_next(spec)
        assert h is not None
        h.finish()
    assert c.claim_next(spec) is None and c.done()
    _put(store, layout.extension(0), records.Extension(k=0, trials=2))
    assert not c.done()  # extensions are re-read before saying done
    h = c.claim_next(spec)
    assert h is not None and h.trial in (2, 3)
    _put(store, layout.STOP, records.Stop(reason="enough"))
    assert m.beat()  # the heartbeat reads the stop record
    assert c.stop_requested() and c.claim_next(spec) is None
    assert not c.done()  # trial 3 (or 2) never ran


def test_retry_record_reopens_failed_trials(store: Store) -> None:
    clock = FakeClock()
    _, c = _agent(
        store, clock, budget=1, limits=LeaseLimits(lease_seconds=30, heartbeat_seconds=5, max_attempts=1)
    )
    h = c.claim_next(spec)
    assert h is not None
    h.fail("exception", "boom", "Traceback ...", step=3)
    assert c.claim_next(spec) is None and c.done()  # failed for good (max_attempts=1)
    _put(store, layout.retry(0), records.Retry(k=0, epochs={0: 0}))
    h = c.claim_next(spec)
    assert h is not None and (h.trial, h.epoch) == (0, 1)


def test_lost_reply_on_claim_still_wins(tmp_path: Path) -> None:
    """The link succeeded but its reply was lost (EEXIST on retransmission): the claimer still
    knows the claim is its own (the store compares the nonce-carrying body)."""
    from ablator.store.posix import PosixStore

    class LostReply(PosixStore):
        def _link(self, src: str, dst: str) -> None:
            super()._link(src, dst)
            raise FileExistsError(dst)

    store = LostReply(str(tmp_path))
    m = Membership(store, LIMITS, clock=FakeClock(), host="h")
    m.beat()
    held = Claimer(store, m, budget=1).claim_next(spec)
    assert held is not None and (held.trial, held.epoch) == (0, 0)
    assert held.finish() is True


def _populate(root: Path, n: int) -> None:
    store = open_store(str(root))
    m = Membership(store, LeaseLimits(lease_seconds=120, heartbeat_seconds=10), host="early")
    m.beat()
    c = Claimer(store, m, budget=10 * n)
    for _ in range(n):
        h = c.claim_next(spec)
        assert h is not None
        h.finish()


@pytest.mark.parametrize("existing", [100, 1000])
def test_late_joiner_claims_in_constant_operations(tmp_path: Path, existing: int) -> None:
    """A new agent's first claim costs a bounded number of store operations whatever the number
    of existing trials: frontier hint, not a listing of trials/."""
    _populate(tmp_path, existing)
    w = Wrapped(open_store(str(tmp_path)))
    m = Membership(w, LeaseLimits(lease_seconds=120, heartbeat_seconds=10), host="late")  # type: ignore[arg-type]
    m.start()
    try:
        held = Claimer(w, m, budget=10 * existing).claim_next(spec)  # type: ignore[arg-type]
        ops = w.ops(threading.get_ident())
    finally:
        m.close()
    assert held is not None and held.epoch == 0 and held.trial >= existing - 64
    # 1 heartbeat + 1 stop check + 1 agents list + 2 heartbeats + 1 extensions list + 4 hints
    # + the claim, and at most a few lost races while jumping past a stale hint
    assert ops <= 20, w.log
    assert not any(name in ("list", "list_dirs") and key.startswith(layout.TRIALS_DIR) for name, key in w.log)
