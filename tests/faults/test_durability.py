"""Durability on local disks: what must survive a power loss is created with ``durable=True``
(fsynced before it is linked into place), metric chunks before the checkpoint that covers them;
and every record kind, read torn (cut short or empty, as a disk that lost the data of a linked
file leaves it), has its safe meaning."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, lineage, records
from ablator.lease import Claimer, LeaseLimits, Liveness, Membership, read_budget, read_trial
from ablator.lease.frontier import read_frontier
from ablator.records import CorruptRecordWarning
from ablator.space import load_space
from ablator.store.posix import PosixStore
from ablator.tpe import TpeDesign
from ablator.train.metrics import MetricWriter
from ablator.train.writer import StoreWriter
from tests.lease.helpers import FakeClock, spec

LIMITS = LeaseLimits(max_attempts=3, lease_seconds=30.0, heartbeat_seconds=5.0)


class DurableLog(PosixStore):
    """A local store that remembers, for each create, whether it was durable."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.durable: dict[str, bool] = {}

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self.durable[key] = durable
        return super().create(key, data, durable=durable)


def _torn(store: PosixStore, key: str, how: str) -> None:
    """Cut the record at ``key`` short (half its bytes), empty it, or make it 5 GiB long (a
    sparse file: a damaged or hostile store; read as torn, refused from its size), in place."""
    path = Path(store.root, *key.split("/"))
    if how == "huge":
        with open(path, "r+b") as f:
            f.truncate(5 * 1024**3)
        return
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "half" else b"")


def _agent(store: Any, clock: FakeClock, agent_id: str = "h-1-aaaa") -> tuple[Membership, Claimer]:
    m = Membership(store, LIMITS, clock=clock, host="h", agent_id=agent_id, versions={})
    return m, Claimer(store, m, budget=4)


class _Fence:
    should_stop = False

    def check(self) -> None:
        pass


# --- what is fsynced -----------------------------------------------------------------------------


def test_records_that_must_survive_are_created_durable(tmp_path: Path) -> None:
    store = DurableLog(str(tmp_path))
    clock = FakeClock()
    _, c = _agent(store, clock)
    held = c.claim_next(spec)
    assert held is not None and held.trial == 0
    held.attempt()
    held.fail("exception", "boom")
    again = c.claim_next(spec)  # the retry of trial 0 (retryable before new trials)
    assert again is not None and (again.trial, again.epoch) == (0, 1)
    again.attempt(resumed_from=None)
    assert again.finish(records.Outcome(status="completed", metrics={"score": 1.0}))
    writer = StoreWriter()
    rows = MetricWriter(store, 1, 0, writer, _Fence(), max_rows=2)
    for step in range(4):
        rows.add(step, {"loss": 1.0 / (step + 1)})
        if rows.due():
            rows.flush()
    rows.checkpointed(3)
    writer.drain()
    d = store.durable
    assert d[layout.claim(0, 0)] is True  # the resolved trial lives only here
    assert d[layout.attempt(0, 0)] is True and d[layout.attempt(0, 1)] is True  # the lineage
    assert d[layout.failed(0, 0)] is True  # its kind decides retryable vs final
    assert d[layout.result(0)] is True
    assert d[layout.claim(0, 1)] is False  # a takeover claim without a spec may be lost: harmless
    chunks = [k for k in d if k.startswith(layout.metrics_dir(1))]
    assert len(chunks) == 2 and all(d[k] for k in chunks)


def test_a_tpe_design_point_is_durable(tmp_path: Path) -> None:
    store = DurableLog(str(tmp_path))
    design = TpeDesign(store, load_space({"x": {"range": [0.0, 1.0]}}), metric="score", mode="max", seed=1)
    design.choose(0, 0)
    assert store.durable[layout.design_point(0)] is True


def test_tpe_journal_entries_are_durable(tmp_path: Path) -> None:
    store = DurableLog(str(tmp_path))
    design = TpeDesign(store, load_space({"x": {"range": [0.0, 1.0]}}), metric="score", mode="max", seed=1)
    design.claimed(0, 0, {"x": 0.25})
    design.published(0, 0, {"x": 0.25}, 1.0)
    design.claimed(1, 0, {"x": 0.75})
    design.ended(1, 0)
    entries = {k: v for k, v in store.durable.items() if k.startswith(layout.DESIGN_LOG_DIR)}
    assert sorted(entries) == [layout.design_event(i) for i in range(4)]
    assert all(entries.values())  # claimed, finished, claimed, ended: each fsynced


