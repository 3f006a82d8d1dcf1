"""``load``: the trials table, lineage stitching, trial states, corrupt records, snapshots."""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import msgspec
import polars as pl
import pytest

from ablator import layout, records
from ablator.analysis import load, snapshot
from ablator.analysis.snapshot import write_trial_summary
from ablator.errors import AnalysisError, CorruptRecordError
from ablator.store import open_store
from analysis.synthstore import StoreBuilder, ablation_experiment

MEANS = {"baseline": 0.90, "no_dropout": 0.88, "gelu": 0.905, "no_batchnorm": 0.80}


def build_ablation(path: Path, *, finish: int | None = None, seed: int = 0) -> StoreBuilder:
    """Baseline + 3 variants x 3 repeats; the first ``finish`` trials finished (default all)."""
    exp = ablation_experiment()
    b = StoreBuilder(open_store(path), exp)
    rng = random.Random(seed)
    variants = [("", {}), *exp["design"]["ablations"].items()]
    i = 0
    for name, overrides in variants:
        for r in range(3):
            if finish is None or i < finish:
                b.finished(
                    i, overrides, MEANS[name or "baseline"] + rng.gauss(0, 0.01), variant=name, repeat=r
                )
            i += 1
    return b


def test_trials_table_is_typed_and_flat(tmp_path: Path) -> None:
    build_ablation(tmp_path / "s")
    res = load(tmp_path / "s")
    t = res.trials
    assert t.height == 12 and t["index"].to_list() == list(range(12))
    assert t["variant"].to_list()[:4] == ["baseline", "baseline", "baseline", "no_dropout"]
    assert t["status"].unique().to_list() == ["completed"]
    schema = t.schema
    assert schema["model.dropout"] == pl.Float64
    assert schema["model.batchnorm"] == pl.Boolean
    assert schema["model.activation"] == pl.String
    assert schema["train.epochs"] == pl.Int64
    assert schema["final.val_accuracy"] == pl.Float64 and schema["best.val_accuracy"] == pl.Float64
    row = t.filter(pl.col("variant") == "no_batchnorm").row(0, named=True)
    assert row["model.batchnorm"] is False and row["model.dropout"] == 0.2
    assert row["host"] == "node-1" and row["gpu"] == "NVIDIA H100"
    assert row["attempts"] == 1 and row["failures"] == 0 and row["takeovers"] == 0
    assert row["steps"] == 20 and row["duration_s"] == 10.0 and row["seed"] == 1009
    assert res.metric == "val_accuracy" and res.mode == "max" and res.budget == 12
    assert res.metrics == ["train_loss", "val_accuracy"]
    assert list(res.history.schema.items()) == [
        ("trial", pl.Int64),
        ("variant", pl.String),
        ("step", pl.Int64),
        ("metric", pl.Categorical()),
        ("value", pl.Float64),
    ]
    assert res.history.height == 12 * 20 * 2


