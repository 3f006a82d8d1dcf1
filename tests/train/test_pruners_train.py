"""Pruning inside one trial, both styles: the wrapper loop decides at evaluations, a trial
function at ``ctx.report``; a pruned trial is a result (status ``pruned``), and an attempt that
resumes a trial keeps the decisions its rung records hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trainlib as T
from testkit import put_claim

from ablator import layout, records
from ablator.entrypoint import EntryPoint
from ablator.pruners import Asha, Median, PrunerConfig
from ablator.store import open_store
from ablator.store.base import Store
from ablator.train import NoFence, Outcome, execute_trial

METRIC = ("val_accuracy", "max")


@pytest.fixture
def store() -> Iterator[Store]:
    yield open_store(f"memory://prune-train-{uuid.uuid4().hex}")


def run(
    store: Store,
    spec: records.TrialSpec,
    pruner: PrunerConfig,
    epoch: int = 0,
    obj: Any = None,
    kind: str = "wrapper",
) -> Outcome:
    put_claim(store, spec.index, epoch, spec=spec)
    default = T.TinyWrapper if kind == "wrapper" else T.tiny_trial
    entry = EntryPoint(kind=kind, obj=obj if obj is not None else default, config_type=T.TinyConfig)  # type: ignore[arg-type]
    return execute_trial(
        entry,
        spec,
        store,
        spec.index,
        epoch,
        fence=NoFence(),
        device="cpu",
        metric=METRIC,
        progress=False,
        pruner=pruner,
    )


def record_rung(store: Store, rung: int, trial: int, value: float) -> None:
    rec = records.RungValue(trial=trial, rung=rung, step=4 * 3**rung, value=value, promoted=True)
    assert store.create(layout.rung(rung, trial), records.encode(rec))


def rung_record(store: Store, rung: int, trial: int) -> records.RungValue | None:
    data = store.get(layout.rung(rung, trial))
    return None if data is None else records.decode(data, records.RungValue)


@pytest.mark.parametrize("kind", ["wrapper", "function"])
def test_a_trial_behind_the_others_at_a_rung_ends_pruned(store: Store, kind: str) -> None:
    for t in (1, 2, 3):  # three other trials recorded perfect accuracy at rung 0 (step 4)
        record_rung(store, 0, t, 1.0)
    cfg = T.tiny_config(batch_size=8, epochs=4, eval_every=4, optimizer={"lr": 0.05})
    out = run(store, T.spec_for(cfg), Asha(min_steps=4, reduction_factor=3), kind=kind)
    assert out.status == "pruned"
    assert out.steps == 4 and "rung 0 (step 4)" in out.message and "top 1/3" in out.message
    assert "val_accuracy" in out.metrics  # the last value is kept
    mine = rung_record(store, 0, 0)
    assert mine is not None and not mine.promoted and mine.step == 4
    assert mine.value == out.metrics["val_accuracy"]
    assert rung_record(store, 1, 0) is None  # it never got further


@pytest.mark.parametrize("kind", ["wrapper", "function"])
def test_a_trial_ahead_of_the_others_is_promoted_at_every_rung(store: Store, kind: str) -> None:
    for t in (1, 2, 3):
        record_rung(store, 0, t, 0.0)
        record_rung(store, 1, t, 0.0)
    cfg = T.tiny_config(batch_size=8, epochs=4, eval_every=4, optimizer={"lr": 0.05})
    out = run(store, T.spec_for(cfg), Asha(min_steps=4, reduction_factor=3, max_steps=48), kind=kind)
    assert out.status == "completed" and out.steps == 48
    # rungs at steps 4, 12 and 36 (108 would be past max_steps)
    for r in (0, 1, 2):
        rec = rung_record(store, r, 0)
        assert rec is not None and rec.promoted
    assert rung_record(store, 3, 0) is None


def test_a_resumed_wrapper_trial_keeps_its_promotion(store: Store) -> None:
    # alone at rung 0 (step 4): promoted; it crashes at step 6, after its checkpoint at step 4
    cfg = T.tiny_config(batch_size=8, epochs=2, eval_every=4, optimizer={"lr": 0.05})
    spec = T.spec_for(cfg)
    pruner = Asha(min_steps=4, reduction_factor=3, max_steps=20)
    with pytest.raises(T.Crash):
        run(store, spec, pruner, obj=T.CrashingWrapper(crash_at=6))
    first = rung_record(store, 0, 0)
    assert first is not None and first.promoted
    # meanwhile three better trials reached rung 0: deciding again would prune it
    for t in (1, 2, 3):
        record_rung(store, 0, t, 1.0)
    out = run(store, spec, pruner, epoch=1)
    assert out.resumed_from == (0, 4) and out.status == "completed" and out.steps == 24
    assert rung_record(store, 0, 0) == first  # the record was not rewritten
    rung1 = rung_record(store, 1, 0)
    assert rung1 is not None and rung1.promoted and rung1.step == 12


def test_a_function_trial_pruned_by_the_median_rule(store: Store) -> None:
    # two finished trials with perfect accuracy at every report step
    for t in (1, 2):
        rec = records.Curve(trial=t, metric="val_accuracy", steps=[4, 8, 12], values=[1.0, 1.0, 1.0])
        assert store.create(layout.curve(t), records.encode(rec))
    cfg = T.tiny_config(batch_size=8, epochs=2, optimizer={"lr": 0.05})
    out = run(store, T.spec_for(cfg), Median(warmup_steps=8, min_trials=2), kind="function")
    assert out.status == "pruned" and out.steps == 8 and "median" in out.message
    assert store.get(layout.curve(0)) is None  # a pruned trial's curve does not count

    # a completed trial writes its curve for the others
    other = open_store(f"memory://prune-train-{uuid.uuid4().hex}")
    done = run(other, T.spec_for(cfg), Median(min_trials=2), kind="function")
    assert done.status == "completed"
    curve = records.decode(other.read(layout.curve(0)), records.Curve)
    assert curve.steps == [4, 8, 12, 16, 20, 24] and curve.values[-1] == done.metrics["val_accuracy"]
