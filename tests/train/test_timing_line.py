"""The agent's "trial N completed ... (X s training, +Y s warm-up)" line counts time as the report
does: one warm-up estimate (records.warmup_s), training = the attempt's duration minus it."""

from __future__ import annotations

import uuid

import pytest
import trainlib as T
from testkit import put_claim

from ablator import lineage, records
from ablator.agent import protocol as P
from ablator.agent.loop import timing
from ablator.analysis.reader import attempt_times
from ablator.entrypoint import EntryPoint
from ablator.store import open_store
from ablator.train import NoFence, execute_trial


def _row(step: int, time: float) -> records.MetricRow:
    return records.MetricRow(step=step, values={"loss": 1.0}, time=time)


def test_the_line_and_the_report_agree_on_training_and_warm_up() -> None:
    # 5 s of warm-up, then 0.1 s per step: the first row (step 1) lands at 5.1 s
    rows = [_row(s, 5.0 + 0.1 * s) for s in range(1, 11)]
    warm = records.warmup_s(rows[0], rows[-1], 0)
    assert warm == pytest.approx(5.0)
    training, setup = attempt_times(rows, [(0, None)], 6.1)
    assert (training, setup) == (pytest.approx(1.1), pytest.approx(5.0))
    line = timing(records.Outcome(status="completed", duration_s=6.1, setup_s=warm))
    assert line == "1.1 s training, +5.0 s warm-up"
    # one row cannot pace the warm-up: the line shows the duration alone, as the report does
    assert records.warmup_s(rows[0], rows[0], 0) is None
    assert attempt_times(rows[:1], [(0, None)], 6.1) == (pytest.approx(6.1), None)
    assert timing(records.Outcome(status="completed", duration_s=6.1)) == "6.1 s"


@pytest.mark.procs  # the attempt's environment record calls platform.platform(), which runs uname
def test_a_trial_outcome_carries_the_warm_up_the_report_computes() -> None:
    store = open_store(f"memory://timing-{uuid.uuid4().hex}")
    spec = T.spec_for(T.tiny_config(batch_size=8, epochs=3, optimizer={"lr": 0.1}))
    put_claim(store, spec.index, 0, spec=spec)
    entry = EntryPoint(kind="function", obj=T.tiny_trial, config_type=T.TinyConfig)
    out = execute_trial(
        entry,
        spec,
        store,
        spec.index,
        0,
        fence=NoFence(),
        device="cpu",
        progress=False,
        metric=("val_accuracy", "max"),
    )
    assert out.status == "completed" and out.setup_s is not None
    rows = lineage.canonical_rows(store, 0, 0)
    training, setup = attempt_times(rows, [(0, None)], out.duration_s)
    assert setup == pytest.approx(out.setup_s)
    line = timing(P.Finished(outcome=out).outcome)
    assert line == f"{training:.1f} s training, +{setup:.1f} s warm-up"
