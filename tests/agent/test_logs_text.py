"""What ``ablator logs`` says about an attempt without output, a trial past the budget, and the
header ``--follow`` prints (the plain command's: holder, host, outcome). In-process, on records
written by hand: no agent runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ablator import layout, records
from ablator.errors import AblatorError
from ablator.experiment import experiment_from_dict
from ablator.ops import launch
from ablator.store import open_store
from ablator.store.base import Store
from ablator.trials import follow, show_logs

from .conftest import experiment


def _store(tmp_path: Path, **limits: int) -> Store:
    url = str(tmp_path / "s")
    launch(experiment_from_dict(experiment(limits=dict(limits))), url)  # 4 trials
    return open_store(url)


def _ran(store: Store, trial: int, epoch: int = 0) -> None:
    store.create(
        layout.claim(trial, epoch),
        records.encode(records.Claim(trial=trial, epoch=epoch, agent_id="box-1-aa", host="box")),
    )
    att = records.Attempt(
        trial=trial, epoch=epoch, agent_id="box-1-aa", environment=records.Environment(host="box")
    )
    store.create(layout.attempt(trial, epoch), records.encode(att))


def test_an_attempt_that_ran_and_printed_nothing_says_so(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _ran(store, 1)
    out = io.StringIO()
    show_logs(store, 1, out=out)
    assert "(the trial has written nothing to stdout/stderr yet)" in out.getvalue()
    fail = records.Failure(trial=1, epoch=0, agent_id="box-1-aa", kind="exception", message="boom")
    store.create(layout.failed(1, 0), records.encode(fail))
    out = io.StringIO()
    show_logs(store, 1, out=out)
    text = out.getvalue()
    assert "(the trial wrote nothing to stdout/stderr)" in text
    assert "no log stored" not in text and "-- error (exception): boom" in text


def test_a_trial_past_the_budget_names_the_trials_there_are(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(AblatorError, match=r"has no trial 99: the experiment has trials 0\.\.3"):
        show_logs(store, 99)
    with pytest.raises(AblatorError, match=r"trial 2 of .* has not started"):
        show_logs(store, 2)


def test_follow_prints_the_plain_header_and_how_the_attempt_ended(tmp_path: Path) -> None:
    store = _store(tmp_path, max_attempts=1)  # the failure ends the trial: follow returns
    _ran(store, 0)
    store.replace(layout.log(0, 0), b"epoch 1 loss 0.5\n")
    fail = records.Failure(trial=0, epoch=0, agent_id="box-1-aa", kind="exception", message="boom", step=3)
    store.create(layout.failed(0, 0), records.encode(fail))
    plain, followed = io.StringIO(), io.StringIO()
    show_logs(store, 0, out=plain)
    header = plain.getvalue().splitlines()[0]
    assert header == "== trial 0 attempt 1 (epoch 0) by box-1-aa on box: failed (exception) at step 3 =="
    follow(store, 0, interval=0.01, out=followed)
    lines = followed.getvalue().splitlines()
    assert lines[0] == header
    assert lines[1:3] == ["epoch 1 loss 0.5", "-- error (exception): boom"]
    assert lines[-1] == "== trial 0 is failed =="


def test_follow_prints_the_outcome_again_when_a_running_attempt_ends(tmp_path: Path) -> None:
    store = _store(tmp_path, max_attempts=1)
    _ran(store, 0)
    store.replace(layout.log(0, 0), b"step 1\n")
    polls = [0]

    class Out(io.StringIO):
        def flush(self) -> None:  # the attempt fails between follow's first and second poll
            polls[0] += 1
            if polls[0] == 1:
                fail = records.Failure(trial=0, epoch=0, agent_id="box-1-aa", kind="stalled", message="slow")
                store.create(layout.failed(0, 0), records.encode(fail))

    out = Out()
    follow(store, 0, interval=0.01, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "== trial 0 attempt 1 (epoch 0) by box-1-aa on box: running or not yet judged =="
    assert lines[1] == "step 1"
    assert "== trial 0 attempt 1 (epoch 0) by box-1-aa on box: failed (stalled) ==" in lines[2:]
    assert lines[-1] == "== trial 0 is failed =="
