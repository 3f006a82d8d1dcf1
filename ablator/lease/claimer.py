"""The claimer: which trial this agent runs next, and :class:`Held`, a claimed (trial, epoch).

Fill order (docs/protocol.md "Claiming"): released or orphaned trials first, then retryable
failed ones, then new indexes from the frontier walk (:mod:`ablator.lease.frontier`, O(1) store
operations per claim), then one gap sweep below the budget.
"""

from __future__ import annotations

import bisect
import math
import random
import secrets
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ablator import layout, lineage, records
from ablator.errors import ConfigError, LeaseLost, StoreError
from ablator.lease import identity
from ablator.lease.fence import superseded
from ablator.lease.frontier import DEFAULT_BLOCK, Frontier
from ablator.lease.limits import LeaseLimits
from ablator.lease.liveness import Liveness
from ablator.lease.membership import Membership
from ablator.lease.state import (
    TAKEABLE,
    TERMINAL,
    TrialState,
    group_by_trial,
    read_budget,
    read_forgiven,
    read_trial,
)
from ablator.store.base import Entry, Store
from ablator.store.clock import StoreClock

#: Above this many trials of unknown state a sweep lists ``trials/`` once instead of per trial.
BULK_LIST_THRESHOLD = 32
#: Live agents' heartbeat bodies a liveness scan reads (the least recently read first), besides
#: first sights and dead agents' last words: their held lists (release hints have keys of their
#: own). Liveness itself comes from the listing, so a scan's cost does not grow with the number
#: of agents.
BODY_READS_PER_SCAN = 8
#: Release hints keys a scan reads at most (of those whose listing entry changed, a random
#: choice; the rest at the next scans): within one scan for up to this many releasing agents per
#: heartbeat interval, and a bounded cost per scan however many release at once.
HINT_READS_PER_SCAN = 8


def _fine(e: Entry) -> bool:
    """Whether a listing entry changes with every write of its key: an ETag, or a stamp finer
    than a second (two writes within one whole second could look alike)."""
    return e.etag is not None or (e.mtime is not None and e.mtime != int(e.mtime))


# --- a held trial ------------------------------------------------------------------------------


