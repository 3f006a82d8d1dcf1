"""The tpe design: mostly without agent processes, several ``TpeDesign`` objects (one per agent) over one
store, driven the way the agent loop drives them. What a suggestion sees (every result in the
store, exactly the running trials as pending, its own finished trial as finished), the start-up
count across agents, points chosen once per point, and the cost of a suggestion."""

from __future__ import annotations

from typing import Any

import pytest

from ablator import layout, records
from ablator.space import load_space
from ablator.store import Store, open_store
from ablator.tpe import TpeDesign, objective_value, outcome_value

from .conftest import experiment, launch_toy, results

SPACE = {
    "x": {"range": [0.0, 1.0]},
    "k": {"choice": ["a", "b", "c"]},
    "n": {"range": [1, 64], "log": True, "int": True},
}


class CountingStore:
    """A store wrapper that counts reads (get)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return self.inner.get(key)

    def create(self, key: str, data: bytes, durable: bool = False) -> bool:
        return self.inner.create(key, data, durable=durable)


def design(store: Any, seed: int = 7, **kw: Any) -> TpeDesign:
    return TpeDesign(store, load_space(SPACE), metric="score", mode="max", seed=seed, **kw)


def claim(d: TpeDesign, index: int, point: int | None = None) -> dict[str, Any]:
    """What the agent loop does for a new trial: choose, win the claim, journal it."""
    overrides, params = d.choose(index, index if point is None else point)
    d.claimed(index, 0, params)
    return {"overrides": overrides, "params": params}


def finish(d: TpeDesign, index: int, trial: dict[str, Any], value: float | None) -> None:
    """The worker reported; the agent learns, writes the result, journals it."""
    d.finished(index, value)
    d.published(index, 0, trial["params"], value)


def pending(d: TpeDesign) -> list[dict[str, Any]]:
    return [t.params for t in d.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]


def told(d: TpeDesign) -> list[float]:
    return sorted(t.value for t in d.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")


def test_a_suggestion_sees_every_result_and_exactly_the_running_trials() -> None:
    store = open_store("memory://tpe-view")
    a, b = design(store, seed=1), design(store, seed=2)
    # a walks a block far above b's: trials 100.. (the old sampler only read indexes below its own)
    ta = {i: claim(a, i) for i in (100, 101, 102)}
    tb = {i: claim(b, i) for i in (0, 1)}
    finish(a, 100, ta[100], 0.5)
    finish(a, 101, ta[101], 0.25)
    a.ended(102, 0)  # failed: no longer running, no value
    finish(b, 0, tb[0], 0.75)
    # b's next suggestion: all three results, and only its own running trial 1 as pending
    b.choose(2, 2)
    assert told(b) == [0.25, 0.5, 0.75]
    assert b.running == {1}
    assert [p for p in pending(b) if p != tb[1]["params"]] == [b.study.get_trials()[-1].params]
    # a sees b's result and b's running trials (1, and the new 2 once claimed)
    b.claimed(2, 0, b._points[2][1])
    a.choose(103, 103)
    assert told(a) == [0.25, 0.5, 0.75] and a.running == {1, 2}


def test_the_own_finished_trial_is_not_pending_at_the_next_suggestion() -> None:
    store = open_store("memory://tpe-own")
    a = design(store, n_startup_trials=2)
    t0 = claim(a, 0)
    a.finished(0, 0.5)  # the worker's report: known before the result is even written
    a.choose(1, 1)
    assert told(a) == [0.5] and a.running == set()
    running = [t for t in a.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    assert len(running) == 1  # only the suggestion being made
    a.published(0, 0, t0["params"], 0.5)
    assert told(a) == [0.5]  # reading its own journal entry back changes nothing


def test_a_takeover_keeps_the_trial_running_whatever_the_order_of_entries() -> None:
    store = open_store("memory://tpe-takeover")
    a, b, c = design(store), design(store), design(store)
    t = claim(a, 0)
    b.claimed(0, 1, t["params"])  # b took trial 0 over (a was presumed dead)...
    a.ended(0, 0)  # ...and a's end of epoch 0 is journaled after b's claim
    c.refresh()
    assert c.running == {0}
    b.finished(0, 0.9)
    b.published(0, 1, t["params"], 0.9)
    c.refresh()
    assert c.running == set() and told(c) == [0.9]


def test_start_up_counts_the_trials_of_every_agent() -> None:
    """Four agents claim in turn; results arrive a round later. Optuna alone counts only finished
    trials, so each agent would keep drawing at random past the first 10 of the experiment."""
    store = open_store("memory://tpe-startup")
    agents = [design(store, seed=s, n_startup_trials=10) for s in range(4)]
    open_: dict[int, tuple[int, dict[str, Any]]] = {}
    for i in range(40):
        d = agents[i % 4]
        if i - 4 in open_:  # this agent's previous trial finished
            j = i - 4
            _, tr = open_.pop(j)
            finish(d, j, tr, -((tr["overrides"]["x"] - 0.3) ** 2))
        open_[i] = (i % 4, claim(d, i))
    assert sum(d.random_draws for d in agents) == 10


def test_two_agents_share_points_and_learn() -> None:
    store = open_store("memory://tpe-two")
    agents = [design(store, seed=7, n_startup_trials=5) for _ in range(2)]
    xs: list[float] = []
    trials: dict[int, dict[str, Any]] = {}
    for i in range(40):
        d = agents[i % 2]
        # repeats = 2: trials 2p and 2p + 1 are one point, whichever agent claims them
        trials[i] = claim(d, i, i // 2)
        xs.append(trials[i]["overrides"]["x"])
        if i >= 3:  # results arrive with a lag: the newest claims are pending
            j = i - 3
            finish(agents[j % 2], j, trials[j], -((xs[j] - 0.8) ** 2))
    for p in range(20):
        assert xs[2 * p] == xs[2 * p + 1]
        point = records.decode(store.read(layout.design_point(p)), records.DesignPoint)
        assert point.overrides["x"] == xs[2 * p]
    early = sum(abs(x - 0.8) for x in xs[:10]) / 10
    late = sum(abs(x - 0.8) for x in xs[-10:]) / 10
    assert late < early / 2


def test_the_cost_of_a_suggestion_grows_with_new_entries_not_with_the_experiment() -> None:
    inner = open_store("memory://tpe-cost")
    counting = CountingStore(inner)
    me = design(counting, seed=1)
    other = design(inner, seed=2)
    per_claim = []
    trials: dict[int, dict[str, Any]] = {}
    for i in range(300):
        if i % 2:  # another agent's trial: claimed, and an older one of its trials finishes or fails
            trials[i] = claim(other, i)
            if i >= 5:
                j = i - 4
                if j % 5 == 1:
                    other.ended(j, 0)  # fails for good: never a result
                else:
                    finish(other, j, trials[j], float(trials[j]["overrides"]["x"]))
            continue
        before = counting.reads
        trials[i] = claim(me, i)
        per_claim.append(counting.reads - before)
        if i >= 4:
            finish(me, i - 4, trials[i - 4], float(trials[i - 4]["overrides"]["x"]))
    # each suggestion reads the few entries written since the last one, its design point and
    # one missing entry; never more as the store fills up with results and failures
    assert max(per_claim[10:]) == max(per_claim[-10:]) <= 8
    # over the whole run: every journal entry read once, plus a few reads per suggestion
    assert sum(per_claim) <= len(inner.list(layout.DESIGN_LOG_DIR)) + 3 * len(per_claim)


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
    a = design(inner, seed=1)
    b = design(LateStore(inner), seed=2)
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
    assert outcome_value("pruned", {"score": 1.0}, {}, "score") is None


def test_a_pruned_trial_is_told_pruned() -> None:
    store = open_store("memory://tpe-pruned")
    a, b = design(store), design(store)
    t = claim(a, 0)
    a.finished(0, None, pruned=True)
    a.published(0, 0, t["params"], None, pruned=True)
    b.refresh()
    assert [tr.state.name for tr in b.study.get_trials(deepcopy=False)] == ["PRUNED"]
    b.choose(1, 1)  # TPE copes with a pruned trial that has no intermediate values


@pytest.mark.procs
def test_agents_journal_every_claim_and_result(local_store: str, agents: Any) -> None:
    """Two real agents on one tpe experiment: the journal is dense, and each trial appears as
    claimed, then finished once with its result's objective value."""
    exp = experiment(
        config={"steps": 2, "checkpoint_every": 2},
        design={"kind": "tpe", "trials": 8, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(local_store, exp)
    procs = [agents(local_store), agents(local_store)]
    assert [p.wait(240) for p in procs] == [0, 0], "\n".join(p.output() for p in procs)
    store = open_store(local_store)
    keys = [e.key for e in store.list(layout.DESIGN_LOG_DIR)]
    assert keys == [layout.design_event(k) for k in range(len(keys))]
    events = [records.decode(store.read(k), records.DesignEvent) for k in keys]
    res = results(store)
    assert sorted(res) == list(range(8))
    for i, r in res.items():
        mine = [e for e in events if e.trial == i]
        finished = [e for e in mine if e.kind == "finished"]
        assert len(finished) == 1 and finished[0].value == objective_value(r, "score")
        assert mine[0].kind == "claimed" and mine.index(finished[0]) > 0
        spec = records.decode(store.read(layout.claim(i, 0)), records.Claim).spec
        assert spec is not None and mine[0].params == spec.params
