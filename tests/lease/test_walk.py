"""Every claim ends: the walk over new indexes stops when all that is left below the budget is
final or declined (it used to jump between the same block heads forever), and an index one slot
declines stays claimable by the agent's other slots."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest

from ablator import layout, records
from ablator.lease import Claimer, LeaseLimits, Membership
from ablator.lease.frontier import Frontier
from ablator.store import memory as memory_backend
from ablator.store import open_store
from ablator.store.base import Store

from .helpers import FakeClock, spec

LIMITS = LeaseLimits(lease_seconds=30, heartbeat_seconds=5)


@pytest.fixture
def store() -> Iterator[Store]:
    name = f"walk-{uuid.uuid4().hex[:8]}"
    yield open_store(f"memory://{name}")
    memory_backend.clear(name)


def _agent(store: Store, budget: int) -> tuple[Membership, Claimer]:
    m = Membership(store, LIMITS, clock=FakeClock(), host="h")
    assert m.beat()
    return m, Claimer(store, m, budget=budget, poll_s=0.0)


def _small(s: records.TrialSpec) -> bool:
    return False  # a slot that can run nothing (e.g. too little GPU memory)


def test_a_walk_over_declined_indexes_ends(store: Store) -> None:
    _, c = _agent(store, budget=40)
    for _ in range(3):  # again and again, as the agent's loop asks
        assert c.claim_next(spec, _small, slot="small") is None
    assert store.list(layout.TRIALS_DIR) == []  # nothing was claimed
    assert not c.done()  # declined trials are somebody else's to run, not finished


def test_a_declined_index_is_declined_for_that_slot_only(store: Store) -> None:
    m, c = _agent(store, budget=3)
    assert c.claim_next(spec, _small, slot="small") is None
    got = []
    while (h := c.claim_next(spec, lambda s: True, slot="big")) is not None:
        got.append(h.trial)
        h.finish()
    assert sorted(got) == [0, 1, 2]
    assert c.done() and m.held() == []


def test_a_walk_over_known_final_indexes_ends(store: Store) -> None:
    """Everything below the budget is final as far as this agent knows (others finished or
    failed it) though it never saw those claims: the walk goes back once, then stops."""
    f = Frontier(
        store, block=4, hint_every_s=5.0, rng=random.Random(1), clock=FakeClock(), count=lambda _: None
    )
    created: list[int] = []

    def create(i: int) -> int | None:
        created.append(i)
        return None

    for _ in range(3):
        got = f.walk(40, lambda: 40, n_live=3, skip=set(range(40)), declined=set(), create=create)
        assert got is None and f.exhausted
    assert created == []