def test_retried_and_taken_over_trial_has_one_canonical_history(tmp_path: Path) -> None:
    b = StoreBuilder(open_store(tmp_path / "s"), ablation_experiment(repeats=1))
    spec = b.spec_for(0, {}, variant="baseline")
    # Epoch 0 runs to step 100, checkpoints at 60, fails at 100.
    b.claim(0, 0, spec)
    b.attempt(0, 0)
    b.metrics(0, 0, range(1, 101), lambda s: {"val_accuracy": 1000.0 + s})
    b.failed(0, 0, step=100)
    # Epoch 1 resumes from (0, 60), checkpoints at 120, and its agent vanishes ...
    b.claim(0, 1)
    b.attempt(0, 1, resumed_from=(0, 60), host="node-2")
    b.metrics(0, 1, range(61, 131), lambda s: {"val_accuracy": 2000.0 + s})
    # ... epoch 2 takes over from (1, 120) while epoch 1, a zombie, still writes up to 180.
    b.claim(0, 2)
    b.attempt(0, 2, resumed_from=(1, 120), host="node-3", gpu="NVIDIA A100")
    b.metrics(0, 1, range(131, 181), lambda s: {"val_accuracy": 9000.0 + s})
    b.metrics(0, 2, range(121, 201), lambda s: {"val_accuracy": 3000.0 + s})
    b.result(0, 2, {"val_accuracy": 3200.0}, best={"val_accuracy": 3200.0}, steps=200)

    res = load(tmp_path / "s", cache=False)
    h = res.history.filter(pl.col("trial") == 0)
    steps = h["step"].to_list()
    assert steps == list(range(1, 201))  # no duplicated, no missing step
    values = dict(zip(steps, h["value"].to_list(), strict=True))
    assert values[60] == 1060.0 and values[61] == 2061.0  # epoch 0 up to its successor's resume
    assert values[120] == 2120.0 and values[121] == 3121.0  # epoch 1 up to 120, then epoch 2
    assert not any(v >= 9000 for v in values.values())  # the zombie's orphaned rows are gone
    row = res.trials.row(0, named=True)
    assert row["status"] == "completed" and row["epoch"] == 2
    assert (row["attempts"], row["failures"], row["takeovers"]) == (3, 1, 1)
    assert row["host"] == "node-3" and row["gpu"] == "NVIDIA A100"  # the result's attempt
    assert row["final.val_accuracy"] == 3200.0
    assert row["error"] == "exception: boom"


def test_unfinished_trials_states_and_no_partial_values(tmp_path: Path) -> None:
    exp = ablation_experiment()  # budget (1 + 3) x 3 = 12
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    b.finished(0, {}, 0.9)
    # 1: failed for good (3 failures = max_attempts), with partial rows that must not leak
    b.claim(1, 0, b.spec_for(1, {}))
    for e in range(3):
        if e:
            b.claim(1, e)
        b.attempt(1, e)
        b.metrics(1, e, range(1, 11), lambda s: {"val_accuracy": 0.5})
        b.failed(1, e, message="CUDA out of memory\ntraceback...")
    # 2: one failure so far: retryable
    b.claim(2, 0, b.spec_for(2, {}))
    b.attempt(2, 0)
    b.failed(2, 0)
    # 3: released by a draining agent
    b.claim(3, 0, b.spec_for(3, {}))
    b.attempt(3, 0)
    b.release(3, 0, step=5)
    # 4: running, rows so far
    b.claim(4, 0, b.spec_for(4, {}))
    b.attempt(4, 0)
    b.metrics(4, 0, range(1, 8), lambda s: {"val_accuracy": s / 10})
    # 5: failed 3 times but an operator's retry forgave the first two
    b.claim(5, 0, b.spec_for(5, {}))
    for e in range(3):
        if e:
            b.claim(5, e)
        b.failed(5, e)
    assert b.store.create(layout.retry(0), records.encode(records.Retry(k=0, epochs={5: 1})))

    res = load(tmp_path / "s")
    status = dict(zip(res.trials["index"].to_list(), res.trials["status"].to_list(), strict=True))
    assert [status[i] for i in range(6)] == [
        "completed",
        "failed",
        "retryable",
        "released",
        "running",
        "retryable",
    ]
    assert all(status[i] == "pending" for i in range(6, 12))
    failed = res.trials.row(1, named=True)
    assert failed["final.val_accuracy"] is None and failed["best.val_accuracy"] is None
    assert failed["failures"] == 3 and failed["error"] == "exception: CUDA out of memory"
    assert set(res.history["trial"].unique().to_list()) == {0, 4}  # done + running only
    running = res.trials.row(4, named=True)
    assert running["steps"] == 7 and running["final.val_accuracy"] is None
    assert res.status_counts() == {
        "completed": 1,
        "failed": 1,
        "retryable": 2,
        "released": 1,
        "running": 1,
        "pending": 6,
    }
    # Only finished trials are ever snapshotted: the unfinished ones are read again next time.
    again = load(tmp_path / "s")
    assert again.info.from_snapshot == 1 and again.info.read == 5
    assert again.trials.equals(res.trials) and again.history.equals(res.history)


