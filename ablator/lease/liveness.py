"""Liveness: an observer's judgement of other agents, on the observer's own monotonic clock only.

A holder is dead when the (agent, counter) value it last saw has not changed for the holder's
declared lease since its first sight (or since the value was written, where the caller aged the
write on the store's clock: ``since``). Wall clocks are never compared. See docs/protocol.md
"Who is alive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ablator import records
from ablator.lease.limits import Clock, default_clock

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
    body_read_at: float = -math.inf  # last time the body itself was read (not only its listing)
    gone: bool = False  # known dead for certain (its process is gone from this very machine)


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
        self._claims: dict[tuple[int, int], float] = {}  # (trial, epoch) -> first sight of the claim

    def observe(self, agent_id: str, hb: records.Heartbeat | None, *, since: float | None = None) -> None:
        """Record a read of ``agent_id``'s heartbeat (None: absent or corrupt). ``since``: the
        body has been there since then at least, on this clock (its listing entry was first
        seen then), so a new counter value is timed from it rather than from now."""
        now = self.clock()
        if hb is None:
            self.agents.pop(agent_id, None)
            self._missing[agent_id] = now
            return
        self._missing.pop(agent_id, None)
        prev = self.agents.get(agent_id)
        if prev is not None and prev.counter == hb.counter:
            first = prev.first_seen
        elif prev is not None and since is not None:
            # Never later than now, never earlier than the last sign of life we timed.
            first = min(now, max(since, prev.first_seen))
        elif since is not None:
            first = min(now, since)  # a first sight, aged on the store's clock
        else:
            first = now
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
            body_read_at=now,
            gone=prev.gone if prev is not None and prev.counter == hb.counter else False,
        )

    def renewed(self, agent_id: str, *, since: float | None = None) -> bool:
        """Record that ``agent_id``'s heartbeat changed since the last look (its listing entry
        did: a renewal, whose body was not read): a new counter value, first seen now -- or
        ``since`` (this clock), when the write's age is known on the store's clock; never
        earlier than the last sign of life already timed. False when there is no earlier read
        to update."""
        v = self.agents.get(agent_id)
        if v is None:
            return False
        now = self.clock()
        v.first_seen = now if since is None else min(now, max(since, v.first_seen))
        v.read_at = now
        return True

    def unchanged(self, agent_id: str) -> bool:
        """Record that ``agent_id``'s heartbeat is known to be the body last read (its listing
        entry did not change): as good as reading the same counter again. False when there is
        no valid earlier read to stand for."""
        v = self.agents.get(agent_id)
        if v is None:
            return False
        v.read_at = self.clock()
        return True

    def needs_read(self, agent_id: str, max_age: float) -> bool:
        """True when the last read of ``agent_id`` is older than ``max_age`` (or there is none)."""
        v = self.agents.get(agent_id)
        last = v.read_at if v is not None else self._missing.get(agent_id)
        return last is None or self.clock() - last > max_age

    def mark_gone(self, agent_id: str) -> None:
        """``agent_id``'s process is known to be gone (same machine, its pid and start time no
        longer exist): dead at once, its claims takeable at once."""
        v = self.agents.get(agent_id)
        if v is not None:
            v.gone = True

    def is_dead(self, agent_id: str) -> bool | None:
        """True: dead or exited; False: alive; None: never seen (or no valid heartbeat)."""
        v = self.agents.get(agent_id)
        if v is None:
            return None
        return v.state == "exited" or v.gone or self.clock() - v.first_seen >= v.lease_s

    def claim_orphaned(self, trial: int, epoch: int, holder: str | None, since: float | None = None) -> bool:
        """Whether the claim (trial, epoch) by ``holder`` (None: unknown) may be taken over.
        ``since``: when the claim was made, on this clock, if known (its age on the store's
        clock); else it is timed from this first sight.

        A claim is timed by itself too: short of an exited or gone holder, it is never taken
        within a lease of its own making, whatever its holder's heartbeat says (a holder whose
        heartbeats fail while its claims succeed fences each claim a lease - 2 heartbeats after
        making it)."""
        now = self.clock()
        key = (trial, epoch)
        first_claim = self._claims.setdefault(key, now if since is None else min(now, since))
        v = self.agents.get(holder) if holder is not None else None
        lease = v.lease_s if v is not None else self.default_lease_s
        claim_old = now - first_claim >= lease
        if v is None:
            return claim_old  # holder unknown: the claim's own age decides
        if v.state == "exited" or v.gone:
            return True  # it holds nothing (an exited agent fenced everything; a gone one is gone)
        if now - v.first_seen >= v.lease_s:
            return claim_old
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
        for d in (self._unlisted, self._claims):
            for k in [k for k in d if k[0] == trial]:
                del d[k]
