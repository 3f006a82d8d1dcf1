"""launch / stop / retry / gc against a store, without agents."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import put_claim

from ablator import layout, records
from ablator.errors import AblatorError, ExperimentMismatch
from ablator.experiment import experiment_from_dict
from ablator.ops import gc, launch, resume, retry_failed, stop
from ablator.store import open_store

from .conftest import experiment


def _launch(url: str, **kw: object) -> object:
    return launch(experiment_from_dict(experiment()), url, **kw)  # type: ignore[arg-type]


def test_launch_is_create_once(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    first = launch(experiment_from_dict(experiment()), url)
    assert first.created and first.budget == 4 and first.spec.budget == 4
    again = launch(experiment_from_dict(experiment()), url)
    assert not again.created and "nothing to do" in again.message
    assert again.spec.nonce == first.spec.nonce  # the stored record was not rewritten
    other = experiment(config={"steps": 9})
    with pytest.raises(ExperimentMismatch, match=r"config\.steps: \(absent\) -> 9"):
        launch(experiment_from_dict(other), url)
    with pytest.raises(ExperimentMismatch):
        launch(experiment_from_dict(other), url, extend=2)  # extending needs the same experiment
    e1 = launch(experiment_from_dict(experiment()), url, extend=2)
    e2 = launch(experiment_from_dict(experiment()), url, extend=3)
    assert (e1.extension, e1.budget, e2.extension, e2.budget) == (0, 6, 1, 9)
    with pytest.raises(AblatorError, match="at least 1"):
        launch(experiment_from_dict(experiment()), url, extend=0)


@pytest.mark.procs  # --code snapshots the folder, which runs git
def test_launch_with_code_and_a_different_snapshot_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    code = tmp_path / "code"
    code.mkdir()
    (code / "helper.py").write_text("X = 1\n")
    res = launch(experiment_from_dict(experiment()), url, code_dir=code)
    store = open_store(url)
    assert res.spec.code_sha256 and store.exists(layout.code(res.spec.code_sha256))
    assert not launch(experiment_from_dict(experiment()), url, code_dir=code).created
    (code / "helper.py").write_text("X = 2\n")
    with pytest.raises(ExperimentMismatch, match="differs from the snapshot this experiment pinned"):
        launch(experiment_from_dict(experiment()), url, code_dir=code)
    # The refused snapshot was not uploaded; extending keeps the pinned snapshot.
    assert [e.key for e in store.list(layout.CODE_DIR)] == [layout.code(res.spec.code_sha256)]
    ext = launch(experiment_from_dict(experiment()), url, code_dir=code, extend=1)
    assert ext.extension == 0 and ext.spec.code_sha256 == res.spec.code_sha256


@pytest.mark.procs  # --code snapshots the folder, which runs git
def test_stores_and_reports_inside_the_code_folder_are_not_code(tmp_path: Path) -> None:
    code = tmp_path / "project"
    code.mkdir()
    (code / "model.py").write_text("X = 1\n")
    url = str(code / "runs" / "a")
    first = launch(experiment_from_dict(experiment()), url, code_dir=code)
    # The store now lives inside the code folder (untracked, not ignored), and so does a report.
    (code / "report").mkdir()
    (code / "report" / "report.html").write_text("<html></html>")
    (code / "report" / "effects.json").write_text("{}")
    again = launch(experiment_from_dict(experiment()), url, code_dir=code)
    assert not again.created and again.spec.code_sha256 == first.spec.code_sha256
    other = launch(experiment_from_dict(experiment()), str(code / "runs" / "b"), code_dir=code)
    assert other.spec.code_sha256 == first.spec.code_sha256


def test_stop_and_resume(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    with pytest.raises(AblatorError, match="no experiment"):
        stop(url)
    launch(experiment_from_dict(experiment()), url)
    assert stop(url, "maintenance") and not stop(url)
    store = open_store(url)
    assert records.decode(store.read(layout.STOP), records.Stop).reason == "maintenance"
    assert resume(url) and not resume(url)


def _put(store: object, key: str, rec: object) -> None:
    assert store.create(key, records.encode(rec))  # type: ignore[attr-defined, arg-type]


def test_retry_forgives_failures_and_keeps_them(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    launch(experiment_from_dict(experiment()), url)
    store = open_store(url)
    assert retry_failed(url) is None
    spec = records.TrialSpec(index=0, config={}, config_hash="h", seed=0)
    for e in (0, 1):  # max_attempts = 2: failed for good
        put_claim(store, 0, e, spec=spec, agent="a")
        _put(store, layout.failed(0, e), records.Failure(trial=0, epoch=e, agent_id="a", message="boom"))
    put_claim(store, 1, spec=spec, agent="a")
    _put(store, layout.failed(1, 0), records.Failure(trial=1, epoch=0, agent_id="a"))  # retryable, not failed
    rec = retry_failed(url)
    assert rec is not None and rec.epochs == {0: 1}
    assert store.exists(layout.failed(0, 1))
    assert retry_failed(url) is None  # forgiven: not failed any more
    with pytest.raises(AblatorError, match="not run yet"):
        retry_failed(url, [3])


def test_gc_keeps_best_and_last_of_the_canonical_lineage(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    launch(
        experiment_from_dict(
            experiment(design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}})
        ),
        url,
    )
    store = open_store(url)
    spec = records.TrialSpec(index=0, config={}, config_hash="h", seed=0)
    # Trial 0: attempt 0 checkpointed 2, 4 and (a zombie, after the takeover) 6; attempt 1
    # resumed from step 4 and checkpointed 6 and 8; its best step is 6.
    put_claim(store, 0, spec=spec, agent="a")
    put_claim(store, 0, 1, agent="b")
    _put(store, layout.attempt(0, 0), records.Attempt(trial=0, epoch=0, agent_id="a"))
    _put(store, layout.attempt(0, 1), records.Attempt(trial=0, epoch=1, agent_id="b", resumed_from=(0, 4)))
    for e, s in [(0, 2), (0, 4), (0, 6), (1, 6), (1, 8)]:
        store.create(layout.checkpoint(0, e, s), b"x" * 10)
    result = records.Result(trial=0, epoch=1, agent_id="b", best_step=6)
    # Trial 1 is still running: gc must refuse.
    put_claim(store, 1, spec=spec, agent="c")
    _put(store, layout.result(0), result)
    with pytest.raises(AblatorError, match="not done"):
        gc(url)
    _put(store, layout.failed(1, 0), records.Failure(trial=1, epoch=0, agent_id="c"))
    put_claim(store, 1, 1, agent="c")
    _put(store, layout.attempt(1, 0), records.Attempt(trial=1, epoch=0, agent_id="c"))
    _put(store, layout.attempt(1, 1), records.Attempt(trial=1, epoch=1, agent_id="c", resumed_from=(0, 2)))
    _put(store, layout.failed(1, 1), records.Failure(trial=1, epoch=1, agent_id="c"))
    for e, s in [(0, 2), (1, 4), (1, 6)]:
        store.create(layout.checkpoint(1, e, s), b"y" * 10)
    dry = gc(url, dry_run=True)
    assert len(store.list(layout.ckpt_dir(0))) == 5  # a dry run deletes nothing
    report = gc(url)
    assert sorted(report.deleted) == sorted(dry.deleted)
    kept0 = [layout.basename(e.key) for e in store.list(layout.ckpt_dir(0))]
    assert kept0 == ["e0001-s00000006.pt", "e0001-s00000008.pt"]
    kept1 = [layout.basename(e.key) for e in store.list(layout.ckpt_dir(1))]
    assert kept1 == ["e0001-s00000006.pt"]  # what a retry would resume from
    assert report.freed_bytes == 50


def test_launch_refuses_a_store_with_trials_but_no_experiment(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    store = open_store(url)
    put_claim(store, 0, agent="run-1")
    with pytest.raises(ExperimentMismatch, match=r"holds trials but no experiment\.json"):
        launch(experiment_from_dict(experiment()), url)
    assert not store.exists(layout.EXPERIMENT)
