"""The frontier walk: how an agent finds new trial indexes in O(1) store operations per claim,
however many trials exist (docs/protocol.md "Claiming new trials").

The cursor starts at a block head past the frontier hint (``frontier/<shard>.msgpack``, the
highest index some agent has seen claimed) and walks up. At a block head it looks first (a stat
is far cheaper than a lost create); a taken head or a lost race means somebody owns that stretch,
so it jumps to a random block head above it not known to be taken. Most blocks cost one look,
agents spread out as more join, low blocks fill first, and what is left at the end (blocks nobody
walked into, trials others declined) is found by the claimer's gap sweep.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Container
from typing import TypeVar

from ablator import layout, records
from ablator.errors import StoreError
from ablator.lease.limits import Clock
from ablator.store.base import Store

log = logging.getLogger("ablator.lease")

#: Number of frontier hint keys (``frontier/<shard>.msgpack``). Each agent replaces one, chosen
#: at random, so that the hint is not one hot key; a joining agent reads all of them (a constant).
FRONTIER_SHARDS = 4
#: Claim this many new wins between two frontier hint updates (or one heartbeat interval).
FRONTIER_EVERY = 64
#: Trials per block of the new-index walk.
DEFAULT_BLOCK = 16

T = TypeVar("T")


def read_frontier(store: Store) -> int:
    """The highest index any frontier hint names (-1 when there is none)."""
    best = -1
    for s in range(FRONTIER_SHARDS):
        key = layout.frontier(s)
        hint = records.read(store, key, records.FrontierHint)
        if hint is not None:
            best = max(best, hint.index)
    return best


class Frontier:
    """One agent's walk over new indexes: the cursor, what it knows to be claimed, and its share
    of the frontier hint. Not thread-safe (the claimer serialises calls).

    ``count(what)`` is told about each lost race (``"lost_races"``) and where it happened
    (``"lost_at_head"``, ``"lost_in_block"``), for the claimer's statistics.
    """

    def __init__(
        self,
        store: Store,
        *,
        block: int,
        hint_every_s: float,
        rng: random.Random,
        clock: Clock,
        count: Callable[[str], None],
    ) -> None:
        self.store = store
        self.block = max(1, block)
        self.hint_every_s = hint_every_s
        self.rng = rng
        self.clock = clock
        self.count = count
        self.cursor: int | None = None
        #: The highest index seen claimed (by anyone).
        self.max_seen = -1
        #: No new index is left below the budget as far as the walk knows (the gap sweep may
        #: still find some); cleared when the budget grows.
        self.exhausted = False
        self._taken_blocks: set[int] = set()  # blocks (index // block) known to be claimed
        self._shard = rng.randrange(FRONTIER_SHARDS)
        self._since_hint = 0
        self._hint_written = -1
        self._last_hint_time = -math.inf

    def saw_claimed(self, i: int) -> None:
        """Index ``i`` is claimed (ours or somebody else's): its block is not a landing place."""
        self.max_seen = max(self.max_seen, i)
        self._taken_blocks.add(i // self.block)

    def taken(self, i: int) -> bool:
        """Whether new index ``i`` is already claimed (a look before a likely-lost create)."""
        if self.store.exists(layout.claim(i, 0)):
            self.saw_claimed(i)
            self.count("lost_races")
            return True
        return False

    def won(self) -> None:
        """A new claim was won: update this agent's frontier hint now and then (never on every
        claim: the hint is only a starting point)."""
        self._since_hint += 1
        now = self.clock()
        if self.max_seen > self._hint_written and (
            self._since_hint >= FRONTIER_EVERY or now - self._last_hint_time >= self.hint_every_s
        ):
            key = layout.frontier(self._shard)
            try:
                self.store.replace(key, records.encode(records.FrontierHint(index=self.max_seen)))
            except StoreError as exc:  # only a hint
                log.warning("frontier hint %s not written: %s", key, exc)
                return
            self._hint_written = self.max_seen
            self._since_hint = 0
            self._last_hint_time = now

    def jump(self, after: int, budget: int, n_live: int) -> int | None:
        """A block head above ``after``: one of the next W blocks not known to be taken, at
        random (W grows with the number ``n_live`` of live agents), so that agents spread over
        different blocks and fill the lowest free ones first; None when no such head is left
        below the budget."""
        b = self.block
        first = (after + 1 + b - 1) // b
        width = min(2 * n_live - 1, 64)
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

    def walk(
        self,
        budget: int,
        refresh_budget: Callable[[], int],
        n_live: int,
        skip: Container[int],
        declined: Container[int],
        create: Callable[[int], T | None],
    ) -> T | None:
        """Walk to the next new index and claim it: ``create(i)`` tries (None: lost or declined).
        Returns what ``create`` returned for the index won, or None when the walk is exhausted (:attr:`exhausted` is then set).
        ``skip``: indexes known to be final; ``declined``: indexes this agent declined (both
        are stepped over without a store operation). ``refresh_budget()`` re-reads the budget
        when the cursor reaches it.

        Every walk ends: the cursor only moves up, except once per call, when it reaches the
        budget with indexes below it not seen claimed (it goes back to the lowest block heads
        not known to be taken). Reaching the budget again means that everything left below it is
        final or declined by this caller: the walk is exhausted, and the claimer's gap sweep
        finds whatever others left."""
        wrapped = False
        if self.cursor is None:
            start = self.jump(max(read_frontier(self.store), self.max_seen), budget, n_live)
            if start is None:
                budget = refresh_budget()
                start = self.jump(max(self.max_seen, -1), budget, n_live)
            if start is None:
                self.exhausted = True
                return None
            self.cursor = start
        while True:
            i = self.cursor
            if i >= budget:
                budget = refresh_budget()
                if i >= budget:
                    back = not wrapped and self.max_seen + 1 < budget
                    wrapped = True
                    self.cursor = self.jump(self.max_seen, budget, n_live) if back else None
                    if self.cursor is None:
                        self.exhausted = True
                        self.cursor = budget  # resume from here if the budget grows
                        return None
                    i = self.cursor
            if i in declined or i in skip:
                self.cursor = i + 1
                continue
            # A block head is where other agents start: look before creating. A stat (or an S3
            # HEAD) costs far less than a lost create (temp file, link, read-back; or a PUT
            # answered 412 and a GET), and a free head costs one cheap stat per block.
            won = None if i % self.block == 0 and self.taken(i) else create(i)
            if won is not None:
                self.cursor = i + 1
                return won
            if i in declined:
                self.cursor = i + 1
                continue
            self.count("lost_at_head" if i % self.block == 0 else "lost_in_block")
            nxt = self.jump(i, budget, n_live)
            if nxt is None:
                self.exhausted = True
                self.cursor = budget
                return None
            self.cursor = nxt