def test_corrupt_records_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    b = build_ablation(tmp_path / "s", finish=4)
    root = tmp_path / "s"
    (root / layout.result(1)).write_bytes(b"\x93garbage")
    chunk = layout.metrics(2, 0, 20)
    (root / chunk).write_bytes(b"")
    (root / layout.claim(3, 0)).write_bytes(b"\xc1")
    with pytest.warns(records.CorruptRecordWarning) as caught:
        res = load(root, cache=False)
    messages = " ".join(str(w.message) for w in caught)
    for key in (layout.result(1), chunk, layout.claim(3, 0)):
        assert key in messages
    t = res.trials
    assert t.row(0, named=True)["status"] == "completed"
    assert (
        t.row(1, named=True)["status"] == "needs_repair"
    )  # unreadable result: never "running", never absent
    assert t.row(3, named=True)["seed"] is None and t.row(3, named=True)["status"] == "completed"
    steps2 = res.history.filter((pl.col("trial") == 2) & (pl.col("metric") == "val_accuracy"))["step"]
    assert steps2.to_list() == list(range(1, 11))  # the second chunk is gone, the first is there
    assert b.store.exists(layout.EXPERIMENT)


def test_not_a_store_and_corrupt_experiment(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match=r"experiment\.json"):
        load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / layout.EXPERIMENT).write_text("{not json")
    with pytest.raises(CorruptRecordError, match=r"experiment\.json"):
        load(tmp_path / "bad")


def test_snapshot_is_written_once_and_reused(tmp_path: Path) -> None:
    build_ablation(tmp_path / "s", finish=8)
    cold = load(tmp_path / "s", cache=False)
    first = load(tmp_path / "s")
    assert first.info.snapshot_written is not None and first.info.snapshot_written_to == "store"
    assert (tmp_path / "s" / first.info.snapshot_written).is_file()
    second = load(tmp_path / "s")
    assert second.info.snapshot_read == first.info.snapshot_written
    assert (second.info.from_snapshot, second.info.read, second.info.snapshot_written) == (8, 0, None)
    for res in (first, second):
        assert res.trials.equals(cold.trials)
        assert res.history.equals(cold.history)


def test_snapshot_grows_incrementally(tmp_path: Path) -> None:
    b = build_ablation(tmp_path / "s", finish=8)
    first = load(tmp_path / "s")
    assert first.info.from_snapshot == 0 and first.info.snapshot_written is not None
    for i in (8, 9):
        b.finished(i, {"model.batchnorm": False}, 0.8, variant="no_batchnorm", repeat=i - 9)
    second = load(tmp_path / "s")
    assert (second.info.from_snapshot, second.info.read) == (8, 2)  # only the trials it lacks
    assert second.info.snapshot_written is not None and "/00000010-" in second.info.snapshot_written
    third = load(tmp_path / "s")
    assert (third.info.from_snapshot, third.info.read) == (10, 0)
    assert third.trials.equals(load(tmp_path / "s", cache=False).trials)
    assert third.history.equals(load(tmp_path / "s", cache=False).history)


def test_read_only_copy_snapshots_go_to_the_local_cache(tmp_path: Path, local_cache: Path) -> None:
    build_ablation(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "copy")
    ro = open_store(tmp_path / "copy", read_only=True)
    first = load(ro)
    assert first.info.snapshot_written_to is not None and first.info.snapshot_written_to.startswith(
        str(local_cache)
    )
    assert not (tmp_path / "copy" / "cache").exists()
    second = load(open_store(tmp_path / "copy", read_only=True))
    assert second.info.from_snapshot == 12 and second.info.read == 0
    assert second.info.snapshot_read_from == first.info.snapshot_written_to
    # The original store (writable) may reuse the local snapshot: same experiment, same results.
    third = load(tmp_path / "s")
    assert third.info.from_snapshot == 12
    assert third.trials.equals(first.trials)


