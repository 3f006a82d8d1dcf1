"""Membership: this agent's identity (``host-pid-nonce``) and its heartbeat.

A heartbeat record (``agents/<id>.msgpack``) is replaced every ``heartbeat_seconds`` by a
background thread, listing the (trial, epoch) pairs held and the agent's lease. A holder that has
not managed to renew for ``lease_seconds - 2 * heartbeat_seconds`` on its own clock fences itself:
its trials raise :class:`~ablator.errors.LeaseLost` and it stops writing for them. See
docs/protocol.md "Heartbeats and fencing".
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ablator import layout, records
from ablator.errors import StoreError, StoreUnavailable
from ablator.lease import identity
from ablator.lease.limits import Clock, LeaseLimits, default_clock
from ablator.store.base import Store

log = logging.getLogger("ablator.lease")

#: Released/failed hints kept in the heartbeat.
RELEASED_HINTS = 64

_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_agent_id(host: str | None = None, pid: int | None = None) -> str:
    """``host-pid-nonce``: a new id at every start, so that an agent restarted on the same host (or
    a recycled pid) is a different agent and never keeps its predecessor's trials alive."""
    h = _HOST_UNSAFE.sub("_", host if host is not None else socket.gethostname()).strip("._-")[:48] or "host"
    return f"{h}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"


def _versions() -> dict[str, str]:
    # Imported here: ablator/__init__ imports the experiment schema, which takes its lease
    # defaults from this package.
    from ablator import __version__

    return {"ablator": __version__, "python": platform.python_version()}


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
        self._boot_id = identity.boot_id()
        self._pid_ns = identity.pid_namespace()
        self._start_ticks = identity.process_start(self.pid)
        self.gpus = list(gpus)
        self.slots = slots
        self.cpu_ok = cpu_ok
        self.versions = dict(versions) if versions is not None else _versions()
        self.on_fenced = on_fenced
        self.on_renewed = on_renewed
        self.clock = clock or default_clock()
        self.key = layout.agent(self.agent_id)
        self.releases_key = layout.agent_releases(self.agent_id)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._held: dict[tuple[int, int], _Hold] = {}
        self._released: deque[tuple[int, int]] = deque(maxlen=RELEASED_HINTS)
        self._n_released = 0  # releases so far; ``_n_hinted``: how many the hints key shows
        self._n_hinted = 0
        self._counter = 0
        self._state: Literal["running", "draining", "exited"] = "running"
        self._started = False
        self._closing = False
        self._last_beat_start = -math.inf
        self._next_beat = math.inf
        self._stop_seen = False
        self._last_error: BaseException | None = None
        self._renewing = True
        # Failed heartbeat writes are retried every heartbeat/4: warn at the first failure, then
        # once per lease with the count, and say when renewals work again (not ten lines a second).
        self._failed_beats = 0
        self._warned_at = -math.inf
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Write the first heartbeat (raising StoreError if the store refuses it: nothing may be
        claimed before the world can see us) and start the heartbeat thread."""
        if self._started:
            return
        if not self.beat():
            # A store that did not answer for now says so (the caller may wait and try again).
            cls = StoreUnavailable if isinstance(self._last_error, StoreUnavailable) else StoreError
            raise cls(
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
    def renewing(self) -> bool:
        """Whether the last heartbeat write succeeded. While it fails, nothing new may be
        claimed: a claim the world cannot see renewed would be fenced, then taken over."""
        return self._renewing

    @property
    def state(self) -> str:
        return self._state

    def held(self) -> list[tuple[int, int]]:
        """The (trial, epoch) pairs held and not fenced."""
        with self._lock:
            return sorted(k for k, h in self._held.items() if h.lost is None)

    # -- holds (the claimer's and Held's side of the heartbeat) -------------------------------
    def hold(self, trial: int, epoch: int, since: float) -> None:
        """List (trial, epoch) as held from ``since`` (this clock), before its claim is created:
        the heartbeat may list a pair whose claim does not exist yet (harmless), never the other
        way round for longer than it must."""
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

    def drop(self, trial: int, epoch: int, *, released: bool) -> None:
        """Stop listing (trial, epoch). ``released``: it was released or failed on purpose; the
        heartbeat then names it as a hint so that other agents look at it at once."""
        with self._cond:
            self._held.pop((trial, epoch), None)
            if released:
                self._released.append((trial, epoch))
                self._n_released += 1
                # Beat now: the heartbeat and the hints key say so within one of the others'
                # scans, not a heartbeat interval later.
                if self._started and not self._closing:
                    self._next_beat = min(self._next_beat, self.clock())
                    self._cond.notify_all()

    def lost_reason(self, trial: int, epoch: int) -> str | None:
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

    def mark_lost(self, trial: int, epoch: int, reason: str) -> None:
        """Fence (trial, epoch) for ``reason`` (a takeover or a result was seen): sticky."""
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
            released = list(self._released)
            n_released = self._n_released
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
                released=released,
                boot_id=self._boot_id,
                pid_ns=self._pid_ns,
                start_ticks=self._start_ticks,
            )
        if fenced:
            self._notify_fenced(fenced)
        try:
            self.store.replace(self.key, records.encode(hb))
        except Exception as exc:  # any failure: keep trying; fencing protects the trials
            self._last_error = exc
            self._renewing = False
            self._failed_beats += 1
            now = self.clock()
            if self._failed_beats == 1 or now - self._warned_at >= self.limits.lease_seconds:
                self._warned_at = now
                log.warning(
                    "agent %s: heartbeat to %s failed (%d in a row): %s",
                    self.agent_id,
                    self.store.url,
                    self._failed_beats,
                    exc,
                )
            return False
        end = self.clock()
        self._renewing = True
        if self._failed_beats:
            log.warning(
                "agent %s: heartbeat to %s written again after %d failed writes",
                self.agent_id,
                self.store.url,
                self._failed_beats,
            )
            self._failed_beats = 0
            self._warned_at = -math.inf
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
        if fenced:
            self._notify_fenced(fenced)
        if n_released != self._n_hinted:
            self._write_hints(released, n_released)
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

    def _write_hints(self, released: list[tuple[int, int]], n_released: int) -> None:
        """Replace ``agents/released/<id>.msgpack`` with the pairs the heartbeat just written
        names as released. After the heartbeat, never before: an observer that lists the new
        hints entry and then reads the heartbeat body finds the same pairs there. A failed write
        is tried again at the next beat (the heartbeat's own list still carries the hints)."""
        rec = records.ReleaseHints(agent_id=self.agent_id, released=released)
        try:
            self.store.replace(self.releases_key, records.encode(rec))
        except Exception as exc:
            log.warning("agent %s: release hints to %s failed: %s", self.agent_id, self.store.url, exc)
            return
        self._n_hinted = n_released

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