# --- torn records and their safe meaning ------------------------------------------------------------


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_claim_has_an_unknown_holder_and_its_trial_is_asked_for_again(
    tmp_path: Path, how: str
) -> None:
    store = PosixStore(str(tmp_path))
    clock = FakeClock()
    _, a = _agent(store, clock, "h-1-aaaa")
    held = a.claim_next(spec)
    assert held is not None and held.trial == 0
    _torn(store, layout.claim(0, 0), how)
    # Another agent: the claim's holder is unknown -> running until a lease after its first sight.
    _, b = _agent(store, clock, "h-2-bbbb")
    with pytest.warns(CorruptRecordWarning, match="claim.e0000"):
        st = b.state(0)
    assert st.status == "running" and st.holder is None and layout.claim(0, 0) in st.problems
    clock.advance(LIMITS.lease_seconds + 1)
    with pytest.warns(CorruptRecordWarning):
        st = b.state(0)
    assert st.status == "orphaned"
    asked: list[int] = []

    def new_spec(i: int) -> records.TrialSpec:
        asked.append(i)
        return spec(i)

    with pytest.warns(CorruptRecordWarning):
        taken = b.claim(0, new_spec)
    assert taken is not None and (taken.trial, taken.epoch) == (0, 1)
    assert asked == [0]  # the trial was resolved again ...
    claim1 = records.decode(store.read(layout.claim(0, 1)), records.Claim, "claim.e0001")
    assert claim1.spec == spec(0)  # ... and recorded in the takeover's claim, for analysis too


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_failure_still_counts_and_is_reported(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    clock = FakeClock()
    _, c = _agent(store, clock)
    held = c.claim_next(spec)
    assert held is not None
    held.fail("exception", "boom")
    _torn(store, layout.failed(0, 0), how)
    liveness = Liveness(LIMITS.lease_seconds, clock)
    with pytest.warns(CorruptRecordWarning, match="failed.e0000"):
        st = read_trial(store, 0, judge=lambda *a: liveness.claim_orphaned(a[0], a[1], a[2]), limits=LIMITS)
    assert st.status == "retryable" and st.failures == 1 and layout.failed(0, 0) in st.problems


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_release_still_releases(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    _, c = _agent(store, FakeClock())
    held = c.claim_next(spec)
    assert held is not None
    held.release("drain", step=3)
    _torn(store, layout.release(0, 0), how)
    st = read_trial(store, 0, judge=lambda *a: False, limits=LIMITS)
    assert st.status == "released"  # existence is all a release says to the protocol


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_result_needs_repair_and_is_never_absent(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    _, c = _agent(store, FakeClock())
    held = c.claim_next(spec)
    assert held is not None and held.finish(records.Outcome(status="completed", metrics={"score": 1.0}))
    _torn(store, layout.result(0), how)
    with pytest.warns(CorruptRecordWarning, match="result.msgpack"):
        st = read_trial(store, 0, judge=lambda *a: False, limits=LIMITS, validate_result=True)
    assert st.status == "needs_repair"
    assert read_trial(store, 0, judge=lambda *a: False, limits=LIMITS).status == "done"  # claimers: final


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_metric_chunk_is_skipped_and_the_rest_of_the_history_kept(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    writer = StoreWriter()
    rows = MetricWriter(store, 0, 0, writer, _Fence(), max_rows=2)
    for step in range(6):
        rows.add(step, {"loss": float(step)})
        if rows.due():
            rows.flush()
    rows.flush()
    writer.drain()
    _torn(store, layout.metrics(0, 0, 3), how)
    with pytest.warns(CorruptRecordWarning, match="e0000-s00000003"):
        got = [r.step for r in lineage.canonical_rows(store, 0, 0)]
    assert got == [0, 1, 4, 5]


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_attempt_cuts_the_lineage_there_without_raising(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    _, c = _agent(store, FakeClock())
    held = c.claim_next(spec)
    assert held is not None
    held.attempt()
    held.release("drain", step=1)
    again = c.claim_next(spec)
    assert again is not None and again.epoch == 1
    again.attempt(resumed_from=(0, 1))
    assert lineage.segments(store, 0, 1) == [(0, 1), (1, None)]
    _torn(store, layout.attempt(0, 1), how)
    with pytest.warns(CorruptRecordWarning, match="attempt.e0001"):
        assert lineage.segments(store, 0, 1) == [(1, None)]  # why attempts are fsynced


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_heartbeat_is_an_unknown_holder(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    clock = FakeClock()
    m, a = _agent(store, clock, "h-1-aaaa")
    m.beat()
    held = a.claim_next(spec)
    assert held is not None
    m.beat()
    _torn(store, layout.agent("h-1-aaaa"), how)
    _, b = _agent(store, clock, "h-2-bbbb")
    with pytest.warns(CorruptRecordWarning, match="agents/h-1-aaaa"):
        assert b.state(0).status == "running"  # not at once: a lease after the first sight
    clock.advance(LIMITS.lease_seconds + 1)
    with pytest.warns(CorruptRecordWarning):
        assert b.state(0).status == "orphaned"


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_torn_hints_and_extensions(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    store.replace(layout.frontier(0), records.encode(records.FrontierHint(index=40)))
    store.replace(layout.frontier(1), records.encode(records.FrontierHint(index=90)))
    _torn(store, layout.frontier(1), how)
    with pytest.warns(CorruptRecordWarning):
        assert read_frontier(store) == 40  # only a hint: the walk starts lower and looks
    store.create(layout.extension(0), records.encode(records.Extension(k=0, trials=5)), durable=True)
    store.create(layout.extension(1), records.encode(records.Extension(k=1, trials=7)), durable=True)
    _torn(store, layout.extension(1), how)
    with pytest.warns(CorruptRecordWarning, match="extend/0001"):
        assert read_budget(store, 10) == 15


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_design_point_does_not_stop_claims(tmp_path: Path, how: str) -> None:
    store = PosixStore(str(tmp_path))
    space = load_space({"x": {"range": [0.0, 1.0]}})
    TpeDesign(store, space, metric="score", mode="max", seed=1).choose(0, 0)
    _torn(store, layout.design_point(0), how)
    other = TpeDesign(store, space, metric="score", mode="max", seed=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        overrides, params = other.choose(1, 0)  # a repeat of point 0: no exception
    assert 0.0 <= overrides["x"] <= 1.0 and "x" in params
    assert any(issubclass(w.category, CorruptRecordWarning) for w in seen)


@pytest.mark.parametrize("how", ["half", "empty", "huge"])
def test_a_torn_tpe_journal_entry_is_skipped_and_the_entries_after_it_are_read(
    tmp_path: Path, how: str
) -> None:
    store = PosixStore(str(tmp_path))
    space = load_space({"x": {"range": [0.0, 1.0]}})
    writer = TpeDesign(store, space, metric="score", mode="max", seed=1)
    writer.claimed(0, 0, {"x": 0.25})  # seq 0
    writer.claimed(1, 0, {"x": 0.75})  # seq 1
    writer.published(0, 0, {"x": 0.25}, 1.0)  # seq 2: torn below
    writer.published(1, 0, {"x": 0.75}, 2.0)  # seq 3
    _torn(store, layout.design_event(2), how)
    reader = TpeDesign(store, space, metric="score", mode="max", seed=2)
    with pytest.warns(CorruptRecordWarning, match="00000002"):
        reader.refresh()
    # The torn entry costs the study that one observation; the journal is not cut there.
    assert reader.entries_read == 4
    assert reader.n_finished == 1 and reader.running == {0}
    finished = [t for t in reader.study.trials if t.state.name == "COMPLETE"]
    assert [t.value for t in finished] == [2.0]
    # A writer never overwrites the torn entry: the next one takes the next free number.
    reader.claimed(2, 0, {"x": 0.5})
    got = records.decode(store.read(layout.design_event(4)), records.DesignEvent, "design/log/4")
    assert (got.trial, got.kind) == (2, "claimed")
