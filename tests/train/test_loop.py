"""The wrapper loop: training, evaluation, best tracking, early stopping, divergence, gradient
accumulation, schedules, checkpoints (kept, refused, corrupt), stop requests, fencing, smoke."""

from __future__ import annotations

import io
import itertools
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import trainlib as T
from testkit import put_claim

from ablator import layout, lineage, records
from ablator.entrypoint import EntryPoint
from ablator.errors import CheckpointError, ConfigError, LeaseLost
from ablator.store import open_store
from ablator.store.base import Store
from ablator.store.memory import MemoryStore
from ablator.train import NoFence, Outcome, execute_trial
from ablator.train.checkpoint import CheckpointWarning, deserialize
from ablator.train.progress import LogProgress

METRIC = ("val_accuracy", "max")


@pytest.fixture
def store() -> Iterator[Store]:
    yield open_store(f"memory://train-{uuid.uuid4().hex}")


def run(
    store: Store,
    spec: records.TrialSpec,
    epoch: int = 0,
    obj: Any = None,
    *,
    fence: Any = None,
    metric: tuple[str, str] | None = METRIC,
    **kw: Any,
) -> Outcome:
    put_claim(store, spec.index, epoch, spec=spec)
    entry = EntryPoint(
        kind="wrapper", obj=obj if obj is not None else T.TinyWrapper, config_type=T.TinyConfig
    )
    kw.setdefault("progress", False)
    return execute_trial(
        entry, spec, store, spec.index, epoch, fence=fence or NoFence(), device="cpu", metric=metric, **kw
    )


def ckpt_steps(store: Store, trial: int = 0, epoch: int = 0) -> list[int]:
    out = []
    for e in store.list(layout.ckpt_dir(trial)):
        parsed = layout.parse_epoch_step(layout.basename(e.key))
        if parsed and parsed[0] == epoch:
            out.append(parsed[1])
    return sorted(out)