def test_local_snapshot_of_a_diverged_fork_is_not_trusted(tmp_path: Path) -> None:
    b = build_ablation(tmp_path / "a", finish=11)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b.finished(11, {"model.batchnorm": False}, 0.1, variant="no_batchnorm", repeat=2)
    fork = StoreBuilder.__new__(StoreBuilder)
    fork.store, fork.experiment = open_store(tmp_path / "b"), b.experiment
    fork.finished(11, {"model.batchnorm": False}, 0.7, variant="no_batchnorm", repeat=2)
    a = load(open_store(tmp_path / "a", read_only=True))
    assert a.info.snapshot_written is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fork_res = load(open_store(tmp_path / "b", read_only=True))
    assert fork_res.info.from_snapshot == 0  # same experiment and key, other results: rejected
    assert fork_res.info.snapshot_written is None  # and not overwritten either
    assert fork_res.trials.row(11, named=True)["final.val_accuracy"] == 0.7


def test_corrupt_snapshot_is_skipped(tmp_path: Path) -> None:
    build_ablation(tmp_path / "s")
    first = load(tmp_path / "s")
    assert first.info.snapshot_written is not None
    (tmp_path / "s" / first.info.snapshot_written).write_bytes(b"\x00" * 10)
    with pytest.warns(records.CorruptRecordWarning, match="snapshot"):
        again = load(tmp_path / "s")
    assert again.info.from_snapshot == 0 and again.trials.equals(first.trials)


def test_memory_store_and_running_copy(tmp_path: Path) -> None:
    b = StoreBuilder(open_store("memory://analysis-test"), ablation_experiment())
    b.finished(0, {}, 0.9)
    b.claim(1, 0, b.spec_for(1, {}))
    res = load("memory://analysis-test")
    assert res.trials["status"].to_list()[:2] == ["completed", "running"]
    # A copy taken mid-run (rsync of a live folder) loads the same way.
    build_ablation(tmp_path / "live", finish=5)
    shutil.copytree(tmp_path / "live", tmp_path / "copy")
    copy = load(tmp_path / "copy")
    assert copy.status_counts() == {"completed": 5, "pending": 7}


def test_s3_store_loads_in_parallel_and_snapshots_in_the_bucket(s3_url: str) -> None:
    exp = ablation_experiment(repeats=2)
    b = StoreBuilder(open_store(s3_url), exp)
    for i, (name, overrides) in enumerate([("", {}), *exp["design"]["ablations"].items()]):
        b.finished(2 * i, overrides, 0.9 - 0.01 * i, variant=name, n_steps=4)
        b.finished(2 * i + 1, overrides, 0.91 - 0.01 * i, variant=name, repeat=1, n_steps=4)
    for i in range(0, 8, 2):  # half the trials with the summary their holder writes
        assert write_trial_summary(b.store, i, ablation=True)
    plain = load(s3_url, cache=False)
    first = load(s3_url)
    assert first.info.read == 8 and first.info.snapshot_written_to == "store"
    assert first.info.from_summaries == 4
    assert first.trials.equals(plain.trials) and first.history.equals(plain.history)
    assert first.trials["status"].to_list() == ["completed"] * 8 and first.history.height == 8 * 4 * 2
    second = load(s3_url)
    assert (second.info.from_snapshot, second.info.read) == (8, 0)
    assert second.trials.equals(first.trials) and second.history.equals(first.history)
    assert second.effects().factor("variant")["n"].to_list() == [2, 2, 2, 2]


