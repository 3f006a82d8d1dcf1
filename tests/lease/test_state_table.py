"""One trial-state classifier, four readers: every combination of a trial's records (claims,
failures of each kind, releases, a result valid or corrupt, an operator's forgiveness) is fed to
the claimer, ``ablator status``, the operations (``retry --failed``, ``gc``) and analysis, and
all four must say what docs/protocol.md "Trial state" says."""

from __future__ import annotations

import itertools
import uuid
import warnings
from collections.abc import Iterator
from typing import Literal

import pytest

from ablator import layout, ops, records, status
from ablator.analysis import reader
from ablator.errors import AblatorError
from ablator.experiment import data_hash
from ablator.lease import TERMINAL, Claimer, LeaseLimits, Membership, TrialRecords, classify, read_forgiven
from ablator.store import memory as memory_backend
from ablator.store import open_store
from ablator.store.base import Store

from .helpers import FakeClock, spec

MAX_ATTEMPTS = 2
#: How an epoch ended: still open (claimed only), released, or failed with a kind (``corrupt``:
#: a failure record that does not decode).
Outcome = Literal["open", "released", "exception", "crashed", "lost", "corrupt"]
OUTCOMES: tuple[Outcome, ...] = ("open", "released", "exception", "crashed", "lost", "corrupt")
ResultKind = Literal["absent", "valid", "corrupt"]


def expected(epochs: tuple[Outcome, ...], result: ResultKind, forgiven: int) -> str:
    """docs/protocol.md "Trial state", spelled out independently of the classifier."""
    if result == "corrupt":
        return "needs_repair"
    if result == "valid":
        return "done"
    if not epochs:
        return "pending"
    top = len(epochs) - 1
    last = epochs[top]
    if last == "open":
        return "running"  # nobody here has watched the holder for a lease
    if last == "released":
        return "released"
    if top <= forgiven:
        return "retryable"  # an operator's retry --failed reopened it, whatever its kind
    if last == "lost":
        return "failed"
    counted = sum(1 for e, o in enumerate(epochs) if e > forgiven and o not in ("open", "released"))
    return "failed" if counted >= MAX_ATTEMPTS else "retryable"


CASES = [
    (epochs, result, forgiven)
    for n in (0, 1, 2)
    for epochs in itertools.product(OUTCOMES, repeat=n)
    # an open epoch below the top is a takeover; an open top is a running trial
    for result in ("absent", "valid", "corrupt")
    for forgiven in (-1, 0, 1)
    if forgiven < n and not (result != "absent" and n == 0)
]


@pytest.fixture
def store() -> Iterator[Store]:
    name = f"table-{uuid.uuid4().hex[:8]}"
    yield open_store(f"memory://{name}")
    memory_backend.clear(name)


def _write(
    store: Store, epochs: tuple[Outcome, ...], result: ResultKind, forgiven: int
) -> records.ExperimentSpec:
    data = {  # a launched experiment as experiment.json holds it (gc and retry check its hash)
        "name": "table",
        "entry": "tests.agent.toy:trial",
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": {"max_attempts": MAX_ATTEMPTS},
    }
    exp = records.ExperimentSpec(name="table", experiment=data, experiment_hash=data_hash(data), budget=1)
    assert store.create(layout.EXPERIMENT, records.encode_json(exp))
    for e, outcome in enumerate(epochs):
        claim = records.Claim(trial=0, epoch=e, agent_id="ghost-1-aaaa", spec=spec(0) if e == 0 else None)
        assert store.create(layout.claim(0, e), records.encode(claim))
        assert store.create(
            layout.attempt(0, e), records.encode(records.Attempt(trial=0, epoch=e, agent_id="ghost-1-aaaa"))
        )
        if outcome == "released":
            rec: records.Record = records.Release(trial=0, epoch=e, agent_id="ghost-1-aaaa")
            assert store.create(layout.release(0, e), records.encode(rec))
        elif outcome == "corrupt":
            assert store.create(layout.failed(0, e), b"\x93not a failure")
        elif outcome != "open":
            rec = records.Failure(trial=0, epoch=e, agent_id="ghost-1-aaaa", kind=outcome, message="boom")
            assert store.create(layout.failed(0, e), records.encode(rec))
    if result == "valid":
        res = records.Result(trial=0, epoch=len(epochs) - 1, agent_id="ghost-1-aaaa", metrics={"m": 1.0})
        assert store.create(layout.result(0), records.encode(res))
    elif result == "corrupt":
        assert store.create(layout.result(0), b"\x93not a result")
    if forgiven >= 0:
        retry = records.Retry(k=0, epochs={0: forgiven})
        assert store.create(layout.retry(0), records.encode(retry))
    return exp


def _claimer_says(store: Store) -> str:
    m = Membership(store, LeaseLimits(max_attempts=MAX_ATTEMPTS), clock=FakeClock(), host="h")
    return Claimer(store, m, budget=1).state(0).status


def _status_says(store: Store) -> str:
    counts = status.collect(store).counts
    (only,) = [name for name, n in counts.items() if n]
    assert counts[only] == 1
    return only


def _ops_say(store: Store, exp: records.ExperimentSpec) -> str:
    st = ops.trial_states(store, exp, [0])[0].status
    # gc runs exactly when every trial is terminal; it refuses otherwise.
    try:
        ops.gc(store, dry_run=True)
        gc_ran = True
    except AblatorError as exc:
        assert "is not done" in str(exc), exc
        gc_ran = False
    assert gc_ran == (st in TERMINAL), st
    return st


def _analysis_says(store: Store) -> str:
    ctx = reader.Context(max_attempts=MAX_ATTEMPTS, forgiven=read_forgiven(store))
    row = reader.read_trial(store, 0, ctx).row
    return "done" if row["status"] in reader.DONE_STATUSES else str(row["status"])


@pytest.mark.parametrize(("epochs", "result", "forgiven"), CASES, ids=str)
def test_every_reader_agrees_with_the_protocol(
    store: Store, epochs: tuple[Outcome, ...], result: ResultKind, forgiven: int
) -> None:
    exp = _write(store, epochs, result, forgiven)
    want = expected(epochs, result, forgiven)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", records.CorruptRecordWarning)  # the corrupt cases
        said = {
            "claimer": _claimer_says(store),
            "status": _status_says(store),
            "ops": _ops_say(store, exp),
            "analysis": _analysis_says(store),
        }
    assert said == dict.fromkeys(said, want), (epochs, result, forgiven)


def test_classifier_reports_the_failure_kind_as_a_value() -> None:
    lost = TrialRecords(claims=frozenset({0}), failures=frozenset({0}), top_failure="lost")
    v = classify(lost, max_attempts=3)
    assert (v.status, v.failure, v.failures) == ("failed", "lost", 1)
    # forgiven by retry --failed: retryable, and the kind is still reported
    v = classify(lost, max_attempts=3, forgiven=0)
    assert (v.status, v.failure, v.failures) == ("retryable", "lost", 0)
    crashed = TrialRecords(claims=frozenset({0, 1}), failures=frozenset({1}), top_failure="crashed")
    v = classify(crashed, max_attempts=3)
    assert (v.status, v.failure, v.takeovers) == ("retryable", "crashed", 1)