class Held:
    """A claimed (trial, epoch). Every write goes under its epoch, except the result, which is
    create-if-absent: whatever happens, at most one result exists.

    ``check()`` is the fence (a :class:`ablator.train.Fence`): call it before writing (at flush
    and checkpoint points). It raises :class:`~ablator.errors.LeaseLost` when this agent fenced
    itself (no renewal in time) or the holder was superseded
    (:func:`~ablator.lease.fence.superseded`). ``check(remote=False)`` only looks at the local
    flag (no store operation).
    """

    def __init__(self, claimer: Claimer, trial: int, epoch: int, spec: records.TrialSpec) -> None:
        self._claimer = claimer
        self._membership = claimer.membership
        self._store = claimer.store
        self.trial = trial
        self.epoch = epoch
        self.spec = spec
        self.agent_id = self._membership.agent_id
        self._closed: str | None = None
        self._resumed_from: tuple[int, int] | None = None
        self._stop_requested = False

    def __repr__(self) -> str:
        return f"Held(trial={self.trial}, epoch={self.epoch}, agent={self.agent_id!r})"

    @property
    def closed(self) -> str | None:
        """None while held; else how it ended ("finished", "failed", "released", "lost: ...")."""
        return self._closed

    def valid_until(self) -> float:
        """``time.monotonic()`` deadline of the local fence (for worker processes on this host)."""
        if self._closed is not None:
            return -math.inf
        return self._membership.valid_until(self.trial, self.epoch)

    def _lose(self, reason: str) -> LeaseLost:
        self._membership.mark_lost(self.trial, self.epoch, reason)
        self._close(f"lost: {reason}", released=False)
        return LeaseLost(f"trial {self.trial} epoch {self.epoch}: {reason}")

    def lose(self, reason: str) -> None:
        """Let go of a trial this attempt lost, as whoever writes for it found out (a worker's
        fence saw a takeover or a result, or its deadline passed): nothing more is written for
        it, the heartbeat stops listing it, and the claimer looks at the trial again. A no-op
        when the claim is already closed."""
        if self._closed is None:
            self._lose(reason)

    def check(self, *, remote: bool = True) -> None:
        """Raise LeaseLost unless this holder may still write for its trial."""
        if self._closed is not None:
            raise LeaseLost(f"trial {self.trial} epoch {self.epoch}: no longer held ({self._closed})")
        reason = self._membership.lost_reason(self.trial, self.epoch)
        if reason is not None:
            raise self._lose(reason)
        if remote:
            why = superseded(self._store, self.trial, self.epoch)
            if why is not None:
                raise self._lose(why)

    @property
    def should_stop(self) -> bool:
        """Whether a trainer writing under this claim should checkpoint and return: a stop was
        requested here (:meth:`request_stop`) or by the operator (``ablator stop``)."""
        return self._stop_requested or self._membership.stop_requested

    def request_stop(self) -> None:
        """Ask the trainer to checkpoint at its next chance and return (Ctrl-C)."""
        self._stop_requested = True

    def attempt(
        self, resumed_from: tuple[int, int] | None = None, environment: records.Environment | None = None
    ) -> None:
        """Write ``attempt.e<epoch>`` (once, before training). ``execute_trial`` writes it itself;
        this is for callers that run something else (benchmarks, simple loops)."""
        self.check(remote=False)
        rec = records.Attempt(
            trial=self.trial,
            epoch=self.epoch,
            agent_id=self.agent_id,
            resumed_from=resumed_from,
            environment=environment if environment is not None else records.Environment(),
        )
        if not self._store.create(layout.attempt(self.trial, self.epoch), records.encode(rec), durable=True):
            raise LeaseLost(
                f"trial {self.trial} epoch {self.epoch}: {layout.attempt(self.trial, self.epoch)!r} already "
                "exists (an epoch starts once)"
            )
        self._resumed_from = resumed_from

    def fail(
        self,
        kind: records.FailureKind = "exception",
        message: str = "",
        traceback: str = "",
        step: int | None = None,
    ) -> None:
        """Write ``failed.e<epoch>`` (counts against ``max_attempts``) and let go. Raises
        LeaseLost instead when the trial is no longer ours (nothing is written then)."""
        self.check()
        rec = records.Failure(
            trial=self.trial,
            epoch=self.epoch,
            agent_id=self.agent_id,
            kind=kind,
            message=message,
            traceback=traceback,
            step=step,
        )
        # Durable: a torn failure loses its kind (a "lost" poison pill would become retryable).
        self._store.create(layout.failed(self.trial, self.epoch), records.encode(rec), durable=True)
        self._close("failed", released=True)

    def release(self, reason: str = "", step: int | None = None) -> None:
        """Write ``release.e<epoch>``: the trial is takeable at once (drain, stop). ``step``: the
        last checkpointed step. Raises LeaseLost when no longer ours."""
        self.check()
        rec = records.Release(
            trial=self.trial, epoch=self.epoch, agent_id=self.agent_id, reason=reason, step=step
        )
        self._store.create(layout.release(self.trial, self.epoch), records.encode(rec))
        self._close("released", released=True)

    def finish(self, outcome: records.Outcome | None = None) -> bool:
        """Create ``result.msgpack`` (durable, create-if-absent) from the attempt's ``outcome``
        (default: completed, no metrics). True: this attempt's result is the trial's result.
        False: another result was there first (this one is discarded). Raises LeaseLost when
        this holder fenced itself (nothing is written then); ValueError for a stopped outcome
        (that is a :meth:`release`).

        The result's lineage is read from the attempt records (no store read when this attempt
        started from scratch)."""
        self.check(remote=False)
        if outcome is None:
            outcome = records.Outcome(status="completed")
        resumed = outcome.resumed_from if outcome.resumed_from is not None else self._resumed_from
        if resumed is None and self.epoch == 0:
            chain: list[tuple[int, int | None]] = [(0, None)]
        else:
            chain = lineage.chain(self._store, self.trial, self.epoch)
        rec = records.Result.of(
            outcome, trial=self.trial, epoch=self.epoch, agent_id=self.agent_id, lineage=chain
        )
        won = self._store.create(layout.result(self.trial), records.encode(rec), durable=True)
        self._close("finished" if won else "lost: another result exists", released=False)
        return won

    def _close(self, how: str, *, released: bool) -> None:
        self._closed = how
        self._membership.drop(self.trial, self.epoch, released=released)
        self._claimer._closed(self.trial, how)


# --- the claimer -------------------------------------------------------------------------------

NewSpec = Callable[[int], records.TrialSpec]
CanRun = Callable[[records.TrialSpec], bool]


class _DeclinedBy:
    """The indexes one slot declined: a view of the claimer's ``index -> slots`` map."""

    def __init__(self, declined: dict[int, set[Hashable]], slot: Hashable) -> None:
        self._declined = declined
        self._slot = slot

    def __contains__(self, i: object) -> bool:
        return isinstance(i, int) and self._slot in self._declined.get(i, ())

    def add(self, i: int) -> None:
        self._declined.setdefault(i, set()).add(self._slot)


@dataclass
class _Ready:
    state: TrialState
    kind: int  # fill order: 0 released/orphaned, 1 retryable failed


