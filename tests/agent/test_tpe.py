"""The tpe design without agent processes: points chosen once per point, pending points, the
cost of a claim, and that it learns."""

from __future__ import annotations

from typing import Any

from ablator import layout, records
from ablator.space import load_space
from ablator.store import Store, open_store
from ablator.tpe import TpeDesign, objective_value

SPACE = {
    "x": {"range": [0.0, 1.0]},
    "k": {"choice": ["a", "b", "c"]},
    "n": {"range": [1, 64], "log": True, "int": True},
}


class CountingStore:
    """A store wrapper that counts reads (get/read/exists)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return self.inner.get(key)

    def create(self, key: str, data: bytes, durable: bool = False) -> bool:
        return self.inner.create(key, data, durable=durable)


def _claim(store: Any, index: int, overrides: dict[str, Any], params: dict[str, Any]) -> None:
    spec = records.TrialSpec(
        index=index, config=dict(overrides), config_hash="h", seed=index, overrides=overrides, params=params
    )
    assert store.create(
        layout.claim(index, 0), records.encode(records.Claim(trial=index, epoch=0, agent_id="t", spec=spec))
    )


def _finish(store: Any, index: int, value: float) -> None:
    rec = records.Result(trial=index, epoch=0, agent_id="t", metrics={"score": value})
    assert store.create(layout.result(index), records.encode(rec))


def test_two_agents_share_points_and_learn() -> None:
    store = open_store("memory://tpe-two")
    space = load_space(SPACE)
    agents = [
        TpeDesign(store, space, metric="score", mode="max", seed=7, n_startup_trials=5) for _ in range(2)
    ]
    xs = []
    for i in range(40):
        design = agents[i % 2]
        # repeats = 2: trials 2p and 2p + 1 are one point, whichever agent claims them
        overrides, params = design.choose(i, i // 2)
        _claim(store, i, overrides, params)
        xs.append(overrides["x"])
        if i >= 3:  # results arrive with a lag: the newest claims are pending
            j = i - 3
            x = xs[j]
            _finish(store, j, -((x - 0.8) ** 2))
    for p in range(20):
        assert xs[2 * p] == xs[2 * p + 1]
        assert (
            records.decode(store.read(layout.design_point(p)), records.DesignPoint).overrides["x"]
            == xs[2 * p]
        )
    early = sum(abs(x - 0.8) for x in xs[:10]) / 10
    late = sum(abs(x - 0.8) for x in xs[-10:]) / 10
    assert late < early / 2


def test_claim_cost_does_not_grow_with_results() -> None:
    inner = open_store("memory://tpe-cost")
    store = CountingStore(inner)
    design = TpeDesign(store, load_space(SPACE), metric="score", mode="max", seed=1)  # type: ignore[arg-type]
    per_claim = []
    for i in range(80):
        before = store.reads
        overrides, params = design.choose(i, i)
        per_claim.append(store.reads - before)
        _claim(inner, i, overrides, params)
        if i >= 2:
            _finish(inner, i - 2, float(overrides["x"]))
    # Two trials are open at each claim; finished ones are never read again.
    assert max(per_claim[10:]) == max(per_claim[70:]) <= 8
    assert design.n_finished == 77


class LateStore(CountingStore):
    """Misses the first read of each design point: as if another agent created it just after."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.missed: set[str] = set()

    def get(self, key: str) -> bytes | None:
        if key.startswith(layout.DESIGN_POINTS_DIR) and key not in self.missed:
            self.missed.add(key)
            return None
        return super().get(key)


def test_lost_point_race_uses_the_winners_choice() -> None:
    inner = open_store("memory://tpe-race")
    space = load_space(SPACE)
    a = TpeDesign(inner, space, metric="score", mode="min", seed=1)
    b = TpeDesign(LateStore(inner), space, metric="score", mode="min", seed=2)  # type: ignore[arg-type]
    first = a.choose(0, 0)
    # b suggests its own point (it saw no record), loses the create, and takes a's choice; its
    # own suggestion is no longer pending in its study.
    assert b.choose(0, 0) == first
    assert [t.state.name for t in b.study.get_trials(deepcopy=False)] == ["FAIL"]


def test_objective_value() -> None:
    ok = records.Result(trial=0, epoch=0, agent_id="t", metrics={"score": 1.0}, best={"score": 2.0})
    assert objective_value(ok, "score") == 2.0
    diverged = records.Result(trial=0, epoch=0, agent_id="t", status="diverged", metrics={"score": 1.0})
    assert objective_value(diverged, "score") is None
    nan = records.Result(trial=0, epoch=0, agent_id="t", metrics={"score": float("nan")})
    assert objective_value(nan, "score") is None


def test_claim_cost_does_not_grow_with_failed_trials() -> None:
    """A trial that fails for good never gets a result; it must not be re-read at every claim."""
    inner = open_store("memory://tpe-cost-failures")
    store = CountingStore(inner)
    design = TpeDesign(store, load_space(SPACE), metric="score", mode="max", seed=1)  # type: ignore[arg-type]
    per_claim = []
    for i in range(400):
        before = store.reads
        overrides, params = design.choose(i, i)
        per_claim.append(store.reads - before)
        _claim(inner, i, overrides, params)
        if i >= 2 and (i - 2) % 5:  # every fifth trial never finishes
            _finish(inner, i - 2, float(overrides["x"]))
    early = sum(per_claim[100:150]) / 50
    late = sum(per_claim[350:400]) / 50
    # 80 never-finishing trials by the end: with re-reads at every claim `late` would be ~4x `early`.
    assert late <= early + 2.5, (early, late)