def test_durations_sum_the_lineage_and_keep_warm_up_apart(tmp_path: Path) -> None:
    b = StoreBuilder(open_store(tmp_path / "s"), ablation_experiment(repeats=1))
    # Attempt 0: 12 s of warm-up (a fresh worker), then 0.1 s a step; rows every 10 steps; it
    # checkpoints at 50 and dies at 60. Attempt 1 resumes from step 50 after 2 s of warm-up.
    b.claim(0, 0, b.spec_for(0, {}, variant="baseline"))
    b.attempt(0, 0)
    rows0 = [
        records.MetricRow(step=s, values={"val_accuracy": s / 100}, time=12 + 0.1 * s)
        for s in range(10, 61, 10)
    ]
    assert b.store.create(
        layout.metrics(0, 0, 60), records.encode(records.MetricsChunk(trial=0, epoch=0, rows=rows0))
    )
    b.failed(0, 0, step=60)
    b.claim(0, 1)
    b.attempt(0, 1, resumed_from=(0, 50))
    rows1 = [
        records.MetricRow(step=s, values={"val_accuracy": s / 100}, time=2 + 0.1 * (s - 50))
        for s in range(60, 101, 10)
    ]
    assert b.store.create(
        layout.metrics(0, 1, 100), records.encode(records.MetricsChunk(trial=0, epoch=1, rows=rows1))
    )
    b.result(0, 1, {"val_accuracy": 1.0}, steps=100, duration_s=7.0)
    # Trial 1: one attempt, no warm-up to speak of.
    b.claim(1, 0, b.spec_for(1, {"model.dropout": 0.0}, variant="no_dropout"))
    b.attempt(1, 0)
    rows = [
        records.MetricRow(step=s, values={"val_accuracy": 0.5}, time=0.3 + 0.1 * s)
        for s in range(10, 101, 10)
    ]
    assert b.store.create(
        layout.metrics(1, 0, 100), records.encode(records.MetricsChunk(trial=1, epoch=0, rows=rows))
    )
    b.result(1, 0, {"val_accuracy": 0.5}, steps=100, duration_s=10.3)

    res = load(tmp_path / "s", cache=False)
    first, second = res.trials.row(0, named=True), res.trials.row(1, named=True)
    assert first["setup_s"] == pytest.approx(12.0 + 2.0)
    assert first["duration_s"] == pytest.approx(5.0 + 5.0)  # 50 steps before the crash, 50 after
    assert first["resumed_from"] == 50 and first["attempts"] == 2 and first["failures"] == 1
    assert second["setup_s"] == pytest.approx(0.3) and second["duration_s"] == pytest.approx(10.0)
    assert second["resumed_from"] is None
    assert res.history.filter(pl.col("trial") == 0)["step"].to_list() == list(range(10, 101, 10))


def test_pending_rows_and_history_carry_the_variant(tmp_path: Path) -> None:
    build_ablation(tmp_path / "s", finish=5)
    res = load(tmp_path / "s")
    pending = res.trials.filter(pl.col("status") == "pending")
    # Ablations go round by round (docs/experiment.md): baseline, no_dropout, gelu, no_batchnorm.
    order = ["baseline", "no_dropout", "gelu", "no_batchnorm"]
    assert pending["variant"].to_list() == [order[i % 4] for i in pending["index"].to_list()]
    hist = res.history.group_by("trial").agg(pl.col("variant").unique())
    for trial, variants in hist.iter_rows():
        assert variants == [res.trials.row(trial, named=True)["variant"]]


