"""Prompt takeover whoever watches, with fake clocks: a claim timed by its own first sight, a
fresh observer that ages heartbeats and claims on the store's clock, and a holder of this very
machine whose process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from ablator import layout, records
from ablator.lease import Claimer, LeaseLimits, Membership, identity
from ablator.lease.claimer import BODY_READS_PER_SCAN, HINT_READS_PER_SCAN
from ablator.store import Store, open_store
from ablator.store import clock as clock_mod
from ablator.store.posix import PosixStore
from tests.lease.helpers import FakeClock, Wrapped, spec

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


# --- another machine's holder: judged on the store's clock, with the store's own slack ----------
# The holders below are Memberships of this very process: their pid is alive, so the same-host
# shortcut (a dead pid) can never fire, and what decides is the store's clock, as it would be for
# a holder on another machine.


class WholeSeconds(PosixStore):
    """A local store that says its stamps are whole seconds (as S3's are)."""

    def mtime_resolution(self) -> float:
        return 1.0


def _holder(store: Store, clock: FakeClock, agent_id: str, trial: int) -> Membership:
    m = Membership(store, LIMITS, clock=clock, host="elsewhere", agent_id=agent_id, versions={})
    assert Claimer(store, m, budget=3).claim(trial, spec) is not None
    m.beat()  # its last heartbeat, listing the claim
    return m


def test_the_slack_of_an_age_is_the_stores_timestamp_resolution(tmp_path: Path) -> None:
    assert clock_mod.slack(open_store(str(tmp_path / "a"))) == clock_mod.FINE_SLACK_S
    assert clock_mod.slack(open_store("memory://slack")) == clock_mod.FINE_SLACK_S
    assert clock_mod.slack(WholeSeconds(tmp_path / "b")) == 1.0
    # a stamp in whole seconds on a store said to be finer: it is not
    assert clock_mod.slack(open_store(str(tmp_path / "c")), probe_mtime=1_700_000_000.0) == 1.0


@pytest.mark.parametrize("whole_seconds", [False, True])
def test_a_fresh_observer_takes_a_heartbeat_a_lease_old_by_the_stores_clock(
    tmp_path: Path, whole_seconds: bool
) -> None:
    """Half a second past a lease on the store's clock is dead at once on a local disk (its
    stamps are nanoseconds: no second of slack), and not yet on a store of whole-second stamps;
    a second and a half past is dead on both."""
    root = tmp_path / "s"
    store: Store = WholeSeconds(root) if whole_seconds else open_store(str(root))
    clock = FakeClock()
    _holder(store, clock, "dead-1-x", 0)
    _age(root, layout.agent("dead-1-x"), LIMITS.lease_seconds + 0.5)
    _age(root, layout.claim(0, 0), 3 * LIMITS.lease_seconds)
    fresh = Claimer(store, Membership(store, LIMITS, clock=clock, host="new", versions={}), budget=1)
    got = fresh.claim_next(spec)
    if not whole_seconds:
        assert got is not None and (got.trial, got.epoch) == (0, 1)
        return
    assert got is None and fresh.state(0).status == "running"
    # a second later (on every clock): dead by the store's clock, and seen at the next scan
    time.sleep(1.0)
    clock.advance(LIMITS.heartbeat_seconds)
    got = fresh.claim_next(spec)
    assert got is not None and (got.trial, got.epoch) == (0, 1)


def test_a_fresh_observer_leaves_a_recent_heartbeat_alone_until_a_lease_after_it(tmp_path: Path) -> None:
    """A heartbeat 10 s old on the store's clock: its holder is alive for the lease's other 20 s
    of the observer's own watching, then dead at the next scan (within lease + a heartbeat of
    the heartbeat, not a lease after the observer's start)."""
    root = tmp_path / "s"
    store = open_store(str(root))
    clock = FakeClock()
    _holder(store, clock, "quiet-1-x", 0)
    _age(root, layout.agent("quiet-1-x"), 10.0)
    _age(root, layout.claim(0, 0), 10.0)
    fresh = Claimer(store, Membership(store, LIMITS, clock=clock, host="new", versions={}), budget=1)
    assert fresh.claim_next(spec) is None
    waited = 0.0
    got = None
    while got is None:
        assert waited < LIMITS.lease_seconds - 10.0 + LIMITS.heartbeat_seconds, "not taken in time"
        clock.advance(LIMITS.heartbeat_seconds)
        waited += LIMITS.heartbeat_seconds
        got = fresh.claim_next(spec)
        if waited < LIMITS.lease_seconds - 10.0 - 0.1:
            assert got is None, f"taken {waited} s after first sight: less than a lease after its heartbeat"
    assert (got.trial, got.epoch) == (0, 1)


def test_a_busy_observer_takes_the_orphan_first_when_a_slot_frees(tmp_path: Path) -> None:
    """An observer whose slot is busy keeps watching; the holder's renewals are timed by their
    stamps; when its slot frees after the holder died, the orphan comes before a new index."""
    root = tmp_path / "s"
    store = open_store(str(root))
    clock = FakeClock()
    holder = _holder(store, clock, "busy-holder-1-x", 0)
    me = Membership(store, LIMITS, clock=clock, host="me", versions={})
    me.beat()
    observer = Claimer(store, me, budget=3)
    mine = observer.claim(1, spec)
    assert mine is not None
    for _ in range(3):  # the holder renews while the observer is busy
        observer.watch()
        clock.advance(LIMITS.heartbeat_seconds)
        holder.beat()
        me.beat()
    # the holder's last heartbeat was just now; it dies
    t_last = clock.t
    while clock.t - t_last < LIMITS.lease_seconds + LIMITS.heartbeat_seconds:
        observer.watch()
        if clock.t - t_last < LIMITS.lease_seconds - 0.1:
            assert observer.state(0).status == "running"
        clock.advance(LIMITS.heartbeat_seconds / 2)
        me.beat()
    observer.watch()
    assert mine.finish()  # the slot frees
    got = observer.claim_next(spec)
    assert got is not None and (got.trial, got.epoch) == (0, 1), "the orphan before new index 2"


def test_run_takes_over_when_started_late_or_while_waiting(tmp_path: Path) -> None:
    """``ablator run --trial N`` asks ``Claimer.claim`` (the same liveness rule): started after
    the holder's heartbeat is a lease old on the store's clock it takes the trial at its first
    look; waiting on a live holder it takes it within lease + a heartbeat of its last renewal."""
    root = tmp_path / "s"
    store = open_store(str(root))
    clock = FakeClock()
    _holder(store, clock, "gone-1-x", 0)
    _age(root, layout.agent("gone-1-x"), LIMITS.lease_seconds + 0.5)
    _age(root, layout.claim(0, 0), 3 * LIMITS.lease_seconds)
    late = Claimer(store, Membership(store, LIMITS, clock=clock, host="run", versions={}), budget=3)
    got = late.claim(0, spec)
    assert got is not None and (got.trial, got.epoch) == (0, 1)

    holder = _holder(store, clock, "live-2-x", 1)
    waiting = Claimer(store, Membership(store, LIMITS, clock=clock, host="run", versions={}), budget=3)
    step = LIMITS.heartbeat_seconds / 2  # run looks every half heartbeat
    for _ in range(8):  # alive: refused while it renews
        assert waiting.claim(1, spec) is None
        clock.advance(step)
        if clock.t % LIMITS.heartbeat_seconds == 0:
            holder.beat()
    holder.beat()
    t_last = clock.t
    taken = None
    while taken is None:
        taken = waiting.claim(1, spec)
        if taken is None:
            clock.advance(step)
        assert clock.t - t_last <= LIMITS.lease_seconds + LIMITS.heartbeat_seconds, "not taken in time"
    assert clock.t - t_last >= LIMITS.lease_seconds - 0.1, "taken before a lease after its last heartbeat"
    assert (taken.trial, taken.epoch) == (1, 1)


# --- release hints reach every observer within one scan, however many agents run ---------------


def test_a_release_reaches_an_observer_within_one_scan_among_many_live_agents(store_url: str) -> None:
    """With twice as many live agents as a scan reads heartbeats of (and one), a trial released by
    the agent whose heartbeat the observer read last is taken at the observer's next scan --
    before any new index -- because the releaser's hints key changed in the listing (its mtime
    on a disk, its ETag on S3)."""
    store = open_store(store_url)
    clock = FakeClock()
    agents = []
    for k in range(2 * BODY_READS_PER_SCAN + 1):
        m = Membership(store, LIMITS, clock=clock, host=f"h{k}", agent_id=f"h{k}-1-x", versions={})
        held = Claimer(store, m, budget=1000).claim(k, spec)
        assert held is not None
        m.beat()
        agents.append((m, held))
    me = Membership(store, LIMITS, clock=clock, host="me", versions={})
    me.beat()
    observer = Claimer(store, me, budget=1000)
    for _ in range(2):  # the observer has read every heartbeat; they all renew every interval
        observer.watch()
        clock.advance(LIMITS.heartbeat_seconds)
        for m, _ in agents:
            m.beat()
        me.beat()
    observer.watch()
    # the releaser: one whose heartbeat was read last (a rotation would not read it again soon)
    m, held = max(agents, key=lambda a: observer.liveness.agents[a[0].agent_id].body_read_at)
    held.release("drained")
    clock.advance(LIMITS.heartbeat_seconds)
    for other, _ in agents:
        other.beat()  # the releaser's beat writes its hints key too
    me.beat()
    assert len(store.list(layout.AGENT_RELEASES_DIR)) == 1  # one agent released something
    got = observer.claim_next(spec)
    assert got is not None and (got.trial, got.epoch) == (held.trial, 1), "the released trial, at once"


def test_a_release_makes_the_heartbeat_thread_write_the_hints_at_once(tmp_path: Path) -> None:
    """The agent's heartbeat thread beats right after a release (its fake clock never reaches the
    next interval here): the hints key names the released pair."""
    store = open_store(str(tmp_path / "s"))
    clock = FakeClock()
    m = Membership(store, LIMITS, clock=clock, host="h", versions={})
    m.start()
    try:
        held = Claimer(store, m, budget=2).claim(0, spec)
        assert held is not None
        held.release("drained")
        key = layout.agent_releases(m.agent_id)
        for _ in range(1000):  # the thread writes it without the clock moving (10 s at most)
            if store.exists(key):
                break
            time.sleep(0.01)
        rec = records.decode(store.read(key), records.ReleaseHints)
        assert [tuple(p) for p in rec.released] == [(0, 0)] and rec.agent_id == m.agent_id
        hb = records.decode(store.read(layout.agent(m.agent_id)), records.Heartbeat)
        assert (0, 0) in [tuple(p) for p in hb.released] and hb.held == []
    finally:
        m.close()


@pytest.mark.procs
def test_a_forced_boot_id_makes_an_agent_look_like_another_machines(tmp_path: Path) -> None:
    """``$ABLATOR_BOOT_ID`` (tests and benchmarks): the process reports that boot id, so an
    observer here cannot judge it by its pid -- its heartbeat decides, on the store's clock."""
    code = "from ablator.lease import identity; print(identity.boot_id())"
    env = dict(os.environ, **{identity.BOOT_ID_ENV: "another-machine"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "another-machine" != identity.boot_id()
    # a gone process of "another machine" is not known dead here
    assert not identity.dead_here("another-machine", identity.pid_namespace(), 2**22 + 1, 12345)
    assert identity.dead_here(identity.boot_id(), identity.pid_namespace(), 2**22 + 1, 12345)


def test_a_storm_of_releases_costs_an_observer_a_bounded_number_of_reads_per_scan(tmp_path: Path) -> None:
    """More agents release at once than a scan reads hints of: the observer reads at most
    HINT_READS_PER_SCAN hints keys per scan (the rest at the next one), and a released pair that
    was taken over already costs it one look, not a read of the trial."""
    wrapped = Wrapped(open_store(str(tmp_path / "s")))  # logs every operation
    store = cast(Store, wrapped)
    clock = FakeClock()
    n = HINT_READS_PER_SCAN + 4
    agents = []
    for k in range(n):
        m = Membership(store, LIMITS, clock=clock, host=f"h{k}", agent_id=f"h{k}-1-x", versions={})
        c = Claimer(store, m, budget=1000)
        held = c.claim(k, spec)
        assert held is not None
        m.beat()
        agents.append((m, c, held))
    me = Membership(store, LIMITS, clock=clock, host="me", versions={})
    me.beat()
    observer = Claimer(store, me, budget=1000)
    observer.watch()  # first sight of everyone
    for m, _, held in agents:
        held.release("preempted")
        m.beat()  # writes its hints key
    # one released trial is taken over by its own releaser's claimer before the observer looks
    taken = agents[0][1].claim(0, spec)
    assert taken is not None and taken.epoch == 1

    def hint_reads() -> list[str]:
        return [
            k for op, k in wrapped.log if op in ("read", "get") and k.startswith(layout.AGENT_RELEASES_DIR)
        ]

    wrapped.log.clear()
    clock.advance(LIMITS.heartbeat_seconds)
    observer.watch()
    first = hint_reads()
    assert len(first) == HINT_READS_PER_SCAN
    looks = [k for op, k in wrapped.log if op == "exists"]
    wrapped.log.clear()
    clock.advance(LIMITS.heartbeat_seconds)
    observer.watch()
    second = hint_reads()
    assert len(second) == n - HINT_READS_PER_SCAN and not set(first) & set(second)
    looks += [k for op, k in wrapped.log if op == "exists"]
    # each named pair is looked at once: is the next epoch claimed already?
    assert all(looks.count(layout.claim(k, 1)) == 1 for k in range(n))
    got = [observer.claim_next(spec) for _ in range(n - 1)]
    assert sorted((h.trial, h.epoch) for h in got if h is not None) == [(k, 1) for k in range(1, n)]
