"""Pieces of the agent that need no store: the pipe protocol, slots and device locks, the
worker fence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ablator import layout, records
from ablator.agent import protocol as P
from ablator.agent.devices import plan_slots
from ablator.errors import ConfigError, LeaseLost
from ablator.lease import AttemptFence
from ablator.records import GpuInfo
from ablator.store import open_store


def test_frames_survive_partial_reads_and_reject_garbage() -> None:
    spec = records.TrialSpec(index=3, config={"a": {"b": [1, 2]}}, config_hash="h", seed=9)
    msgs = [
        P.Progress(step=5),
        P.Finished(outcome=records.Outcome(status="completed", metrics={"m": 0.5}, resumed_from=(0, 4))),
    ]
    data = b"".join(P.frame(m) for m in msgs)
    reader = P.FrameReader()
    out: list[P.FromWorker] = []
    for i in range(len(data)):  # one byte at a time
        out.extend(reader.feed(data[i : i + 1]))
    assert out == msgs
    r, w = os.pipe()
    try:
        P.write_message(w, P.Run(trial=3, epoch=1, spec=spec, valid_until=1.5, agent_id="a"))
        got = P.read_to_worker(r)
        assert isinstance(got, P.Run) and got.spec == spec
        os.write(w, b"\xff\xff\xff\xff")
        with pytest.raises(ValueError, match="corrupt"):
            P.read_to_worker(r)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(ValueError, match="corrupt"):
        P.FrameReader().feed(b"\x7f\xff\xff\xff")


def test_cpu_and_gpu_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATOR_LOCK_DIR", str(tmp_path))
    slots, notes = plan_slots(cpu=True, gpus_arg=None, slots=3, slots_per_gpu=1, found=[])
    assert [s.label for s in slots] == ["cpu"] * 3 and notes == []
    assert slots[0].env() == {"CUDA_VISIBLE_DEVICES": ""}
    assert not slots[0].can_run(True, 0) and slots[0].can_run(False, 0)
    slots, notes = plan_slots(cpu=False, gpus_arg=None, slots=None, slots_per_gpu=1, found=[])
    assert [s.label for s in slots] == ["cpu"] and "found no GPU" in notes[0]
    gpus = [GpuInfo(index=0, memory_total_mb=16000), GpuInfo(index=1, memory_total_mb=80000)]
    first, _ = plan_slots(cpu=False, gpus_arg=None, slots=None, slots_per_gpu=2, found=gpus)
    assert [(s.label, s.env()["CUDA_VISIBLE_DEVICES"]) for s in first] == [
        ("gpu0", "0"),
        ("gpu0", "0"),
        ("gpu1", "1"),
        ("gpu1", "1"),
    ]
    assert not first[0].can_run(True, 40000) and first[2].can_run(True, 40000)
    # A second agent on this host finds the slots taken (local file locks) ...
    with pytest.raises(ConfigError, match="held by another agent"):
        plan_slots(cpu=False, gpus_arg="1", slots=None, slots_per_gpu=2, found=gpus)
    for s in first[2:]:
        s.release()
    # ... until the first one lets them go.
    second, notes = plan_slots(cpu=False, gpus_arg="0,1", slots=None, slots_per_gpu=2, found=gpus)
    assert [s.label for s in second] == ["gpu1", "gpu1"] and "held by other agents" in notes[0]
    with pytest.raises(ConfigError, match="no GPU"):
        plan_slots(cpu=False, gpus_arg="7", slots=None, slots_per_gpu=1, found=gpus)
    with pytest.raises(ConfigError, match="indexes"):
        plan_slots(cpu=False, gpus_arg="a,b", slots=None, slots_per_gpu=1, found=gpus)
    for s in first[:2] + second:
        s.release()


def test_worker_fence(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    fence = AttemptFence(store, 2, 0, valid_until=time.monotonic() + 60)
    fence.check()
    assert not fence.should_stop
    fence.request_stop()
    assert fence.should_stop
    fence.check()  # a stop request is not a lost lease
    store.create(layout.claim(2, 1), b"x")
    with pytest.raises(LeaseLost, match="taken over"):
        fence.check()
    late = AttemptFence(store, 5, 0, valid_until=time.monotonic() - 1)
    with pytest.raises(LeaseLost, match="renewed"):
        late.check()
    done = AttemptFence(store, 6, 0)  # no deadline: a private store's attempt
    store.create(layout.result(6), b"x")
    with pytest.raises(LeaseLost, match="result"):
        done.check()


def test_gpu_memory_requirement_uses_free_memory_when_known() -> None:
    from ablator.agent.devices import Slot

    busy = Slot(0, GpuInfo(index=0, memory_total_mb=80000, memory_free_mb=5000))
    idle = Slot(1, GpuInfo(index=1, memory_total_mb=80000, memory_free_mb=79000))
    unknown = Slot(2, GpuInfo(index=2))
    assert not busy.can_run(True, 40000) and busy.can_run(True, 0)
    assert idle.can_run(True, 40000)
    assert unknown.can_run(True, 40000)  # nothing reported: not refused on a guess