def test_summaries_give_the_same_tables_in_one_read_per_trial(tmp_path: Path) -> None:
    b = build_ablation(tmp_path / "s", finish=8)
    b.claim(8, 0, b.spec_for(8, {"model.batchnorm": False}, variant="no_batchnorm"))  # running
    b.attempt(8, 0)
    b.metrics(8, 0, range(1, 5), lambda s: {"val_accuracy": s / 10})
    for i in range(8):
        assert write_trial_summary(b.store, i, ablation=True)
    before = (tmp_path / "s" / layout.trial_summary(0)).read_bytes()
    write_trial_summary(b.store, 0, ablation=True)  # create-once: the same bytes stay
    assert (tmp_path / "s" / layout.trial_summary(0)).read_bytes() == before
    assert not write_trial_summary(b.store, 8, ablation=True)  # no result: no summary
    assert not (tmp_path / "s" / layout.trial_summary(8)).exists()
    plain = load(tmp_path / "s", cache=False)
    assert plain.info.from_summaries == 0  # cache=False reads every record
    first = load(tmp_path / "s")
    assert (first.info.from_summaries, first.info.read) == (8, 9)
    assert first.trials.equals(plain.trials) and first.history.equals(plain.history)
    # The summary is what analysis reads: its records may be gone (a copy of the summaries only).
    shutil.rmtree(tmp_path / "s" / "cache")
    for chunk in (tmp_path / "s" / layout.metrics_dir(3)).iterdir():
        chunk.unlink()
    again = load(tmp_path / "s")
    assert again.info.from_summaries == 8 and again.history.equals(plain.history)


def test_corrupt_or_foreign_summaries_fall_back_to_the_records(tmp_path: Path) -> None:
    b = build_ablation(tmp_path / "s", finish=3)
    for i in range(3):
        write_trial_summary(b.store, i, ablation=True)
    (tmp_path / "s" / layout.trial_summary(0)).write_bytes(b"\x92garbage")
    key = layout.trial_summary(1)
    summary = msgspec.msgpack.decode((tmp_path / "s" / key).read_bytes(), type=snapshot.TrialSummary)
    (tmp_path / "s" / key).write_bytes(msgspec.msgpack.encode(msgspec.structs.replace(summary, format=99)))
    with pytest.warns(records.CorruptRecordWarning, match=layout.trial_summary(0)):
        res = load(tmp_path / "s", cache=False), load(tmp_path / "s")
    assert res[1].info.from_summaries == 1  # trial 2; 0 is corrupt, 1 of a format it does not know
    assert res[1].trials.equals(res[0].trials) and res[1].history.equals(res[0].history)


def test_every_attempts_error_root_cause_first(tmp_path: Path) -> None:
    """A resumed attempt that fails because of the first failure must not hide it: the error
    column lists the first attempt's error first, then each different one; repeats fold."""
    from ablator.analysis import write_report

    b = StoreBuilder(open_store(tmp_path / "s"), ablation_experiment(repeats=1))
    b.finished(0, {}, 0.9)
    b.claim(1, 0, b.spec_for(1, {}))
    b.failed(1, 0, message="RuntimeError: CUDA error: an illegal memory access\nTraceback ...")
    b.claim(1, 1)
    b.failed(1, 1, message="AblatorError: trial 1: metrics for step 3 reported after step 4 was checkpointed")
    b.claim(1, 2)
    b.failed(1, 2, message="AblatorError: trial 1: metrics for step 3 reported after step 4 was checkpointed")
    b.claim(2, 0, b.spec_for(2, {}))
    b.failed(2, 0, kind="stalled", message="no step for 60 s")
    res = load(tmp_path / "s", cache=False)
    row = res.trials.row(1, named=True)
    assert row["status"] == "failed" and row["failures"] == 3
    assert row["error"] == (
        "exception: RuntimeError: CUDA error: an illegal memory access (attempt 1); then exception: "
        "AblatorError: trial 1: metrics for step 3 reported after step 4 was checkpointed (attempts 2, 3)"
    )
    assert res.trials.row(2, named=True)["error"] == "stalled: no step for 60 s"  # one attempt: as before
    md = write_report(res, tmp_path / "out").markdown.read_text()
    assert "errors (first attempt first)" in md
    assert "RuntimeError: CUDA error: an illegal memory access (attempt 1); then" in md
