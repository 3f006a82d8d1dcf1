"""CPU workers of all the agents on one host split its cores (local lock files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ablator.agent import devices


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ABLATOR_LOCK_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.procs
def test_slots_count_across_processes(lock_dir: Path) -> None:
    assert devices.local_cpu_slots() == 1  # nobody: still one share
    first = devices.take_cpu_slot_lock()
    second = devices.take_cpu_slot_lock()
    try:
        assert devices.local_cpu_slots() == 2
        assert devices.cpu_threads_share() == max(1, (os.cpu_count() or 1) // 2)
        # A worker (another process) sees the locks its parent agent holds.
        code = "from ablator.agent.devices import local_cpu_slots; print(local_cpu_slots())"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
        )
        assert out.stdout.strip() == "2"
    finally:
        first.release()
        second.release()
    assert devices.local_cpu_slots() == 1  # released slots no longer count


def test_cpu_slots_hold_distinct_locks(lock_dir: Path) -> None:
    slots, _ = devices.plan_slots(cpu=True, gpus_arg=None, slots=3, slots_per_gpu=1, found=[])
    try:
        assert len(slots) == 3
        assert devices.local_cpu_slots() == 3
    finally:
        for s in slots:
            s.release()
    assert devices.local_cpu_slots() == 1
