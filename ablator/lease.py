"""The claim protocol (shared/DESIGN.md "The claim protocol"; docs/protocol.md says it for users).

Many agents on many machines share one experiment with no coordinator. They meet only in the
store, through two primitives: ``create`` (create-if-absent: exactly one writer wins a key) and
``replace`` (atomic). Everything here is built on them:

* :class:`Membership` -- who this agent is (``host-pid-nonce``) and that it is alive: a heartbeat
  record replaced every ``heartbeat_seconds`` by a background thread, listing the (trial, epoch)
  pairs held and the agent's lease. A holder that has not managed to renew for
  ``lease_seconds - 2 * heartbeat_seconds`` on its own clock fences itself: its trials raise
  :class:`~ablator.errors.LeaseLost` and it stops writing for them.
* :class:`Liveness` -- an observer's judgement of other agents, on the observer's own monotonic
  clock only: a holder is dead when the (agent, counter) value it last saw has not changed for the
  holder's declared lease since its first sight. Wall clocks are never compared.
* :class:`Claimer` -- which trial next: released or orphaned trials first, then retryable failed
  ones, then new indexes from a cursor that starts at a frontier hint (O(1) store operations per
  claim, however many trials exist), then one gap sweep below the budget.
* :class:`Held` -- a claimed (trial, epoch): ``check()``, ``attempt()``, ``fail()``,
  ``release()``, ``finish()``.
* :func:`read_trial` -- a trial's state from its records, in DESIGN.md's order; shared with
  ``ablator status``.

What a lease guarantees, and what it does not (docs/protocol.md has the long version): at most
one *result* per trial (``result.msgpack`` is create-if-absent) and at most one holder per
(trial, epoch) (``claim.e<epoch>`` is create-if-absent). It does NOT guarantee that only one
process is running a trial at any instant: a holder that was paused past its lease (SIGSTOP, a
stalled VM, a partition) may still execute steps until it next checks; its writes go under its
own epoch, which a successor never reads past the step it resumed from. Execution is
at-least-once; the result is exactly-once.

Example (what the agent and ``ablator run`` do)::

    membership = Membership(store, LeaseLimits.from_limits(exp.limits), gpus=gpus)
    membership.start()                          # heartbeat written before any claim
    claimer = Claimer(store, membership, budget=budget(exp))
    while (held := claimer.claim_next(new_spec=lambda i: trial_spec(exp, i))) is not None:
        try:
            outcome = run_it(held.spec, fence=held)   # calls held.check() before each write
        except LeaseLost:
            continue                            # somebody else owns the trial now
        held.finish(metrics=outcome.metrics)
    membership.close()
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import platform
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ablator import layout, records
from ablator.errors import ConfigError, LeaseLost, StoreError
from ablator.store.base import Entry, Store

log = logging.getLogger("ablator.lease")

Clock = Callable[[], float]

#: Number of frontier hint keys (``frontier/<shard>.msgpack``). Each agent replaces one, chosen
#: at random, so that the hint is not one hot key; a joining agent reads all of them (a constant).
FRONTIER_SHARDS = 4
#: Claim this many new wins between two frontier hint updates (or one heartbeat interval).
FRONTIER_EVERY = 64
#: Trials per block of the new-index walk (see :meth:`Claimer._claim_new`).
DEFAULT_BLOCK = 16
#: Above this many trials of unknown state a sweep lists ``trials/`` once instead of per trial.
BULK_LIST_THRESHOLD = 32
#: Released/failed hints kept in the heartbeat.
RELEASED_HINTS = 64


def default_clock() -> Clock:
    """The clock that leases are measured on: ``CLOCK_BOOTTIME`` where the OS has it (it keeps
    counting while the machine is suspended, so a laptop that slept past its lease fences itself
    on waking), else ``time.monotonic``. Never the wall clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:  # pragma: no cover - old kernels
            pass
        else:
            return lambda: time.clock_gettime(boottime)
    return time.monotonic


