"""The trial page's time line (``ablator.serve.trial.trial_detail``) without a browser: how each
attempt ended and which one was a takeover, by the one trial-state classifier's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis.synthstore import StoreBuilder, ablation_experiment

from ablator import layout, records
from ablator.analysis import load
from ablator.lease.state import scan
from ablator.serve.trial import trial_detail
from ablator.store import open_store


def _store(tmp_path: Path) -> tuple[StoreBuilder, str]:
    url = str(tmp_path / "store")
    b = StoreBuilder(open_store(url), ablation_experiment(repeats=1))
    b.finished(0, {}, 0.8, variant="")
    return b, url


def _timeline(tmp_path: Path, url: str, index: int) -> list[dict[str, object]]:
    store = open_store(url, read_only=True)
    res = load(store, cache_dir=tmp_path / "cache")
    return list(trial_detail(store, res, index)["timeline"])


def test_each_end_and_each_takeover_on_the_time_line(tmp_path: Path) -> None:
    """Epoch 0 vanished (taken over by 1), 1 failed, 2 was released, 3 finished: only epoch 1
    is a takeover, as ``status`` and analysis count it."""
    b, url = _store(tmp_path)
    spec = b.spec_for(1, {}, variant="")
    b.claim(1, 0, spec)
    b.attempt(1, 0)
    b.claim(1, 1, agent="a2")
    b.attempt(1, 1, resumed_from=None)
    b.failed(1, 1, message="boom\nsecond line", step=3)
    b.claim(1, 2)
    b.release(1, 2, step=4)
    b.claim(1, 3)
    b.attempt(1, 3, resumed_from=(2, 4))
    b.metrics(1, 3, range(5, 9), lambda s: {"val_accuracy": s / 10})
    b.result(1, 3, {"val_accuracy": 0.8}, steps=8)
    line = _timeline(tmp_path, url, 1)
    assert [e["epoch"] for e in line] == [0, 1, 2, 3]
    assert [e["outcome"] for e in line] == ["taken over", "failed (exception)", "released", "completed"]
    assert [e["takeover"] for e in line] == [False, True, False, False]
    assert line[0]["why"] == "its holder vanished" and line[1]["why"] == "boom"
    assert line[1]["agent_id"] == "a2" and line[3]["resumed_from"] == [2, 4]
    # The same count as the classifier's (what status and analysis show).
    store = open_store(url, read_only=True)
    assert scan(1, store.list(layout.trial_dir(1))).records.takeovers() == 1


def test_an_unreadable_failure_record_still_ends_its_epoch(tmp_path: Path) -> None:
    """A listed but corrupt failure record: its epoch failed (and the next one is a retry, not a
    takeover), the page says the record is unreadable."""
    b, url = _store(tmp_path)
    b.claim(1, 0, b.spec_for(1, {}, variant=""))
    b.attempt(1, 0)
    assert b.store.create(layout.failed(1, 0), b"not a record")
    b.claim(1, 1)
    b.attempt(1, 1)
    b.result(1, 1, {"val_accuracy": 0.7}, steps=2)
    with pytest.warns(records.CorruptRecordWarning):
        line = _timeline(tmp_path, url, 1)
    assert [(e["outcome"], e["takeover"]) for e in line] == [("failed", False), ("completed", False)]
    assert line[0]["why"] == "its failure record is unreadable"


def test_a_running_takeover_is_the_last_epoch(tmp_path: Path) -> None:
    """An orphan taken over and still running: epoch 0 taken over, epoch 1 running, a takeover."""
    b, url = _store(tmp_path)
    b.claim(1, 0, b.spec_for(1, {}, variant=""))
    b.attempt(1, 0)
    b.metrics(1, 0, range(1, 3), lambda s: {"val_accuracy": s / 10})
    b.claim(1, 1)
    b.attempt(1, 1, resumed_from=None)
    line = _timeline(tmp_path, url, 1)
    assert [(e["outcome"], e["takeover"]) for e in line] == [("taken over", False), ("running", True)]
    assert line[1]["end"] is not None  # a running attempt's bar reaches now