def test_trains_evaluates_and_writes_rows_and_checkpoints(store: Store) -> None:
    cfg = T.tiny_config(
        batch_size=8, epochs=4, log_every=4, optimizer={"lr": 0.05}, model={"with_test": True}
    )
    out = run(store, T.spec_for(cfg))
    assert out.status == "completed" and out.steps == 48 and out.resumed_from is None
    # evaluation every epoch (12 steps), default metric names, test metrics at the end only
    rows = lineage.canonical_rows(store, 0, 0)
    evals = [r.step for r in rows if "val_accuracy" in r.values]
    assert evals == [12, 24, 36, 48]
    assert [r.step for r in rows if "test_accuracy" in r.values] == [48]
    assert [r.step for r in rows] == sorted({4 * i for i in range(1, 13)})
    assert set(out.metrics) >= {"train_loss", "lr", "val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    # it learned the (linear) problem, and best is the best evaluation's row
    assert out.best["val_accuracy"] == max(
        r.values["val_accuracy"] for r in rows if "val_accuracy" in r.values
    )
    assert out.best["val_accuracy"] > 0.6
    assert out.best_step in evals
    # the attempt record, and checkpoints: the newest 2 plus the best
    att = records.decode(store.read(layout.attempt(0, 0)), records.Attempt)
    assert att.resumed_from is None and att.environment.torch == torch.__version__
    steps = ckpt_steps(store)
    assert steps[-2:] == [36, 48] and set(steps) == {36, 48, out.best_step}
    ck = deserialize(store.read(layout.checkpoint(0, 0, 48)))
    assert ck["step"] == 48 and ck["config_hash"] == T.spec_for(cfg).config_hash
    # a user can open a checkpoint with plain torch, weights_only
    plain = torch.load(io.BytesIO(store.read(layout.checkpoint(0, 0, 48))), weights_only=True)
    assert set(plain["model"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_keep_one_plus_best(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, eval_every=4, keep_checkpoints=1, optimizer={"lr": 0.05})
    out = run(store, T.spec_for(cfg))
    assert set(ckpt_steps(store)) == {36, out.best_step}


def test_early_stopping_is_a_result_not_a_failure(store: Store) -> None:
    # lr 0: the metric never improves after the first evaluation
    cfg = T.tiny_config(
        batch_size=8, epochs=10, eval_every=3, early_stopping_patience=2, optimizer={"lr": 0.0}
    )
    out = run(store, T.spec_for(cfg), metric=("val_loss", "min"))
    assert out.status == "early_stopped"
    assert out.steps == 9 and out.best_step == 3
    assert "val_loss" in out.message
    assert ckpt_steps(store)[-1] == 9


def test_an_early_stopped_trial_resumed_after_its_last_checkpoint_stays_stopped(store: Store) -> None:
    cfg = T.tiny_config(
        batch_size=8, epochs=10, eval_every=3, early_stopping_patience=2, optimizer={"lr": 0.0}
    )
    spec = T.spec_for(cfg)
    with pytest.raises(T.Crash):
        run(store, spec, obj=T.EndCrashWrapper, metric=("val_loss", "min"))
    out = run(store, spec, epoch=1, metric=("val_loss", "min"))
    assert out.resumed_from == (0, 9) and out.status == "early_stopped" and out.steps == 9
    assert "no improvement" in out.message and out.best_step == 3


def test_nonfinite_loss_diverges_without_checkpointing_it(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, log_every=2, eval_every=4)
    out = run(store, T.spec_for(cfg), obj=T.NanWrapper(at=5))
    assert out.status == "diverged" and out.steps == 6
    assert "nan" in out.message.lower()
    assert ckpt_steps(store) == [4]  # the evaluation before; nothing after the NaN
    rows = lineage.canonical_rows(store, 0, 0)
    assert rows[-1].step == 6 and rows[-1].values["train_loss"] != rows[-1].values["train_loss"]


def test_loss_blow_up_after_warmup_diverges(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, log_every=2, diverge_factor=10.0, diverge_warmup_steps=4)
    out = run(store, T.spec_for(cfg), obj=T.BlowUpWrapper(at=10))
    assert out.status == "diverged" and out.steps == 12
    assert "x best" in out.message


def test_gradient_accumulation_matches_the_bigger_batch() -> None:
    # 13 batches of 8 with groups of 2 (the last group is one batch) == 7 batches of 16: the same
    # sample order (one permutation per epoch), the same mean losses, the same SGD steps
    common = dict(
        epochs=1,
        eval_every=100,
        optimizer={"name": "sgd", "lr": 0.1},
        model={"n_samples": 104, "dropout": 0.0},
    )
    a = open_store(f"memory://{uuid.uuid4().hex}")
    b = open_store(f"memory://{uuid.uuid4().hex}")
    out_a = run(a, T.spec_for(T.tiny_config(batch_size=8, grad_accum=2, **common), seed=3), metric=None)
    out_b = run(b, T.spec_for(T.tiny_config(batch_size=16, **common), seed=3), metric=None)
    assert out_a.steps == out_b.steps == 7
    wa = deserialize(a.read(layout.checkpoint(0, 0, 7)))["model"]
    wb = deserialize(b.read(layout.checkpoint(0, 0, 7)))["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("scheduler", "expected_lr"),
    [
        # the row of step k shows the rate that step used
        (
            {"name": "step", "step_size": 1, "gamma": 0.5},
            0.1 * 0.5**2,
        ),  # per epoch: 2 epochs done before the last
        ({"name": "cosine", "min_lr": 0.01}, 0.01),  # per step, down to min_lr
        ({"name": "linear", "warmup_steps": 4, "min_lr": 0.0}, 0.1 / 32),  # 1/32 of the decay left
        (
            {"name": "step", "step_when": "val", "step_size": 1, "gamma": 0.5},
            0.1 * 0.5**5,
        ),  # 5 evaluations before
        ({"name": "onecycle", "max_lr": 1.0}, None),
    ],
)
def test_schedules_step_when_their_unit_says(
    store: Store, scheduler: dict[str, Any], expected_lr: float | None
) -> None:
    cfg = T.tiny_config(
        batch_size=8,
        epochs=3,
        eval_every=6,
        log_every=1,
        optimizer={"name": "sgd", "lr": 0.1},
        scheduler=scheduler,
    )
    out = run(store, T.spec_for(cfg))
    lrs = [r.values["lr"] for r in lineage.canonical_rows(store, 0, 0)]
    if expected_lr is not None:
        assert lrs[-1] == pytest.approx(expected_lr, abs=2e-4)
    else:  # one cycle: up to max_lr, then down
        assert max(lrs) == pytest.approx(1.0, rel=0.05) and lrs[-1] < 0.01
    assert out.status == "completed"


def test_plateau_schedule_follows_the_metric_direction(store: Store) -> None:
    cfg = T.tiny_config(
        batch_size=8,
        epochs=4,
        eval_every=3,
        optimizer={"name": "sgd", "lr": 0.0},
        scheduler={"name": "plateau", "patience": 0, "gamma": 0.5},
    )
    # lr 0: the metric is flat, so every evaluation after the first is "no improvement" (lr stays 0
    # but the schedule's own counters move); with mode max and a flat val_accuracy too
    run(store, T.spec_for(cfg), metric=("val_loss", "min"))
    ck = deserialize(store.read(layout.checkpoint(0, 0, 48)))
    assert ck["scheduler"]["mode"] == "min" and ck["scheduler"]["num_bad_epochs"] == 0
    assert ck["scheduler"]["_last_lr"] == [0.0]


def test_unknown_optimizer_and_missing_metric_are_config_errors(store: Store) -> None:
    good = T.spec_for(T.tiny_config(batch_size=8, epochs=1), index=1)
    data = {**good.config, "train": {**good.config["train"], "optimizer": {"name": "adamm", "lr": 0.1}}}
    bad = records.TrialSpec(index=1, config=data, config_hash=good.config_hash, seed=1)
    with pytest.raises(
        ConfigError, match=r"trial 1 .*\$\.train\.optimizer\.name.*adamm.*did you mean 'adam'"
    ):
        run(store, bad)
    cfg = T.tiny_config(batch_size=8, epochs=1)
    with pytest.raises(ConfigError, match=r"'val_f1' is not produced.*val_accuracy"):
        run(store, T.spec_for(cfg, index=2), metric=("val_f1", "max"))


def test_regression_defaults_to_mse_and_train_loss_metric(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=5, optimizer={"lr": 0.05})
    entry = EntryPoint(kind="wrapper", obj=T.RegressionWrapper, config_type=T.TinyConfig)
    put_claim(store, 0, spec=T.spec_for(cfg))
    out = execute_trial(entry, T.spec_for(cfg), store, 0, 0, fence=NoFence(), device="cpu", progress=False)
    assert set(out.metrics) == {"train_loss", "lr"}  # no val loader, no accuracy
    rows = lineage.canonical_rows(store, 0, 0)
    assert rows[-1].values["train_loss"] < rows[0].values["train_loss"]
    assert out.best_step is not None and out.best["train_loss"] == min(
        r.values["train_loss"] for r in rows if r.step % 8 == 0
    )


def test_crash_then_resume_from_the_newest_checkpoint(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, eval_every=6, checkpoint_every=4)
    spec = T.spec_for(cfg)
    with pytest.raises(T.Crash):
        run(store, spec, obj=T.CrashingWrapper(crash_at=14))
    out = run(store, spec, epoch=1)
    assert out.resumed_from == (0, 12) and out.status == "completed"
    att = records.decode(store.read(layout.attempt(0, 1)), records.Attempt)
    assert att.resumed_from == (0, 12)
    rows = lineage.canonical_rows(store, 0, 1)
    assert [r.step for r in rows] == sorted({r.step for r in rows})  # no gap, no duplicate
    ref = open_store(f"memory://{uuid.uuid4().hex}")
    run(ref, spec)
    assert [(r.step, r.values) for r in rows] == [
        (r.step, r.values) for r in lineage.canonical_rows(ref, 0, 0)
    ]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_used(store: Store, damage: str) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, eval_every=6, checkpoint_every=4, keep_checkpoints=5)
    spec = T.spec_for(cfg)
    with pytest.raises(T.Crash):
        run(store, spec, obj=T.CrashingWrapper(crash_at=14))
    key = layout.checkpoint(0, 0, 12)
    data = bytearray(store.read(key))
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside the tensor data: only the CRC check sees it
    else:
        del data[len(data) // 2 :]
    assert isinstance(store, MemoryStore)
    store.delete(key)
    store.create(key, bytes(data))
    with pytest.warns(CheckpointWarning, match="e0000-s00000012"):
        out = run(store, spec, epoch=1)
    assert out.resumed_from == (0, 8)


def test_a_checkpoint_of_another_config_is_refused_with_the_diff(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=2, optimizer={"lr": 0.01})
    with pytest.raises(T.Crash):
        run(store, T.spec_for(cfg), obj=T.CrashingWrapper(crash_at=13))
    other = T.tiny_config(batch_size=8, epochs=2, optimizer={"lr": 0.02})
    with pytest.raises(CheckpointError, match=r"train\.optimizer\.lr: 0\.01 \(checkpoint\) -> 0\.02 \(now\)"):
        run(store, T.spec_for(other), epoch=1)
    assert not store.exists(layout.attempt(0, 1))  # refused before the attempt started


class StopAfter:
    """A fence whose holder asks the trial to stop once ``n`` steps were seen by progress."""

    def __init__(self) -> None:
        self.should_stop = False
        self.checks = 0

    def check(self) -> None:
        self.checks += 1


def test_stop_request_checkpoints_and_returns_stopped(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, log_every=1, eval_every=100)
    spec = T.spec_for(cfg)
    fence = StopAfter()

    def progress(step: int, values: Any) -> None:
        if step >= 7:
            fence.should_stop = True

    out = run(store, spec, fence=fence, progress=progress)
    assert out.status == "stopped" and out.checkpoint_step == out.steps == 8
    assert fence.checks > 0
    out2 = run(store, spec, epoch=1)
    assert out2.resumed_from == (0, 8) and out2.status == "completed" and out2.steps == 36


class LoseAfter:
    """A fence that reports the lease lost after ``n`` checks (and never asks for a stop)."""

    should_stop = False

    def __init__(self, n: int) -> None:
        self.n = n

    def check(self) -> None:
        self.n -= 1
        if self.n < 0:
            raise LeaseLost("taken over (test)")


def test_lease_lost_stops_every_write(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, eval_every=2, log_every=1)
    with pytest.raises(LeaseLost, match="taken over"):
        run(store, T.spec_for(cfg), fence=LoseAfter(4))  # attempt record + 3 writes
    written = [e.key for e in store.list(layout.trial_dir(0))]
    assert len([k for k in written if "/ckpt/" in k or "/metrics/" in k]) <= 3
    assert not any(k.endswith("s00000036.pt") for k in written)


def test_an_epoch_starts_once(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=1)
    spec = T.spec_for(cfg)
    run(store, spec)
    entry = EntryPoint(kind="wrapper", obj=T.TinyWrapper, config_type=T.TinyConfig)
    with pytest.raises(LeaseLost, match="attempt 0 was started"):
        execute_trial(entry, spec, store, 0, 0, fence=NoFence(), device="cpu", progress=False)


def test_smoke_trains_a_few_batches(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=50, model={"with_test": True})
    out = run(store, T.spec_for(cfg), smoke=True)
    assert out.status == "completed" and out.steps == 3
    assert {"val_accuracy", "test_accuracy"} <= set(out.metrics)
    assert ckpt_steps(store) == [3]


def test_no_host_sync_between_log_points(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = itertools.count()
    original = torch.Tensor.item

    def counting_item(self: torch.Tensor) -> Any:
        # ablator's own syncs only (torch's Adam reads its CPU step counter with .item())
        if sys._getframe(1).f_globals.get("__name__", "").startswith("ablator."):
            next(calls)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    cfg = T.tiny_config(batch_size=8, epochs=3, log_every=9, eval_every=100)
    out = run(store, T.spec_for(cfg), metric=None)
    assert out.steps == 36
    assert next(calls) == 36 // 9  # one sync per log point, none per step


def test_log_progress_lines(store: Store) -> None:
    buf = io.StringIO()
    cfg = T.tiny_config(batch_size=8, epochs=2, eval_every=12)
    run(store, T.spec_for(cfg), progress=LogProgress(buf))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "trial 0 e0 | start at step 0/24"
    assert lines[-1].startswith("trial 0 e0 | step 24/24 | epoch 1 |") and "val_accuracy" in lines[-1]
    assert "it/s" in lines[-1] and "eta 0s" in lines[-1]


def test_bar_progress_writes_to_its_file(store: Store) -> None:
    buf = io.StringIO()
    from ablator.train.progress import BarProgress

    run(store, T.spec_for(T.tiny_config(batch_size=8, epochs=1)), progress=BarProgress(buf))
    text = buf.getvalue()
    assert "trial 0 e0" in text and "12/12" in text and "val_accuracy" in text


def test_deterministic_mode_is_restored_after_the_trial(store: Store) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    out = run(store, T.spec_for(T.tiny_config(batch_size=8, epochs=1, deterministic=True)))
    assert out.status == "completed"
    assert torch.are_deterministic_algorithms_enabled() == before