# --- limits and identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseLimits:
    """The numbers the protocol needs (a subset of the experiment's ``limits``).

    ``lease_seconds`` must be at least 3 x ``heartbeat_seconds``: a holder fences itself after
    ``lease_seconds - 2 * heartbeat_seconds`` without a renewal, and that must leave room for at
    least one heartbeat interval.
    """

    max_attempts: int = 3
    max_takeovers: int = 5
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            problems.append(f"limits.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not (isinstance(self.max_takeovers, int) and self.max_takeovers >= 0):
            problems.append(f"limits.max_takeovers must be an integer >= 0, got {self.max_takeovers!r}")
        hb, lease = self.heartbeat_seconds, self.lease_seconds
        if not (isinstance(hb, (int, float)) and math.isfinite(hb) and hb > 0):
            problems.append(f"limits.heartbeat_seconds must be a positive number, got {hb!r}")
        elif not (isinstance(lease, (int, float)) and math.isfinite(lease) and lease >= 3 * hb):
            problems.append(
                f"limits.lease_seconds ({lease!r}) must be at least 3 x limits.heartbeat_seconds ({hb!r}): "
                "a holder fences itself after lease - 2 x heartbeat without a renewal"
            )
        if problems:
            raise ConfigError(problems)

    @property
    def fence_after(self) -> float:
        """Seconds without a renewal after which a holder stops writing for its trials."""
        return self.lease_seconds - 2 * self.heartbeat_seconds

    @classmethod
    def from_limits(
        cls, limits: Any, *, lease_seconds: float | None = None, heartbeat_seconds: float | None = None
    ) -> LeaseLimits:
        """From an ``experiment.Limits`` (or anything with the same attributes), with the agent's
        ``--lease-seconds`` / ``--heartbeat-seconds`` overrides."""
        return cls(
            max_attempts=int(getattr(limits, "max_attempts", cls.max_attempts)),
            max_takeovers=int(getattr(limits, "max_takeovers", cls.max_takeovers)),
            lease_seconds=float(
                lease_seconds
                if lease_seconds is not None
                else getattr(limits, "lease_seconds", cls.lease_seconds)
            ),
            heartbeat_seconds=float(
                heartbeat_seconds
                if heartbeat_seconds is not None
                else getattr(limits, "heartbeat_seconds", cls.heartbeat_seconds)
            ),
        )


_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_agent_id(host: str | None = None, pid: int | None = None) -> str:
    """``host-pid-nonce``: a new id at every start, so that an agent restarted on the same host (or
    a recycled pid) is a different agent and never keeps its predecessor's trials alive."""
    h = _HOST_UNSAFE.sub("_", host if host is not None else socket.gethostname()).strip("._-")[:48] or "host"
    return f"{h}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"


def _versions() -> dict[str, str]:
    from ablator import cli

    return {"ablator": cli._version(), "python": platform.python_version()}


# --- the heartbeat -----------------------------------------------------------------------------


@dataclass
class _Hold:
    # Start time (our clock) of the last store write that made the world believe we hold the
    # trial: the claim create at first, then each heartbeat that listed it. Observers cannot
    # declare the trial orphaned before renewed + lease (they start their timers no earlier
    # than they could see that write), so we stop writing at renewed + lease - 2 * heartbeat.
    renewed: float
    lost: str | None = None


class Membership:
    """This agent's identity and heartbeat.

    :meth:`start` writes the first heartbeat (before any claim) and starts a daemon thread that
    replaces it every ``heartbeat_seconds``; :meth:`close` writes a last one with
    ``state="exited"``. ``on_fenced(pairs)`` is called from the heartbeat thread when trials are
    fenced (the agent kills their workers); ``on_renewed()`` after each successful heartbeat (the
    agent passes :meth:`Held.valid_until` on to workers).

    >>> m = Membership(open_store("memory://doc"), LeaseLimits(lease_seconds=30, heartbeat_seconds=5))
    >>> m.start(); m.agent_id                                        # doctest: +SKIP
    'myhost-4242-9f3a1c2e'
    """

    def __init__(
        self,
        store: Store,
        limits: LeaseLimits,
        *,
        host: str | None = None,
        gpus: Sequence[records.GpuInfo] = (),
        slots: int = 1,
        cpu_ok: bool = True,
        versions: Mapping[str, str] | None = None,
        on_fenced: Callable[[list[tuple[int, int]]], None] | None = None,
        on_renewed: Callable[[], None] | None = None,
        clock: Clock | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.host = host if host is not None else socket.gethostname()
        self.agent_id = agent_id if agent_id is not None else new_agent_id(self.host)
        self.pid = os.getpid()
        self.gpus = list(gpus)
        self.slots = slots
        self.cpu_ok = cpu_ok
        self.versions = dict(versions) if versions is not None else _versions()
        self.on_fenced = on_fenced
        self.on_renewed = on_renewed
        self.clock = clock or default_clock()
        self.key = layout.agent(self.agent_id)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._held: dict[tuple[int, int], _Hold] = {}
        self._released: deque[tuple[int, int]] = deque(maxlen=RELEASED_HINTS)
        self._counter = 0
        self._state: Literal["running", "draining", "exited"] = "running"
        self._started = False
        self._closing = False
        self._last_beat_start = -math.inf
        self._next_beat = math.inf
        self._last_ok: float | None = None
        self._stop_seen = False
        self._last_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Write the first heartbeat (raising StoreError if the store refuses it: nothing may be
        claimed before the world can see us) and start the heartbeat thread."""
        if self._started:
            return
        if not self.beat():
            raise StoreError(
                f"agent {self.agent_id}: cannot write its first heartbeat {self.key!r} to {self.store.url}"
                f" ({self._last_error}); nothing may be claimed before other agents can see this one"
            )
        self._started = True
        with self._lock:
            self._next_beat = self._last_beat_start + self.limits.heartbeat_seconds
        self._thread = threading.Thread(
            target=self._run, name=f"ablator-heartbeat-{self.agent_id}", daemon=True
        )
        self._thread.start()

    def drain(self) -> None:
        """Say so in the heartbeat (``state="draining"``): finishing or releasing, no new claims."""
        with self._cond:
            self._state = "draining"
            self._next_beat = min(self._next_beat, self.clock())
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the heartbeat thread, fence whatever is still held (its ``Held`` objects raise
        LeaseLost from now on), and write a last heartbeat with ``state="exited"`` and nothing
        held: observers may take over such an agent's leftover claims at once. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            leftover = [k for k, h in self._held.items() if h.lost is None]
            for k in leftover:
                self._held[k].lost = "the agent closed its membership"
            self._state = "exited"
        if leftover:
            self._notify_fenced(leftover)
        if self._started:
            self.beat()

    def __enter__(self) -> Membership:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        """The operator's stop record (``control/stop.msgpack``) was seen (read every heartbeat)."""
        return self._stop_seen

    @property
    def state(self) -> str:
        return self._state

    def held(self) -> list[tuple[int, int]]:
        """The (trial, epoch) pairs held and not fenced."""
        with self._lock:
            return sorted(k for k, h in self._held.items() if h.lost is None)

    def renewed_at(self) -> float | None:
        """Start time (on :attr:`clock`) of the last successful heartbeat."""
        return self._last_ok

    # -- holds (used by Claimer and Held) ---------------------------------------------------
    def _hold(self, trial: int, epoch: int, since: float) -> None:
        with self._cond:
            if self._closing:
                self._held[(trial, epoch)] = _Hold(since, lost="the agent closed its membership")
                return
            self._held[(trial, epoch)] = _Hold(since)
            # Until a heartbeat lists it, the trial's fence deadline runs from the claim itself:
            # make sure a listing heartbeat starts within half the fence margin. With the usual
            # lease >> 3 x heartbeat the next regular beat is early enough and this costs nothing.
            latest = since + self.limits.fence_after / 2
            if self._next_beat > latest:
                self._next_beat = latest
                self._cond.notify_all()

    def _drop(self, trial: int, epoch: int, *, released: bool) -> None:
        with self._lock:
            self._held.pop((trial, epoch), None)
            if released:
                self._released.append((trial, epoch))

    def _lost_reason(self, trial: int, epoch: int) -> str | None:
        """Why (trial, epoch) may no longer be written, or None. Also decides the fence: the
        deadline is computed here, on the spot, so that a process resumed after SIGSTOP fences
        itself on its first check, before its heartbeat thread has even woken up."""
        fenced: list[tuple[int, int]] = []
        with self._lock:
            h = self._held.get((trial, epoch))
            if h is None:
                return "not held by this agent"
            if h.lost is None and self.clock() - h.renewed > self.limits.fence_after:
                h.lost = self._fence_reason(h)
                fenced.append((trial, epoch))
            reason = h.lost
        if fenced:
            self._notify_fenced(fenced)
        return reason

    def _mark_lost(self, trial: int, epoch: int, reason: str) -> None:
        with self._lock:
            h = self._held.get((trial, epoch))
            if h is not None and h.lost is None:
                h.lost = reason

    def _fence_reason(self, h: _Hold) -> str:
        return (
            f"agent {self.agent_id} fenced itself: no heartbeat renewal for more than "
            f"{self.limits.fence_after:g} s (lease {self.limits.lease_seconds:g} s - 2 x heartbeat "
            f"{self.limits.heartbeat_seconds:g} s); it may already be presumed dead"
        )

    def _expire(self, now: float) -> list[tuple[int, int]]:
        # caller holds the lock
        out = []
        for k, h in self._held.items():
            if h.lost is None and now - h.renewed > self.limits.fence_after:
                h.lost = self._fence_reason(h)
                out.append(k)
        return out

    def valid_until(self, trial: int, epoch: int) -> float:
        """The ``time.monotonic()`` instant after which (trial, epoch) is fenced, for processes
        on this host that cannot ask us (workers). ``-inf`` when already lost."""
        with self._lock:
            h = self._held.get((trial, epoch))
            if h is None or h.lost is not None:
                return -math.inf
            left = h.renewed + self.limits.fence_after - self.clock()
        return time.monotonic() + left

    # -- heartbeat ---------------------------------------------------------------------------
    def beat(self) -> bool:
        """Write one heartbeat now; True when the store took it. Normally called by the thread."""
        with self._lock:
            start = self.clock()
            fenced = self._expire(start)
            snapshot = sorted(k for k, h in self._held.items() if h.lost is None)
            self._counter += 1
            self._last_beat_start = start
            hb = records.Heartbeat(
                agent_id=self.agent_id,
                host=self.host,
                pid=self.pid,
                counter=self._counter,
                lease_s=self.limits.lease_seconds,
                heartbeat_s=self.limits.heartbeat_seconds,
                held=list(snapshot),
                gpus=self.gpus,
                slots=self.slots,
                cpu_ok=self.cpu_ok,
                state=self._state,
                versions=self.versions,
                released=list(self._released),
            )
        if fenced:
            self._notify_fenced(fenced)
        try:
            self.store.replace(self.key, records.encode(hb))
        except Exception as exc:  # any failure: keep trying; fencing protects the trials
            self._last_error = exc
            log.warning("agent %s: heartbeat to %s failed: %s", self.agent_id, self.store.url, exc)
            return False
        end = self.clock()
        with self._lock:
            for k in snapshot:
                h = self._held.get(k)
                if h is None or h.lost is not None:
                    continue
                if end - h.renewed > self.limits.fence_after:
                    # The write landed after our own deadline: observers may already have judged
                    # us dead in between, so this renewal does not count (fencing is sticky).
                    h.lost = self._fence_reason(h)
                    fenced.append(k)
                else:
                    h.renewed = max(h.renewed, start)
            self._last_ok = start
        if fenced:
            self._notify_fenced(fenced)
        try:
            self._stop_seen = self._stop_seen or self.store.exists(layout.STOP)
        except Exception as exc:
            log.warning("agent %s: reading %s failed: %s", self.agent_id, layout.STOP, exc)
        if self.on_renewed is not None:
            try:
                self.on_renewed()
            except Exception:
                log.exception("agent %s: on_renewed callback failed", self.agent_id)
        return True

    def _notify_fenced(self, pairs: list[tuple[int, int]]) -> None:
        for t, e in pairs:
            log.warning("agent %s: trial %d epoch %d fenced (no renewal in time)", self.agent_id, t, e)
        if self.on_fenced is not None:
            try:
                self.on_fenced(list(pairs))
            except Exception:
                log.exception("agent %s: on_fenced callback failed", self.agent_id)

    def _run(self) -> None:
        hb = self.limits.heartbeat_seconds
        while True:
            fenced: list[tuple[int, int]] = []
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = self.clock()
                    deadline = min(
                        (h.renewed + self.limits.fence_after for h in self._held.values() if h.lost is None),
                        default=math.inf,
                    )
                    wake = min(self._next_beat, deadline)
                    if now >= wake:
                        break
                    self._cond.wait(min(wake - now, hb))
                due = now >= self._next_beat
                if due:
                    self._next_beat = now + hb
                else:
                    fenced = self._expire(now)  # woken by a deadline: fence without waiting
            if due:
                ok = self.beat()
                if not ok:
                    # After a failed write, retry sooner than a full interval.
                    with self._lock:
                        self._next_beat = min(self._next_beat, self.clock() + hb / 4)
            elif fenced:
                self._notify_fenced(fenced)


# --- liveness as seen by an observer -----------------------------------------------------------


@dataclass
class AgentView:
    """What an observer knows about one agent, on the observer's clock."""

    agent_id: str
    counter: int
    first_seen: float  # first sight of this counter value
    read_at: float  # last time the heartbeat was read
    lease_s: float
    heartbeat_s: float
    held: frozenset[tuple[int, int]]
    state: str
    heartbeat: records.Heartbeat


class Liveness:
    """Who is alive, judged on this observer's own clock (never a wall clock).

    A holder is dead when the (agent, counter) value has not changed for the holder's declared
    ``lease_s`` since this observer first saw it. A claim is orphaned when its holder is dead,
    has exited, or has not listed the (trial, epoch) in its heartbeat for a lease since this
    observer first saw it unlisted; a claim whose holder is unknown (corrupt claim, missing or
    corrupt heartbeat) is orphaned a ``default_lease_s`` after its first sight.

    Callers must feed a *fresh* heartbeat read (:meth:`observe`) before acting on a verdict: a
    read older than about a heartbeat interval could miss a renewal (see :meth:`needs_read`).
    """

    def __init__(self, default_lease_s: float, clock: Clock | None = None) -> None:
        self.default_lease_s = default_lease_s
        self.clock = clock or default_clock()
        self.agents: dict[str, AgentView] = {}
        self._missing: dict[str, float] = {}  # agent -> last read that found no valid heartbeat
        self._unlisted: dict[tuple[int, int], float] = {}
        self._unknown: dict[tuple[int, int], float] = {}

    def observe(self, agent_id: str, hb: records.Heartbeat | None) -> None:
        """Record a read of ``agent_id``'s heartbeat (None: absent or corrupt)."""
        now = self.clock()
        if hb is None:
            self.agents.pop(agent_id, None)
            self._missing[agent_id] = now
            return
        self._missing.pop(agent_id, None)
        prev = self.agents.get(agent_id)
        first = prev.first_seen if prev is not None and prev.counter == hb.counter else now
        self.agents[agent_id] = AgentView(
            agent_id=agent_id,
            counter=hb.counter,
            first_seen=first,
            read_at=now,
            lease_s=hb.lease_s,
            heartbeat_s=hb.heartbeat_s,
            held=frozenset((int(t), int(e)) for t, e in hb.held),
            state=hb.state,
            heartbeat=hb,
        )

    def needs_read(self, agent_id: str, max_age: float) -> bool:
        """True when the last read of ``agent_id`` is older than ``max_age`` (or there is none)."""
        v = self.agents.get(agent_id)
        last = v.read_at if v is not None else self._missing.get(agent_id)
        return last is None or self.clock() - last > max_age

    def is_dead(self, agent_id: str) -> bool | None:
        """True: dead or exited; False: alive; None: never seen (or no valid heartbeat)."""
        v = self.agents.get(agent_id)
        if v is None:
            return None
        return v.state == "exited" or self.clock() - v.first_seen >= v.lease_s

    def claim_orphaned(self, trial: int, epoch: int, holder: str | None) -> bool:
        """Whether the claim (trial, epoch) by ``holder`` (None: unknown) may be taken over."""
        now = self.clock()
        key = (trial, epoch)
        v = self.agents.get(holder) if holder is not None else None
        if v is None:
            # Holder unknown: time the claim itself from our first sight of it.
            first = self._unknown.setdefault(key, now)
            return now - first >= self.default_lease_s
        self._unknown.pop(key, None)
        if v.state == "exited":
            return True  # an exited agent holds nothing (it fenced everything before its last beat)
        if now - v.first_seen >= v.lease_s:
            return True
        if key in v.held:
            self._unlisted.pop(key, None)
            return False
        # Alive but not listing it: the holder died between claim and first listing, or it is a
        # predecessor's claim under an id nobody renews. The holder fences an unlisted claim
        # lease - 2 x heartbeat after creating it; we wait a full lease from first sight.
        first = self._unlisted.setdefault(key, now)
        return now - first >= v.lease_s

    def forget(self, trial: int) -> None:
        """Drop timers of ``trial`` (it reached a final state)."""
        for d in (self._unlisted, self._unknown):
            for k in [k for k in d if k[0] == trial]:
                del d[k]


# --- trial state -------------------------------------------------------------------------------

TrialStatus = Literal[
    "pending", "running", "done", "needs_repair", "failed", "retryable", "released", "orphaned"
]
#: States in which a trial may be claimed (a takeover creates ``claim.e<epoch + 1>``).
TAKEABLE: frozenset[str] = frozenset({"released", "orphaned"})
#: States that never change by themselves (``retry --failed`` can reopen "failed").
TERMINAL: frozenset[str] = frozenset({"done", "failed", "needs_repair"})


@dataclass(frozen=True)
class TrialState:
    """A trial's state, derived from its records only (DESIGN.md's order).

    ``epoch``: the highest claimed epoch (None when pending); ``holder``: that claim's agent (None
    when unknown or corrupt); ``failures``: failed attempts not forgiven by ``retry``;
    ``takeovers``: epochs that started because the previous holder vanished; ``problems``: corrupt
    records, by key.
    """

    index: int
    status: TrialStatus
    epoch: int | None = None
    holder: str | None = None
    failures: int = 0
    takeovers: int = 0
    result: records.Result | None = None
    last_failure: records.Failure | None = None
    claim_entry: Entry | None = None
    problems: tuple[str, ...] = ()


#: ``judge(trial, epoch, holder or None, claim entry) -> orphaned?``
Judge = Callable[[int, int, "str | None", Entry], bool]


def read_trial(
    store: Store,
    index: int,
    entries: Iterable[Entry] | None = None,
    *,
    judge: Judge,
    limits: LeaseLimits,
    forgiven: int = -1,
    validate_result: bool = False,
) -> TrialState:
    """The state of trial ``index``. ``entries``: its keys (from a listing of ``trials/`` or of
    its own folder); listed here when None. ``forgiven``: the highest epoch whose failure a
    ``retry`` record forgave. ``validate_result``: decode ``result.msgpack`` (``status`` does;
    claimers only need to know that one exists).

    Order: a result -> done (a corrupt one -> needs_repair, never absent); else the highest epoch
    e: ``failed.e`` -> retryable while failures < max_attempts (a "lost" failure is final), else
    failed; ``release.e`` -> released; ``claim.e`` -> orphaned if ``judge`` says so, else running.
    Corrupt records are reported with a :class:`~ablator.records.CorruptRecordWarning`.
    """
    if entries is None:
        entries = store.list(layout.trial_dir(index))
    prefix = layout.trial_dir(index)
    result_key = layout.result(index)
    claims: dict[int, Entry] = {}
    failed: set[int] = set()
    released: set[int] = set()
    result_entry: Entry | None = None
    for e in entries:
        if not e.key.startswith(prefix) or "/" in e.key[len(prefix) :]:
            continue  # metrics/, ckpt/, logs/ (or a stray key)
        if e.key == result_key:
            result_entry = e
            continue
        parsed = layout.parse_record(e.key[len(prefix) :])
        if parsed is None:
            continue
        kind, ep = parsed
        if kind == "claim":
            claims[ep] = e
        elif kind == "failed":
            failed.add(ep)
        elif kind == "release":
            released.add(ep)

    problems: list[str] = []
    top = max(claims) if claims else None
    n_failures = sum(1 for x in failed if x > forgiven and x in claims)
    takeovers = sum(
        1 for x in claims if x >= 1 and x - 1 > forgiven and (x - 1) not in failed and (x - 1) not in released
    )

    def state(status: TrialStatus, **kw: Any) -> TrialState:
        return TrialState(
            index=index, status=status, epoch=top, failures=n_failures, takeovers=takeovers, **kw
        )

    if result_entry is not None:
        if not validate_result:
            return state("done")
        data = store.get(result_key)
        res = None if data is None else records.try_decode(data, records.Result, result_key)
        if res is None:
            # Listed but unreadable or corrupt: never "absent" (that could make a second result).
            return state("needs_repair", problems=(result_key,))
        return state("done", result=res)

    if top is None:
        return state("pending")

    if top in failed:
        fkey = layout.failed(index, top)
        data = store.get(fkey)
        failure = None if data is None else records.try_decode(data, records.Failure, fkey)
        if failure is None:
            problems.append(fkey)
        if top <= forgiven:
            status: TrialStatus = "retryable"
        elif failure is not None and failure.kind == "lost":
            status = "failed"  # a trial that killed every holder: final until an operator retries it
        elif n_failures >= limits.max_attempts:
            status = "failed"
        else:
            status = "retryable"
        return state(status, last_failure=failure, problems=tuple(problems))

    if top in released:
        return state("released")

    ckey = layout.claim(index, top)
    data = store.get(ckey)
    claim = None if data is None else records.try_decode(data, records.Claim, ckey)
    holder = None
    if claim is None:
        problems.append(ckey)  # a corrupt claim: holder unknown, taken over after a lease
    else:
        holder = claim.agent_id
    orphaned = judge(index, top, holder, claims[top])
    return state(
        "orphaned" if orphaned else "running",
        holder=holder,
        claim_entry=claims[top],
        problems=tuple(problems),
    )


def read_budget(store: Store, base: int, cache: dict[str, int] | None = None) -> int:
    """``base`` plus every budget extension (``extend/<k>.msgpack``). ``cache`` (key -> trials)
    spares re-reading extensions already seen (they are create-once). A corrupt extension is
    reported and counted as 0."""
    cache = {} if cache is None else cache
    for e in store.list(layout.EXTEND_DIR):
        if e.key in cache:
            continue
        data = store.get(e.key)
        ext = None if data is None else records.try_decode(data, records.Extension, e.key)
        cache[e.key] = max(0, ext.trials) if ext is not None else 0
    return base + sum(cache.values())


def read_forgiven(store: Store, cache: dict[str, records.Retry | None] | None = None) -> dict[int, int]:
    """trial -> highest epoch whose failure an operator's ``retry`` forgave."""
    cache = {} if cache is None else cache
    for e in store.list(layout.RETRY_DIR):
        if e.key not in cache:
            data = store.get(e.key)
            cache[e.key] = None if data is None else records.try_decode(data, records.Retry, e.key)
    out: dict[int, int] = {}
    for rec in cache.values():
        if rec is None:
            continue
        for t, ep in rec.epochs.items():
            out[int(t)] = max(out.get(int(t), -1), int(ep))
    return out


def group_by_trial(entries: Iterable[Entry]) -> dict[int, list[Entry]]:
    """Entries of a recursive listing of ``trials/``, by trial index."""
    out: dict[int, list[Entry]] = {}
    for e in entries:
        t = layout.parse_trial(e.key)
        if t is not None:
            out.setdefault(t, []).append(e)
    return out


# --- a held trial ------------------------------------------------------------------------------


class Held:
    """A claimed (trial, epoch). Every write goes under its epoch, except the result, which is
    create-if-absent: whatever happens, at most one result exists.

    ``check()`` is the fence: call it before writing (at flush and checkpoint points). It raises
    :class:`~ablator.errors.LeaseLost` when this agent fenced itself (no renewal in time), when a
    later epoch was claimed (a takeover) or when a result exists. ``check(remote=False)`` only
    looks at the local flag (no store operation).
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
        self._membership._mark_lost(self.trial, self.epoch, reason)
        self._membership._drop(self.trial, self.epoch, released=False)
        self._closed = f"lost: {reason}"
        return LeaseLost(f"trial {self.trial} epoch {self.epoch}: {reason}")

    def check(self, *, remote: bool = True) -> None:
        """Raise LeaseLost unless this holder may still write for its trial."""
        if self._closed is not None:
            raise LeaseLost(f"trial {self.trial} epoch {self.epoch}: no longer held ({self._closed})")
        reason = self._membership._lost_reason(self.trial, self.epoch)
        if reason is not None:
            raise self._lose(reason)
        if remote:
            # Takeovers create epoch + 1 from the highest epoch, so epochs are consecutive: a
            # later holder exists iff claim.e<epoch + 1> does.
            if self._store.exists(layout.claim(self.trial, self.epoch + 1)):
                raise self._lose(f"taken over (claim.e{self.epoch + 1:04d} exists)")
            if self._store.exists(layout.result(self.trial)):
                raise self._lose("a result already exists")

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
        if not self._store.create(layout.attempt(self.trial, self.epoch), records.encode(rec)):
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
        self._store.create(layout.failed(self.trial, self.epoch), records.encode(rec))
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

    def finish(
        self,
        *,
        status: records.ResultStatus = "completed",
        metrics: Mapping[str, float] | None = None,
        best: Mapping[str, float] | None = None,
        best_step: int | None = None,
        steps: int = 0,
        duration_s: float = 0.0,
        message: str = "",
        lineage: Sequence[tuple[int, int | None]] | None = None,
    ) -> bool:
        """Create ``result.msgpack`` (durable, create-if-absent). True: this attempt's result is
        the trial's result. False: another result was there first (this one is discarded).
        Raises LeaseLost when this holder fenced itself (nothing is written then).

        ``lineage``: (epoch, resumed-from step) from the first attempt to this one; by default
        from the attempt records (no store read when this attempt started from scratch)."""
        self.check(remote=False)
        if lineage is None:
            lineage = self._lineage()
        rec = records.Result(
            trial=self.trial,
            epoch=self.epoch,
            agent_id=self.agent_id,
            status=status,
            metrics=dict(metrics or {}),
            best=dict(best or {}),
            best_step=best_step,
            steps=steps,
            duration_s=duration_s,
            lineage=list(lineage),
            message=message,
        )
        won = self._store.create(layout.result(self.trial), records.encode(rec), durable=True)
        self._close("finished" if won else "lost: another result exists", released=False)
        return won

    def _lineage(self) -> list[tuple[int, int | None]]:
        if self._resumed_from is None and self.epoch == 0:
            return [(0, None)]
        from ablator import lineage

        segs = lineage.segments(self._store, self.trial, self.epoch)
        out: list[tuple[int, int | None]] = [(segs[0][0], None)]
        for k in range(1, len(segs)):
            out.append((segs[k][0], segs[k - 1][1]))
        return out

    def _close(self, how: str, *, released: bool) -> None:
        self._closed = how
        self._membership._drop(self.trial, self.epoch, released=released)
        self._claimer._closed(self.trial, how)


# --- the claimer -------------------------------------------------------------------------------

NewSpec = Callable[[int], records.TrialSpec]
CanRun = Callable[[records.TrialSpec], bool]


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
        # Where a stat is cheap (local disk, NFS, memory) a sweep asks each unknown trial for
        # its result first (a few microseconds); on an object store one listing of trials/
        # (a request per 1000 keys) beats a request per trial.
        try:
            self._cheap_stat = store.capabilities().backend in ("posix", "memory")
        except Exception:
            self._cheap_stat = False
        self.stats = ClaimStats()
        self._lock = threading.RLock()
        self._ext: dict[str, int] = {}
        self._retry: dict[str, records.Retry | None] = {}
        self._forgiven: dict[int, int] = {}
        self._budget = budget
        self._budget_read = False
        # the walk over new indexes
        self._cursor: int | None = None
        self._max_seen = -1
        self._taken_blocks: set[int] = set()  # blocks (index // block) known to be claimed
        self._exhausted = False
        self._shard = self.rng.randrange(FRONTIER_SHARDS)
        self._since_hint = 0
        self._hint_written = -1
        self._last_hint_time = -math.inf
        # what we know about trials
        self._terminal: set[int] = set()
        self._ready: dict[int, _Ready] = {}
        self._check_at: dict[int, float] = {}
        self._free: list[int] = []  # sorted
        self._free_pos = 0
        self._tails: set[int] = set()  # free block tails seen by the last sweep
        self._declined: set[int] = set()
        self._specs: dict[int, records.TrialSpec] = {}
        self._hinted: set[tuple[int, int]] = set()
        self._exited: set[str] = set()
        self._prev_held: dict[str, frozenset[tuple[int, int]]] = {}
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
                    self._exhausted = False  # an extension: the walk goes on
                    self._all_terminal = False
                self._budget = new
                self._budget_read = True
            return self._budget

    def stop_requested(self, refresh: bool = False) -> bool:
        """The operator's stop record exists (seen by the heartbeat, or read now if ``refresh``)."""
        if self.membership.stop_requested:
            return True
        return refresh and self.store.exists(layout.STOP)

    def claim_next(self, new_spec: NewSpec, can_run: CanRun | None = None) -> Held | None:
        """Claim the next trial this agent should run, or None when there is nothing to claim
        now (all running elsewhere, done, stopped, or declined by ``can_run``).

        Fill order: released and orphaned trials, then retryable failed ones, then new indexes.
        ``new_spec(index)`` resolves a new trial (stored in ``claim.e0000``; takeovers read it
        back from there); ``can_run(spec)`` may decline a trial this agent cannot run (it stays
        for others). A trial past ``max_takeovers`` is failed as "lost" instead of returned.
        """
        with self._lock:
            if self.membership.stop_requested or self.membership.state != "running":
                return None
            self._maybe_scan()
            held = self._claim_ready(new_spec, can_run)
            if held is None:
                held = self._claim_free(new_spec, can_run)
            if held is None and not self._exhausted:
                held = self._claim_new(new_spec, can_run)
            if held is None and self._sweep_due():
                self._sweep()
                held = self._claim_ready(new_spec, can_run) or self._claim_free(new_spec, can_run)
            return held

    def claim(self, index: int, new_spec: NewSpec, can_run: CanRun | None = None) -> Held | None:
        """Claim trial ``index`` if it is new or takeable (``ablator run --trial N``); None when it
        is running elsewhere, done or failed."""
        with self._lock:
            st = self.state(index)
            if st.status == "pending":
                return self._create_new(index, new_spec, can_run)
            if st.status in TAKEABLE or st.status == "retryable":
                return self._take(st, new_spec, can_run)
            return None

    def state(self, index: int) -> TrialState:
        """Trial ``index``'s state now (lists its folder, reads what it must)."""
        with self._lock:
            forgiven = read_forgiven(self.store, self._retry)
            return read_trial(
                self.store, index, judge=self._judge, limits=self.limits, forgiven=forgiven.get(index, -1)
            )

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
            elif how in ("failed", "released"):
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
        return self.liveness.claim_orphaned(trial, epoch, holder)

    def _refresh_agent(self, agent_id: str) -> None:
        # A verdict must rest on a read younger than the holder's fence margin (2 x heartbeat):
        # otherwise we could miss a renewal that kept its trials alive. Half an interval is safe.
        v = self.liveness.agents.get(agent_id)
        hb_s = min(
            v.heartbeat_s if v is not None else self.limits.heartbeat_seconds, self.limits.heartbeat_seconds
        )
        if self.liveness.needs_read(agent_id, hb_s / 2):
            key = layout.agent(agent_id)
            data = self.store.get(key)
            self.liveness.observe(
                agent_id, None if data is None else records.try_decode(data, records.Heartbeat, key)
            )

    def _maybe_scan(self) -> None:
        """Read every agent's heartbeat (at most once per heartbeat interval): starts liveness
        timers, counts live agents, and turns dead agents' held lists and everyone's release
        hints into trials to check -- the fast path to takeable trials."""
        now = self.clock()
        if now - self._last_scan < self.limits.heartbeat_seconds:
            return
        self._last_scan = now
        live = 1
        for e in self.store.list(layout.AGENTS_DIR):
            agent_id = layout.parse_agent(e.key)
            if agent_id is None or agent_id == self.membership.agent_id or agent_id in self._exited:
                continue
            data = self.store.get(e.key)
            hb = None if data is None else records.try_decode(data, records.Heartbeat, e.key)
            self.liveness.observe(agent_id, hb)
            if hb is None:
                continue
            for t, ep in hb.released:
                if (t, ep) not in self._hinted:
                    self._hinted.add((t, ep))
                    self._check_at.setdefault(t, now)
            # A trial that left a live agent's held list finished, failed or was released:
            # look at it now. (Running trials held and listed by live agents are otherwise not
            # re-read: the heartbeats say all there is to say about them.)
            held_now = frozenset((int(t), int(ep)) for t, ep in hb.held)
            for t, _ in self._prev_held.get(agent_id, frozenset()) - held_now:
                if t not in self._terminal:
                    self._check_at[t] = now
            self._prev_held[agent_id] = held_now
            dead = self.liveness.is_dead(agent_id)
            if dead:
                for t, ep in hb.held:
                    if (t, ep) not in self._hinted:
                        self._hinted.add((t, ep))
                        self._check_at.setdefault(t, now)
                if hb.state == "exited":
                    self._exited.add(agent_id)  # its last word: no need to read it again
            else:
                live += 1
        self._n_live = live

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
        elif st.status == "pending" and i < self._budget and i not in self._declined and i not in self._free:
            bisect.insort(self._free, i)

    def _claim_ready(self, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
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
            key = layout.claim(i, ep)
            data = self.store.get(key)
            c = None if data is None else records.try_decode(data, records.Claim, key)
            if c is not None and c.spec is not None:
                self._specs[i] = c.spec
                return c.spec, False
        return new_spec(i), True

    def _take(self, st: TrialState, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        """Takeover of a released, orphaned or retryable trial: create ``claim.e<epoch + 1>``;
        exactly one agent wins."""
        assert st.epoch is not None
        i, e = st.index, st.epoch + 1
        spec, embed = self._spec_for(st, new_spec)
        if can_run is not None and not can_run(spec):
            return None
        lost = st.status == "orphaned" and st.takeovers >= self.limits.max_takeovers
        claim = records.Claim(
            trial=i,
            epoch=e,
            agent_id=self.membership.agent_id,
            host=self.membership.host,
            spec=spec if embed else None,
        )
        if not lost:
            self.membership._hold(i, e, self.clock())  # listed before the claim exists: never unlisted
        if not self.store.create(layout.claim(i, e), records.encode(claim)):
            if not lost:
                self.membership._drop(i, e, released=False)
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
            self.store.create(layout.failed(i, e), records.encode(rec))
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
    def _create_new(self, i: int, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        if i in self._specs:
            # Claimed already, by this agent (a stale entry of the free list, or the cursor met
            # it): trying again would _hold and then _drop a pair we may still be running,
            # unlisting it from our heartbeat until an observer takes it over.
            return None
        spec = new_spec(i)
        if can_run is not None and not can_run(spec):
            self._declined.add(i)
            return None
        claim = records.Claim(
            trial=i, epoch=0, agent_id=self.membership.agent_id, host=self.membership.host, spec=spec
        )
        # Hold first, create second: the heartbeat may list the pair before the claim exists
        # (harmless), never after it existed unlisted for longer than it must.
        self.membership._hold(i, 0, self.clock())
        won = self.store.create(layout.claim(i, 0), records.encode(claim))
        self._max_seen = max(self._max_seen, i)
        self._taken_blocks.add(i // self.block)  # ours or somebody else's: not a landing place
        if not won:
            self.membership._drop(i, 0, released=False)
            self.stats.lost_races += 1
            return None
        self.stats.new += 1
        self._specs[i] = spec
        self._maybe_write_hint()
        return Held(self, i, 0, spec)

    def _claim_free(self, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        """Claim one of the free indexes the last sweep found. Agents that swept together hold
        the same list: each walks it in order from a random place and jumps elsewhere at random
        after a lost race (somebody is working there), so that they rarely meet. After a run of
        lost races the list is refreshed with one ``list_dirs``; after the first lost race each
        candidate is looked at (``exists``) before it is created."""
        lost_run = 0
        while self._free:
            if self._free_pos >= len(self._free):
                self._free_pos = 0
            i = self._free.pop(self._free_pos)
            if i in self._terminal or i in self._declined or i >= self._budget:
                continue
            held = None if lost_run and self._taken(i) else self._create_new(i, new_spec, can_run)
            if held is not None:
                return held
            if i in self._declined:
                continue
            lost_run += 1
            self.stats.extra["lost_in_gaps"] = self.stats.extra.get("lost_in_gaps", 0) + 1
            if lost_run >= 4:
                existing = {int(n) for n in self.store.list_dirs(layout.TRIALS_DIR) if n.isdigit()}
                self._free = [k for k in self._free if k not in existing]
                lost_run = 0
            self._free_pos = self.rng.randrange(len(self._free)) if self._free else 0
        return None

    def _taken(self, i: int) -> bool:
        """Whether new index ``i`` is already claimed (a look before a likely-lost create)."""
        if self.store.exists(layout.claim(i, 0)):
            self._max_seen = max(self._max_seen, i)
            self._taken_blocks.add(i // self.block)
            self.stats.lost_races += 1
            return True
        return False

    def _read_frontier(self) -> int:
        best = -1
        for s in range(FRONTIER_SHARDS):
            key = layout.frontier(s)
            data = self.store.get(key)
            hint = None if data is None else records.try_decode(data, records.FrontierHint, key)
            if hint is not None:
                best = max(best, hint.index)
        return best

    def _maybe_write_hint(self) -> None:
        self._since_hint += 1
        now = self.clock()
        if self._max_seen > self._hint_written and (
            self._since_hint >= FRONTIER_EVERY or now - self._last_hint_time >= self.limits.heartbeat_seconds
        ):
            try:
                self.store.replace(
                    layout.frontier(self._shard), records.encode(records.FrontierHint(index=self._max_seen))
                )
            except StoreError as exc:  # only a hint
                log.warning("frontier hint %s not written: %s", layout.frontier(self._shard), exc)
                return
            self._hint_written = self._max_seen
            self._since_hint = 0
            self._last_hint_time = now

    def _jump(self, after: int, budget: int) -> int | None:
        """A block head above ``after``: one of the next W blocks not known to be taken, at
        random (W grows with the number of live agents), so that agents spread over different
        blocks and fill the lowest free ones first; None when no such head is left below the
        budget."""
        b = self.block
        first = (after + 1 + b - 1) // b
        width = min(2 * self._n_live - 1, 64)
        heads: list[int] = []
        h = first
        # Skipping blocks this agent knows are taken costs no store operation; the bound keeps
        # a jump cheap even when it knows thousands of them.
        while h * b < budget and len(heads) < width and h - first < width + 4096:
            if h not in self._taken_blocks:
                heads.append(h * b)
            h += 1
        if not heads:
            # Only the rest of a block somebody else started, or blocks known to be taken: leave
            # them to their owners (and to the gap sweep) rather than lose a race at every index.
            return None
        return self.rng.choice(heads)

    def _claim_new(self, new_spec: NewSpec, can_run: CanRun | None) -> Held | None:
        """Walk new indexes in blocks. The cursor starts at a block head past the frontier hint
        (O(1) reads, however many trials exist) and walks up. At a block head it looks first (a
        stat is far cheaper than a lost create); a taken head or a lost race means somebody owns
        that stretch, so it jumps to a random block head above it not known to be taken. Most
        blocks cost one look, agents spread out as more join, low blocks fill first, and what
        is left at the end (blocks nobody walked into, trials others declined) is found by the
        gap sweep."""
        budget = self._budget if self._budget_read else self.budget()
        if self._cursor is None:
            start = self._jump(max(self._read_frontier(), self._max_seen), budget)
            if start is None:
                budget = self.budget()
                start = self._jump(max(self._max_seen, -1), budget)
            if start is None:
                self._exhausted = True
                return None
            self._cursor = start
        while True:
            i = self._cursor
            if i >= budget:
                budget = self.budget()
                if i >= budget:
                    self._cursor = self._jump(self._max_seen, budget) if self._max_seen + 1 < budget else None
                    if self._cursor is None:
                        self._exhausted = True
                        self._cursor = budget  # resume from here if the budget grows
                        return None
                    i = self._cursor
            if i in self._declined or i in self._terminal:
                self._cursor = i + 1
                continue
            # A block head is where other agents start: look before creating. A stat (or an S3
            # HEAD) costs far less than a lost create (temp file, link, read-back; or a PUT
            # answered 412 and a GET), and a free head costs one cheap stat per block.
            held = None if i % self.block == 0 and self._taken(i) else self._create_new(i, new_spec, can_run)
            if held is not None:
                self._cursor = i + 1
                return held
            if i in self._declined:
                self._cursor = i + 1
                continue
            where = "lost_at_head" if i % self.block == 0 else "lost_in_block"
            self.stats.extra[where] = self.stats.extra.get(where, 0) + 1
            nxt = self._jump(i, budget)
            if nxt is None:
                self._exhausted = True
                self._cursor = budget
                return None
            self._cursor = nxt

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
        existing = {int(n) for n in self.store.list_dirs(layout.TRIALS_DIR) if n.isdigit()}
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
        free = [i for i in range(budget) if i not in existing and i not in self._declined]
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


__all__ = [
    "DEFAULT_BLOCK",
    "FRONTIER_SHARDS",
    "TAKEABLE",
    "TERMINAL",
    "AgentView",
    "ClaimStats",
    "Claimer",
    "Held",
    "LeaseLimits",
    "Liveness",
    "Membership",
    "TrialState",
    "TrialStatus",
    "default_clock",
    "group_by_trial",
    "new_agent_id",
    "read_budget",
    "read_forgiven",
    "read_trial",
]