@dataclass
class ClaimStats:
    """Counters, for tests and benchmarks."""

    new: int = 0
    takeovers: int = 0
    retries: int = 0
    lost_races: int = 0
    sweeps: int = 0
    lost_written: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Claimer:
    """Finds and claims trials for one :class:`Membership` (thread-safe: one claim at a time).

    ``budget``: trials before extensions (``experiment.budget(exp)``); extensions are re-read
    whenever the walk reaches the budget and before :meth:`done` answers. ``block``: new indexes
    are walked in blocks (see :meth:`_claim_new`). ``poll_s``: minimum time between two gap
    sweeps (default ``min(heartbeat_seconds, 2)``).
    """

    def __init__(
        self,
        store: Store,
        membership: Membership,
        *,
        budget: int,
        limits: LeaseLimits | None = None,
        block: int = DEFAULT_BLOCK,
        poll_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if budget < 0:
            raise ConfigError(f"budget must be >= 0, got {budget}")
        self.store = store
        self.membership = membership
        self.limits = limits if limits is not None else membership.limits
        self.base_budget = budget
        self.block = max(1, block)
        self.poll_s = poll_s if poll_s is not None else min(self.limits.heartbeat_seconds, 2.0)
        self.rng = rng or random.Random(secrets.randbits(64))
        self.clock = membership.clock
        self.liveness = Liveness(self.limits.lease_seconds, self.clock)
        # Ages of heartbeats and claims at first sight, on the store's clock: an observer that
        # arrives late need not wait a lease of its own watching (probed at most once a lease).
        self.store_clock = StoreClock(store, every_s=self.limits.lease_seconds)
        # Where a stat is cheap (local disk, NFS, memory) a sweep asks each unknown trial for
        # its result first (a few microseconds); on an object store one listing of trials/
        # (a request per 1000 keys) beats a request per trial.
        try:
            self._cheap_stat = store.capabilities().backend in ("posix", "memory")
        except Exception:
            self._cheap_stat = False
        self.stats = ClaimStats()
        self._lock = threading.RLock()
        self._ext: dict[str, records.Extension | None] = {}
        self._retry: dict[str, records.Retry | None] = {}
        self._forgiven: dict[int, int] = {}
        self._budget = budget
        self._budget_read = False
        # the walk over new indexes
        self.frontier = Frontier(
            store,
            block=self.block,
            hint_every_s=self.limits.heartbeat_seconds,
            rng=self.rng,
            clock=self.clock,
            count=self._count,
        )
        # what we know about trials
        self._terminal: set[int] = set()
        self._ready: dict[int, _Ready] = {}
        self._check_at: dict[int, float] = {}
        self._free: list[int] = []  # sorted
        self._free_pos = 0
        self._tails: set[int] = set()  # free block tails seen by the last sweep
        # index -> the slots that declined it (``can_run`` said no): still free for the others
        self._declined: dict[int, set[Hashable]] = {}
        self._specs: dict[int, records.TrialSpec] = {}
        self._hinted: set[tuple[int, int]] = set()
        self._exited: set[str] = set()
        self._prev_held: dict[str, frozenset[tuple[int, int]]] = {}
        # Claims whose create failed without an answer (a lost reply whose read-back failed
        # too): (trial, epoch) -> (our body, spec). Still listed as held; resolved by the next
        # claim_next, so that a claim of ours is never left held by nobody.
        self._unresolved: dict[tuple[int, int], tuple[bytes, records.TrialSpec]] = {}
        # agent -> (size, mtime, etag) of its heartbeat's listing entry as last listed, when
        # that entry was first seen, and the entry its body was last read under (see _maybe_scan)
        self._hb_entry: dict[str, tuple[int, float | None, str | None]] = {}
        self._hb_since: dict[str, float] = {}
        self._body_entry: dict[str, tuple[int, float | None, str | None] | None] = {}
        # agent -> the listing entry of its release hints key when last looked at
        self._hints_entry: dict[str, tuple[int, float | None, str | None]] = {}
        self._n_live = 1
        self._last_scan = -math.inf
        self._last_sweep: float | None = None
        self._all_terminal = False

    # -- public ----------------------------------------------------------------------------
    def budget(self, refresh: bool = True) -> int:
        """Trials in the experiment: the base budget plus extensions (re-read when ``refresh``)."""
        with self._lock:
            if refresh or not self._budget_read:
                new = read_budget(self.store, self.base_budget, self._ext)
                if new > self._budget:
                    self.frontier.exhausted = False  # an extension: the walk goes on
                    self._all_terminal = False
                self._budget = new
                self._budget_read = True
            return self._budget

    def stop_requested(self, refresh: bool = False) -> bool:
        """The operator's stop record exists (seen by the heartbeat, or read now if ``refresh``)."""
        if self.membership.stop_requested:
            return True
        return refresh and self.store.exists(layout.STOP)

    def claim_next(
        self, new_spec: NewSpec, can_run: CanRun | None = None, *, slot: Hashable = None
    ) -> Held | None:
        """Claim the next trial this agent should run, or None when there is nothing to claim
        now (all running elsewhere, done, stopped, or declined by ``can_run``). Every call ends
        (the walk over new indexes passes each index at most twice).

        Fill order: released and orphaned trials, then retryable failed ones, then new indexes.
        ``new_spec(index)`` resolves a new trial (stored in ``claim.e0000``; takeovers read it
        back from there); ``can_run(spec)`` may decline a trial that ``slot`` cannot run (it
        stays for this agent's other slots and for other agents). A trial past
        ``max_takeovers`` is failed as "lost" instead of returned.
        """
        with self._lock:
            resolved = self._resolve()
            if resolved is not None:
                return resolved
            if self.membership.stop_requested or self.membership.state != "running":
                return None
            if not self.membership.renewing:
                # Heartbeats fail: a new claim could not be renewed in the world's eyes, and
                # would be fenced and taken over (often by ourselves). Claim again once they pass.
                return None
            declined = _DeclinedBy(self._declined, slot)
            self._maybe_scan()
            held = self._claim_ready(new_spec, can_run)
            if held is None:
                held = self._claim_free(new_spec, can_run, declined)
            if held is None and not self.frontier.exhausted:
                held = self._claim_new(new_spec, can_run, declined)
            if held is None and self._sweep_due():
                self._sweep()
                held = self._claim_ready(new_spec, can_run) or self._claim_free(new_spec, can_run, declined)
            return held

    def claim(self, index: int, new_spec: NewSpec, can_run: CanRun | None = None) -> Held | None:
        """Claim trial ``index`` if it is new or takeable (``ablator run --trial N``); None when it
        is running elsewhere, done or failed."""
        with self._lock:
            # Watch the agents as claim_next does (at most once a heartbeat interval): a late
            # caller (``ablator run``) ages a holder's heartbeat on the store's clock at first
            # sight, and times its renewals by their stamps, instead of waiting a lease of its own.
            self._maybe_scan()
            st = self._read(index, validate_result=False)  # a result, corrupt or not, is final
            if st.status == "pending":
                return self._create_new(index, new_spec, can_run, _DeclinedBy(self._declined, None))
            if st.status in TAKEABLE or st.status == "retryable":
                return self._take(st, new_spec, can_run)
            return None

    def state(self, index: int) -> TrialState:
        """Trial ``index``'s state now (lists its folder, reads what it must, and decodes a
        result: a corrupt one is ``needs_repair``, as ``ablator status`` says)."""
        return self._read(index, validate_result=True)

    def _read(self, index: int, *, validate_result: bool) -> TrialState:
        with self._lock:
            forgiven = read_forgiven(self.store, self._retry)
            return read_trial(
                self.store,
                index,
                judge=self._judge,
                limits=self.limits,
                forgiven=forgiven.get(index, -1),
                validate_result=validate_result,
            )

    def known_final(self) -> int:
        """How many trials this claimer knows to be final (done or failed for good), without a
        store operation: a lower bound, for progress displays."""
        with self._lock:
            return len(self._terminal)

    def done(self) -> bool:
        """Every index below the budget (extensions re-read now) has a result or failed for good.
        Sweeps when the last sweep is older than ``poll_s``."""
        with self._lock:
            self._maybe_scan()
            if self._sweep_due():
                self._sweep()  # re-reads the budget too
            if not self._all_terminal or self.membership.held():
                return False
            # About to say "done": an extension may have appeared since the sweep.
            before = self._budget
            if self.budget(refresh=True) != before:
                self._sweep()
            return self._all_terminal and not self.membership.held()

    # -- bookkeeping -------------------------------------------------------------------------
    def _closed(self, trial: int, how: str) -> None:
        with self._lock:
            if how == "finished" or how.startswith("lost: another result"):
                self._terminal.add(trial)
                self.liveness.forget(trial)
            else:  # failed, released or lost: read the trial again at the next claim
                self._check_at[trial] = self.clock()

    def _sweep_due(self) -> bool:
        return self._last_sweep is None or self.clock() - self._last_sweep >= self.poll_s

    def _judge(self, trial: int, epoch: int, holder: str | None, entry: Entry) -> bool:
        if holder is not None and holder != self.membership.agent_id:
            self._refresh_agent(holder)
        elif holder == self.membership.agent_id:
            # Our own claim: held -> running; not held (fenced, or from before a crash of this
            # very process? impossible: ids are new per start) -> judged like anyone's.
            if (trial, epoch) in set(self.membership.held()):
                return False
            self._refresh_agent(holder)
        age = self.store_clock.age(entry.mtime)
        since = None if age is None else self.clock() - age
        return self.liveness.claim_orphaned(trial, epoch, holder, since=since)

    def _refresh_agent(self, agent_id: str) -> None:
        # A verdict must rest on a read younger than the holder's fence margin (2 x heartbeat):
        # otherwise we could miss a renewal that kept its trials alive. Half an interval is safe.
        # A scan's listing counts as such a read only for the body it shows unchanged.
        v = self.liveness.agents.get(agent_id)
        hb_s = min(
            v.heartbeat_s if v is not None else self.limits.heartbeat_seconds, self.limits.heartbeat_seconds
        )
        stale_body = v is not None and self._body_entry.get(agent_id) != self._hb_entry.get(agent_id)
        if stale_body or self.liveness.needs_read(agent_id, hb_s / 2):
            hb = records.read(self.store, layout.agent(agent_id), records.Heartbeat)
            self.liveness.observe(agent_id, hb)
            self._body_entry[agent_id] = self._hb_entry.get(agent_id)
            if hb is not None:
                self._check_gone(agent_id, hb)

    def _maybe_scan(self) -> None:
        """Look at every agent's heartbeat (at most once per heartbeat interval): starts liveness
        timers, counts live agents, and turns dead agents' held lists and everyone's release
        hints into trials to check -- the fast path to takeable trials.

        One listing of ``agents/`` says who renewed: an entry (ETag, or an mtime finer than a
        second) changes with every write of its heartbeat, and a heartbeat changes at every
        renewal, so a changed entry is a new counter value and an unchanged one the same value
        -- no read needed. Bodies are read only at an agent's first sight, once when it is
        judged dead (its last held list), and for at most :data:`BODY_READS_PER_SCAN` live agents
        (the least recently read, for their held lists). Release hints have keys of their own in
        the same listing (``agents/released/<id>.msgpack``), read when their entry changed: a
        release reaches us within one scan however many agents run. So a scan costs one listing
        page per 1000 keys, a constant number of reads and one per agent that let a trial go,
        however many agents run or ever ran. Entries without a fine timestamp or ETag are read
        every scan."""
        now = self.clock()
        if now - self._last_scan < self.limits.heartbeat_seconds:
            return
        self._last_scan = now
        live = 1
        must: list[tuple[str, str, bool, bool]] = []  # (agent, key, counted live already, fine entry)
        optional: list[tuple[float, float, str, str]] = []
        hints: list[tuple[str, Entry]] = []  # release hints keys (agents/released/<id>.msgpack)
        for e in self.store.list(layout.AGENTS_DIR):
            agent_id = layout.parse_agent(e.key)
            if agent_id is None:
                hinter = layout.parse_agent_releases(e.key)
                if hinter is not None and hinter != self.membership.agent_id:
                    hints.append((hinter, e))
                continue
            if agent_id == self.membership.agent_id or agent_id in self._exited:
                continue
            sig = (e.size, e.mtime, e.etag)
            v = self.liveness.agents.get(agent_id)
            fine = _fine(e)
            if v is None or not fine:
                if self._hb_entry.get(agent_id) != sig:
                    self._hb_entry[agent_id] = sig
                    # First sight: the heartbeat was written this long ago, by the store's clock.
                    age = self.store_clock.age(e.mtime) if v is None else None
                    self._hb_since[agent_id] = now - (age or 0.0)
                must.append((agent_id, e.key, False, fine or v is None))
                continue
            if self._hb_entry.get(agent_id) != sig:
                # It wrote since we last looked: a renewal, timed by its stamp on the store's
                # clock (less the store's slack) where known, else first seen now. Timing it
                # from our scan instead would add up to a scan interval to every takeover.
                self._hb_entry[agent_id] = sig
                age = self.store_clock.age(e.mtime)
                self._hb_since[agent_id] = now if age is None else now - age
                self.liveness.renewed(agent_id, since=self._hb_since[agent_id])
                live += 1
                optional.append((v.body_read_at, self.rng.random(), agent_id, e.key))
                continue
            self.liveness.unchanged(agent_id)
            self._check_gone(agent_id, v.heartbeat)
            if self.liveness.is_dead(agent_id):
                if self._body_entry.get(agent_id) != sig:
                    must.append((agent_id, e.key, True, True))  # its last word: read once
                else:
                    self._hint_dead(agent_id, v.heartbeat, now)
            else:
                live += 1
        optional.sort()
        reads = must + [(a, k, True, True) for _, _, a, k in optional[:BODY_READS_PER_SCAN]]
        first_read: set[str] = set()  # heartbeats read this scan at their agent's first sight
        for agent_id, key, counted, fine in reads:
            hb = records.read(self.store, key, records.Heartbeat)
            # A counter seen for the first time was there since its listing entry first was
            # (where the entry changes with every write; else it is timed from now).
            self.liveness.observe(agent_id, hb, since=self._hb_since.get(agent_id) if fine else None)
            self._body_entry[agent_id] = self._hb_entry.get(agent_id)
            if hb is None:
                self._hb_entry.pop(agent_id, None)
                continue
            self._check_gone(agent_id, hb)
            self._look_at(hb.released, now)
            if not counted:
                first_read.add(agent_id)
            # A trial that left a live agent's held list finished, failed or was released:
            # look at it now. (Running trials held and listed by live agents are otherwise not
            # re-read: the heartbeats say all there is to say about them.)
            held_now = frozenset((int(t), int(ep)) for t, ep in hb.held)
            for t, _ in self._prev_held.get(agent_id, frozenset()) - held_now:
                if t not in self._terminal:
                    self._check_at[t] = now
            self._prev_held[agent_id] = held_now
            if self.liveness.is_dead(agent_id):
                self._hint_dead(agent_id, hb, now)
            elif not counted:
                live += 1
        self._n_live = live
        # Release hints reach us within one scan however many agents run: an agent that lets a
        # trial go replaces its hints key (after the heartbeat that names it), so its listing
        # entry changes, and only then is its small body read. The key of an agent whose
        # heartbeat was first read in this very scan is not: that body names the same pairs.
        # Entries without an ETag or a sub-second stamp cannot show a change: their heartbeats
        # are read every scan anyway, and carry the same list.
        # At most HINT_READS_PER_SCAN of them, chosen at random: the rest stay unread (their
        # entry not recorded) for the next scans. A storm of releases (a fleet of spot machines
        # reclaimed at once) thus costs an observer a bounded number of reads per interval, still
        # hands it more takeable trials than it has slots, and -- the choice being random, not the
        # same for everyone -- lets the fleet as a whole learn of every release within a scan.
        changed: list[tuple[float, str, Entry]] = []
        for agent_id, e in hints:
            if not _fine(e):
                continue
            sig = (e.size, e.mtime, e.etag)
            before = self._hints_entry.get(agent_id)
            if before == sig:
                continue
            if before is None and agent_id in first_read:
                self._hints_entry[agent_id] = sig
                continue
            changed.append((self.rng.random(), agent_id, e))
        changed.sort()
        for _, agent_id, e in changed[:HINT_READS_PER_SCAN]:
            self._hints_entry[agent_id] = (e.size, e.mtime, e.etag)
            rec = records.read(self.store, e.key, records.ReleaseHints)
            if rec is not None:
                self._look_at(rec.released, now)

    def _look_at(self, released: list[tuple[int, int]], now: float) -> None:
        """Trials an agent says it released or failed: read each again now (once per pair), not
        at a re-check scheduled a lease on -- unless it is final here, or ``claim.e<ep+1>``
        exists: somebody took it over already (as every observer but one finds), and its new
        holder's heartbeat says the rest. One look instead of a read of the trial keeps a
        release's cost to each observer at a hints read and a look."""
        for t, ep in released:
            if (t, ep) in self._hinted:
                continue
            self._hinted.add((t, ep))
            if t in self._terminal or self.store.exists(layout.claim(t, ep + 1)):
                continue
            self._check_at[t] = min(self._check_at.get(t, now), now)

    def _check_gone(self, agent_id: str, hb: records.Heartbeat) -> None:
        """An agent of this very machine (same boot, same pid namespace) whose process (pid and
        start time) no longer exists is dead at once: no need to wait a lease."""
        if hb.state != "exited" and identity.dead_here(hb.boot_id, hb.pid_ns, hb.pid, hb.start_ticks):
            self.liveness.mark_gone(agent_id)

    def _hint_dead(self, agent_id: str, hb: records.Heartbeat, now: float) -> None:
        """A dead agent's held trials are the ones to look at (once each)."""
        for t, ep in hb.held:
            if (t, ep) not in self._hinted:
                self._hinted.add((t, ep))
                # Now: a running trial's re-check may be scheduled a lease away.
                self._check_at[t] = min(self._check_at.get(t, now), now)
        if hb.state == "exited":
            self._exited.add(agent_id)  # its last word: no need to read it again

    # -- takeovers -------------------------------------------------------------------------
    def _classify(self, st: TrialState) -> None:
        i = st.index
        self._check_at.pop(i, None)
        self._ready.pop(i, None)
        if st.status in TERMINAL:
            self._terminal.add(i)
            self.liveness.forget(i)
        elif st.status in TAKEABLE:
            self._ready[i] = _Ready(st, 0)
        elif st.status == "retryable":
            self._ready[i] = _Ready(st, 1)
        elif st.status == "running":
            # Held and listed by a live agent: its heartbeat (read at every scan) tells when it
            # lets go, so a re-read once a lease is only a safety net. Otherwise (unlisted, holder
            # unknown) the liveness timers must be fed: look again after poll_s.
            v = self.liveness.agents.get(st.holder) if st.holder is not None else None
            listed = v is not None and st.epoch is not None and (i, st.epoch) in v.held
            if st.holder == self.membership.agent_id:
                listed = True
            self._check_at[i] = self.clock() + (self.limits.lease_seconds if listed else self.poll_s)
        elif st.status == "pending" and i < self._budget and i not in self._free:
            bisect.insort(self._free, i)

    def _recheck_due(self) -> None:
        """Read again the trials whose re-check is due (released, orphaned, hinted, watched)."""
        now = self.clock()
        due = [t for t, at in self._check_at.items() if at <= now and t not in self._terminal]
        if due:
            forgiven = read_forgiven(self.store, self._retry)
            for t in due:
                self._classify(
                    read_trial(
                        self.store, t, judge=self._judge, limits=self.limits, forgiven=forgiven.get(t, -1)
                    )
                )

    def watch(self) -> None:
        """Keep watching while every slot is busy (an agent calls this about once a heartbeat
        interval): the liveness scan and the due re-checks run as if claiming, so that timers
        start on time and an orphan is already known -- and taken first -- when a slot frees.
        Costs what a scan costs (a listing and a few reads per heartbeat interval)."""
        with self._lock:
            self._maybe_scan()
            self._recheck_due()

    def _claim_ready(self, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        self._recheck_due()
        while self._ready:
            i = min(self._ready, key=lambda k: (self._ready[k].kind, k))
            ready = self._ready.pop(i)
            held = self._take(ready.state, new_spec, can_run)
            if held is not None:
                return held
        return None

    def _spec_for(self, st: TrialState, new_spec: NewSpec) -> tuple[records.TrialSpec, bool]:
        """The trial's resolved spec from ``claim.e0000`` (or, if that is corrupt, the first later
        claim that carries one). (spec, False) normally; (new_spec(index), True) when no claim has
        a readable spec: the takeover claim then records it."""
        i = st.index
        if i in self._specs:
            return self._specs[i], False
        for ep in range(0, (st.epoch or 0) + 1):
            c = records.read(self.store, layout.claim(i, ep), records.Claim)
            if c is not None and c.spec is not None:
                self._specs[i] = c.spec
                return c.spec, False
        return new_spec(i), True

    def _takeovers_by_others(self, i: int, top: int) -> int:
        """Takeovers of trial ``i`` up to epoch ``top`` in which the holder changed. An agent that
        fenced itself (its heartbeats failed) and took its own trial back did not lose a host to
        the trial: such self-takeovers never count against ``max_takeovers``. Read only when the
        count of all takeovers reaches the limit (rare)."""
        entries = self.store.list(layout.trial_dir(i))
        names = {layout.basename(e.key) for e in entries}
        holders: dict[int, str | None] = {}
        for ep in range(top + 1):
            key = layout.claim(i, ep)
            if layout.basename(key) in names:
                c = records.read(self.store, key, records.Claim)
                holders[ep] = None if c is None else c.agent_id
        n = 0
        forgiven = self._forgiven.get(i, -1)
        for ep in range(max(1, forgiven + 2), top + 1):
            prev = ep - 1
            ended = any(
                n_ in names
                for n_ in (layout.basename(layout.failed(i, prev)), layout.basename(layout.release(i, prev)))
            )
            if ep in holders and prev in holders and not ended:
                same = holders[ep] is not None and holders[ep] == holders[prev]
                n += 0 if same else 1
        return n

    def _take(self, st: TrialState, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        """Takeover of a released, orphaned or retryable trial: create ``claim.e<epoch + 1>``;
        exactly one agent wins."""
        assert st.epoch is not None
        i, e = st.index, st.epoch + 1
        spec, embed = self._spec_for(st, new_spec)
        if can_run is not None and not can_run(spec):
            return None
        lost = (
            st.status == "orphaned"
            and st.takeovers >= self.limits.max_takeovers
            and self._takeovers_by_others(i, st.epoch) >= self.limits.max_takeovers
        )
        claim = records.Claim(
            trial=i,
            epoch=e,
            agent_id=self.membership.agent_id,
            host=self.membership.host,
            spec=spec if embed else None,
        )
        if not lost:
            self.membership.hold(i, e, self.clock())  # listed before the claim exists: never unlisted
        if not self._create_claim(i, e, records.encode(claim), spec, durable=embed, held=not lost):
            if not lost:
                self.membership.drop(i, e, released=False)
            self.stats.lost_races += 1
            return None
        if lost:
            # The trial kills every host it lands on: record it as failed ("lost") instead of
            # running it once more. We own epoch e exclusively, so this is the only such record.
            rec = records.Failure(
                trial=i,
                epoch=e,
                agent_id=self.membership.agent_id,
                kind="lost",
                message=(
                    f"trial {i} was taken over {st.takeovers} times (limits.max_takeovers={self.limits.max_takeovers}): "
                    "every holder died or vanished while running it"
                ),
            )
            self.store.create(layout.failed(i, e), records.encode(rec), durable=True)
            self._terminal.add(i)
            self.stats.lost_written += 1
            return None
        if st.status == "retryable":
            self.stats.retries += 1
        else:
            self.stats.takeovers += 1
        self._specs[i] = spec
        return Held(self, i, e, spec)

    # -- new trials ------------------------------------------------------------------------
    def _create_claim(
        self, i: int, e: int, body: bytes, spec: records.TrialSpec, durable: bool, *, held: bool = True
    ) -> bool:
        """Create ``claim.e<e>`` (the pair is already held). A create that fails without an
        answer (a lost reply, then a failed read-back) may have made the claim: the pair stays
        held and :meth:`_resolve` finds out, before anything else, at the next claim."""
        try:
            return self.store.create(layout.claim(i, e), body, durable=durable)
        except StoreError:
            if held:  # (an epoch claimed only to record a "lost" failure is not run: the next
                # observer finds it orphaned and records the failure then)
                self._unresolved[(i, e)] = (body, spec)
            raise

    def _resolve(self) -> Held | None:
        """Settle claims whose create went unanswered: ours (the stored body is ours) -> held
        and returned; else let go. Raises StoreError while the store still does not answer."""
        for (i, e), (body, spec) in list(self._unresolved.items()):
            try:
                data = self.store.get(layout.claim(i, e))
            except records.CorruptRecordError:  # over the size limit: not the body we sent
                data = None
            del self._unresolved[(i, e)]
            if data == body:
                self._specs[i] = spec
                if e == 0:
                    self.stats.new += 1
                else:
                    self.stats.takeovers += 1
                return Held(self, i, e, spec)
            self.membership.drop(i, e, released=False)
        return None

    def _create_new(
        self, i: int, new_spec: NewSpec, can_run: CanRun | None, declined: _DeclinedBy
    ) -> Held | None:
        if i in self._specs and any(t == i for t, _ in self.membership.held()):
            # Claimed already, by this agent (a stale entry of the free list, or the cursor met
            # it): trying again would _hold and then _drop a pair we may still be running,
            # unlisting it from our heartbeat until an observer takes it over. (Claimed once and
            # no longer held, yet pending: its records were deleted by hand. Claim it afresh,
            # or no agent ever would, and ours would never see the experiment done.)
            return None
        spec = new_spec(i)
        if can_run is not None and not can_run(spec):
            declined.add(i)
            return None
        claim = records.Claim(
            trial=i, epoch=0, agent_id=self.membership.agent_id, host=self.membership.host, spec=spec
        )
        # Hold first, create second: the heartbeat may list the pair before the claim exists
        # (harmless), never after it existed unlisted for longer than it must.
        self.membership.hold(i, 0, self.clock())
        # Durable: claim.e0000 is the only record of the resolved trial (config, seed, variant).
        won = self._create_claim(i, 0, records.encode(claim), spec, durable=True)
        self.frontier.saw_claimed(i)  # ours or somebody else's: not a landing place
        if not won:
            self.membership.drop(i, 0, released=False)
            self.stats.lost_races += 1
            return None
        self.stats.new += 1
        self._specs[i] = spec
        self.frontier.won()
        return Held(self, i, 0, spec)

    def _claim_free(self, new_spec: NewSpec, can_run: CanRun | None, declined: _DeclinedBy) -> Held | None:
        """Claim one of the free indexes the last sweep found. Agents that swept together hold
        the same list: each walks it in order from a random place and jumps elsewhere at random
        after a lost race (somebody is working there), so that they rarely meet. After a run of
        lost races the list is refreshed with one ``list_dirs``; after the first lost race each
        candidate is looked at (``exists``) before it is created. Indexes this slot declined stay
        in the list for the others; the walk ends after passing each of them once."""
        lost_run = 0
        passed = 0  # declined by this slot, stepped over
        while len(self._free) > passed:
            if self._free_pos >= len(self._free):
                self._free_pos = 0
            i = self._free[self._free_pos]
            if i in self._terminal or i >= self._budget:
                self._free.pop(self._free_pos)
                continue
            if i in declined:
                self._free_pos += 1
                passed += 1
                continue
            self._free.pop(self._free_pos)
            held = (
                None
                if lost_run and self.frontier.taken(i)
                else self._create_new(i, new_spec, can_run, declined)
            )
            if held is not None:
                return held
            if i in declined:  # declined just now: still free for other slots
                self._free.insert(self._free_pos, i)
                self._free_pos += 1
                passed += 1
                continue
            lost_run += 1
            self.stats.extra["lost_in_gaps"] = self.stats.extra.get("lost_in_gaps", 0) + 1
            if lost_run >= 4:
                existing = {int(n) for n in self.store.list_dirs(layout.TRIALS_DIR) if n.isdigit()}
                self._free = [k for k in self._free if k not in existing]
                lost_run = 0
            self._free_pos = self.rng.randrange(len(self._free)) if self._free else 0
            passed = 0  # a jump: count the declined ones afresh from here
        return None

    def _count(self, what: str) -> None:
        if what == "lost_races":
            self.stats.lost_races += 1
        else:
            self.stats.extra[what] = self.stats.extra.get(what, 0) + 1

    def _claim_new(self, new_spec: NewSpec, can_run: CanRun | None, declined: _DeclinedBy) -> Held | None:
        """The next new index from the frontier walk (:class:`~ablator.lease.frontier.Frontier`)."""
        return self.frontier.walk(
            budget=self._budget if self._budget_read else self.budget(),
            refresh_budget=self.budget,
            n_live=self._n_live,
            skip=self._terminal,
            declined=declined,
            create=lambda i: self._create_new(i, new_spec, can_run, declined),
        )

    # -- the gap sweep -----------------------------------------------------------------------
    def _sweep(self) -> None:
        """Look at every index below the budget that is not known to be final: free indexes (no
        folder) become new claims, takeable ones takeovers, running ones are watched. One
        ``list_dirs`` of ``trials/``; then, for the trials of unknown state, one recursive
        listing of ``trials/`` on an object store when there are many (one request per 1000
        keys), else per trial: a stat of its result where stats are cheap, then a listing of its
        folder if it has none."""
        self.stats.sweeps += 1
        budget = self.budget(refresh=True)
        old_forgiven = self._forgiven
        self._forgiven = read_forgiven(self.store, self._retry)
        for t, ep in self._forgiven.items():
            if old_forgiven.get(t, -1) != ep:
                self._terminal.discard(t)  # an operator's retry reopened it
        existing = layout.trial_indexes(self.store.list_dirs(layout.TRIALS_DIR))
        mine = {t for t, _ in self.membership.held()}
        now = self.clock()
        # Trials with a re-check scheduled for later (running elsewhere) are not re-read: the
        # scan of heartbeats brings their re-check forward when their holder lets go or dies.
        unknown = sorted(
            i
            for i in existing
            if i < budget and i not in self._terminal and i not in mine and self._check_at.get(i, now) <= now
        )
        grouped: dict[int, list[Entry]] | None = None
        if len(unknown) > BULK_LIST_THRESHOLD and not self._cheap_stat:
            grouped = group_by_trial(self.store.list(layout.TRIALS_DIR))
        free = [i for i in range(budget) if i not in existing]
        if self._terminal:
            # a final trial whose folder is gone (deleted by hand) is final no more: new again
            self._terminal.difference_update(free)
        # A free index whose block head is claimed is most likely the tail of a block its owner
        # is still walking: racing the owner for it would lose almost every time. Such tails
        # become claimable only if a later sweep finds them still free (an owner that stopped).
        b = self.block
        tails = {i for i in free if i % b and (i - i % b) in existing}
        self._free = [i for i in free if i not in tails or i in self._tails]
        self._tails = tails
        for i in unknown:
            if grouped is None and self._cheap_stat and self.store.exists(layout.result(i)):
                self._terminal.add(i)  # done (corrupt or not: final either way); one stat
                self._check_at.pop(i, None)
                continue
            entries = grouped.get(i, []) if grouped is not None else None
            st = read_trial(
                self.store,
                i,
                entries,
                judge=self._judge,
                limits=self.limits,
                forgiven=self._forgiven.get(i, -1),
            )
            self._classify(st)
        # Everything not final is somewhere: free (or a deferred tail), ready to take, held by
        # us, or scheduled for a re-check (running elsewhere).
        open_trials = (
            len(tails)
            + len(self._ready)
            + sum(1 for i in self._check_at if i not in self._terminal and i < budget)
        )
        self._free.sort()
        # agents sweeping together should not all start at the same gap
        self._free_pos = self.rng.randrange(len(self._free)) if self._free else 0
        self._all_terminal = (
            not self._free
            and open_trials == 0
            and not mine
            and not (self._declined and any(i < budget and i not in self._terminal for i in self._declined))
        )
        self._last_sweep = self.clock()
