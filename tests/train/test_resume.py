"""Exact resume: a run killed with SIGKILL after step k and resumed in a new process ends with
bit-identical weights and metric history to an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
import trainlib as T
from testkit import put_claim

from ablator import entrypoint, layout, lineage, records
from ablator.entrypoint import EntryPoint
from ablator.store import open_store
from ablator.store.base import Store
from ablator.train import NoFence, Outcome, execute_trial
from ablator.train.checkpoint import deserialize

CHILD = Path(__file__).resolve().parent / "child.py"
METRIC = ("val_accuracy", "max")


def run_inline(store: Store, entry_name: str, spec: records.TrialSpec, epoch: int = 0) -> Outcome:
    put_claim(store, spec.index, epoch, spec=spec, agent="test")
    entry = entrypoint.resolve_entry(entry_name)
    return execute_trial(
        entry, spec, store, spec.index, epoch, fence=NoFence(), device="cpu", progress=False, metric=METRIC
    )


def _child(
    store_dir: Path, epoch: int, entry: str, spec: records.TrialSpec, env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(CHILD), str(store_dir), str(spec.index), str(epoch), entry]
    cmd += [msgspec.json.encode(spec).decode(), "--metric", *METRIC, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def start_killed(
    store_dir: Path, entry: str, spec: records.TrialSpec, env: dict[str, str], block_at: int, wait_ckpt: int
) -> subprocess.Popen[str]:
    """Attempt 0 in a child process that blocks once it passed ``block_at`` with checkpoint
    ``wait_ckpt`` in the store (see child.py)."""
    return _child(store_dir, 0, entry, spec, env, "--block-at", str(block_at), "--wait-ckpt", str(wait_ckpt))


def kill_and_resume(
    proc: subprocess.Popen[str], store_dir: Path, entry: str, spec: records.TrialSpec
) -> Outcome:
    """SIGKILL the blocked child, then resume as attempt 1 in this process (a new process
    relative to the killed one)."""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # blocks until READY (or the child died)
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    return run_inline(open_store(store_dir), entry, spec, epoch=1)


def final_state(store: Store, trial: int, epoch: int, step: int) -> dict[str, Any]:
    key = layout.checkpoint(trial, epoch, step)
    return deserialize(store.read(key), key)


def history(store: Store, trial: int, epoch: int) -> list[tuple[int, dict[str, float]]]:
    return [(r.step, r.values) for r in lineage.canonical_rows(store, trial, epoch)]


def assert_same_tensors(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


ADAMW_NOISE = dict(
    # shuffled data with noise drawn by the dataset from the global RNG, dropout, a per-epoch
    # schedule, evaluations and checkpoints off the log grid
    batch_size=8,
    epochs=3,
    eval_every=6,
    checkpoint_every=5,
    log_every=4,
    scheduler={"name": "step", "gamma": 0.5},
    optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    model={"noise": 0.2},
)


def check_same_run(store: Store, ref_store: Store, out: Outcome, ref: Outcome) -> None:
    """Same metric history, outcome and final checkpoint (weights, optimizer, schedule, RNG...)."""
    assert out.status == ref.status and out.steps == ref.steps
    assert history(store, 0, 1) == history(ref_store, 0, 0)
    assert out.metrics == ref.metrics and out.best == ref.best and out.best_step == ref.best_step
    a, b = final_state(ref_store, 0, 0, ref.steps), final_state(store, 0, 1, out.steps)
    for part in ("model", "optimizer", "scheduler", "scaler", "rng", "loop", "window"):
        assert_same_tensors(a[part], b[part], part)


@pytest.mark.procs
def test_sigkill_and_resume_is_bit_identical(tmp_path: Path, child_env: dict[str, str]) -> None:
    cfg = T.tiny_config(**ADAMW_NOISE)
    spec = T.spec_for(cfg, seed=11)
    store_dir = tmp_path / "killed"
    proc = start_killed(store_dir, "trainlib:TinyWrapper", spec, child_env, block_at=22, wait_ckpt=20)
    ref_store = open_store(tmp_path / "reference")  # the uninterrupted run, while the child starts
    ref = run_inline(ref_store, "trainlib:TinyWrapper", spec)
    assert ref.status == "completed" and ref.resumed_from is None and ref.steps == 36

    out = kill_and_resume(proc, store_dir, "trainlib:TinyWrapper", spec)
    store = open_store(store_dir)
    # resumed mid-epoch (12 batches per epoch) from the newest checkpoint before the kill
    assert out.resumed_from is not None and out.resumed_from[0] == 0 and 20 <= out.resumed_from[1] < 22
    assert out.resumed_from[1] % 12 != 0
    # the killed attempt wrote rows past its last checkpoint; the lineage drops them
    assert max(r.step for r in lineage.canonical_rows(store, 0, 0)) >= 22
    check_same_run(store, ref_store, out, ref)


@pytest.mark.procs
def test_function_trial_sigkill_and_resume(tmp_path: Path, child_env: dict[str, str]) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, optimizer={"lr": 0.05})
    spec = T.spec_for(cfg, seed=5)
    store_dir = tmp_path / "killed"
    proc = start_killed(store_dir, "trainlib:tiny_trial", spec, child_env, block_at=24, wait_ckpt=20)
    ref_store = open_store(tmp_path / "reference")
    ref = run_inline(ref_store, "trainlib:tiny_trial", spec)
    out = kill_and_resume(proc, store_dir, "trainlib:tiny_trial", spec)
    store = open_store(store_dir)
    assert out.resumed_from == (0, 20)
    assert history(store, 0, 1) == history(ref_store, 0, 0)
    assert out.metrics == ref.metrics and out.best == ref.best
    a, b = final_state(ref_store, 0, 0, 36), final_state(store, 0, 1, 36)
    assert_same_tensors(a["state"], b["state"], "state")
    assert_same_tensors(a["ctx"], b["ctx"], "ctx")


@pytest.mark.parametrize(
    ("train", "crash_at"),
    [
        (ADAMW_NOISE, 17),
        # gradient accumulation with a short last group, bf16 autocast, clipping, per-step schedule
        (
            dict(
                batch_size=8,
                epochs=2,
                grad_accum=3,
                amp="bf16",
                grad_clip=0.5,
                eval_every=3,
                checkpoint_every=2,
                log_every=3,
                scheduler={"name": "warmup_cosine", "warmup_steps": 3},
                optimizer={"name": "sgd", "lr": 0.05, "args": {"momentum": 0.9}},
                model={"n_samples": 104, "with_test": True},
            ),
            7,
        ),
        # fp16 with a GradScaler, a plateau schedule on the metric, early stopping state
        (
            dict(
                batch_size=8,
                epochs=3,
                amp="fp16",
                eval_every=4,
                early_stopping_patience=20,
                scheduler={"name": "plateau", "patience": 1},
                optimizer={"lr": 0.02},
            ),
            14,
        ),
    ],
    ids=["adamw-noise", "accum-bf16", "fp16-plateau"],
)
def test_crash_and_resume_is_bit_identical(tmp_path: Path, train: dict[str, Any], crash_at: int) -> None:
    """The same exactness after an exception (in-process, so many configurations stay cheap)."""
    cfg = T.tiny_config(**train)
    spec = T.spec_for(cfg, seed=2)
    ref_store = open_store(tmp_path / "reference")
    ref = run_inline(ref_store, "trainlib:TinyWrapper", spec)
    store = open_store(tmp_path / "crashed")
    put_claim(store, 0, 0, spec=spec, agent="test")
    entry = EntryPoint(kind="wrapper", obj=T.CrashingWrapper(crash_at=crash_at), config_type=T.TinyConfig)
    with pytest.raises(T.Crash):
        execute_trial(entry, spec, store, 0, 0, fence=NoFence(), device="cpu", progress=False, metric=METRIC)
    out = run_inline(store, "trainlib:TinyWrapper", spec, epoch=1)
    assert out.resumed_from is not None and out.resumed_from[1] < crash_at
    check_same_run(store, ref_store, out, ref)


def test_outcome_json_round_trip() -> None:
    # the child hands its outcome over as JSON: the struct must survive it unchanged
    o = Outcome(
        status="diverged", metrics={"a": 1.5}, best={"a": 1.0}, best_step=3, steps=4, resumed_from=(0, 2)
    )
    assert msgspec.json.decode(msgspec.json.encode(o), type=Outcome) == o
    assert json.loads(msgspec.json.encode(o))["resumed_from"] == [0, 2]


@pytest.mark.procs  # DataLoader workers are forked processes
def test_resume_with_loader_workers_is_bit_identical(tmp_path: Path) -> None:
    """Worker processes draw the augmentation noise: their seeds come from the epoch's generator,
    so re-reading the consumed batches reproduces the stream."""
    cfg = T.tiny_config(batch_size=8, epochs=2, eval_every=6, checkpoint_every=5, model={"noise": 0.3})
    spec = T.spec_for(cfg, seed=4)
    ref_store = open_store(tmp_path / "reference")
    ref = run_inline(ref_store, "trainlib:WorkersWrapper", spec)
    store = open_store(tmp_path / "crashed")
    put_claim(store, 0, 0, spec=spec, agent="test")
    entry = EntryPoint(kind="wrapper", obj=T.CrashingWorkersWrapper(crash_at=17), config_type=T.TinyConfig)
    with pytest.raises(T.Crash):
        execute_trial(entry, spec, store, 0, 0, fence=NoFence(), device="cpu", progress=False, metric=METRIC)
    out = run_inline(store, "trainlib:WorkersWrapper", spec, epoch=1)
    assert out.resumed_from == (0, 15)  # mid-epoch: 12 batches per epoch
    check_same_run(store, ref_store, out, ref)
