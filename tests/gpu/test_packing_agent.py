"""``--slots-per-gpu auto`` with a real agent on one faked GPU (80 GB free, trials that peak at
1 GB): the first trial runs alone, the agent then packs more trials onto the GPU, and an
out-of-memory error while packed releases the trial (not a failure) and caps the GPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, records
from ablator.store import open_store
from tests.agent.conftest import read, records_of, results
from tests.gpu.fakegpu import FakeSmi, gpu
from tests.gpu.helpers import agent_env, gpu_experiment, launch_exp, start_agent, traces

pytestmark = pytest.mark.procs  # every test here starts processes

__all__ = ["start_agent"]  # the fixture

H100 = "GPU-8f0e2f43-1111-2222-3333-444455556666"


def test_auto_packs_trials_and_backs_off_on_oom(tmp_path: Path, start_agent: Any) -> None:
    smi = FakeSmi(tmp_path, [gpu(0, H100, free=80000)])
    store = str(tmp_path / "store")
    trace = tmp_path / "trace"
    trace.mkdir()
    hold = tmp_path / "hold"
    # Trial 0 finishes at once (its peak is measured alone); the others keep running until
    # `hold` exists, so that the agent's packing, not the machine's speed, decides how many
    # run together. They run out of memory when more than 2 share the GPU.
    config = {"mode": "oom_crowded", "crowd": 2, "steps": 4, "sleep": 0.25, "trace_dir": str(trace)}
    launch_exp(store, gpu_experiment(gpu="required", trials=5, config={**config, "hold_file": str(hold)}))
    env = agent_env(
        tmp_path, smi, ABLATOR_DEVICE_CHECK="tests.gpu.fakegpu:fake_cuda", FAKE_CUDA_PEAK_MB="1000"
    )
    agent = start_agent(store, env, "--slots-per-gpu", "auto", "--slots", "3")
    s = open_store(store)

    def released() -> list[Any]:
        return [r for t in range(5) for r in records_of(s, t, "release").values()]

    deadline = time.monotonic() + 240  # a bound, not a measurement
    while not released():
        assert agent.proc.poll() is None, agent.output()
        assert time.monotonic() < deadline, f"no trial was released:\n{agent.output()}"
        time.sleep(0.2)
    hold.touch()
    assert agent.wait(240) == 0, agent.output()
    assert sorted(results(s)) == list(range(5))
    assert {t: f for t in range(5) for f in [records_of(s, t, "failed")] if f} == {}
    seen = traces(trace)
    first = min(seen, key=lambda t: (t["trial"], t["epoch"]))
    assert first["trial"] == 0 and first["crowd"] == 1  # measured alone
    assert max(t["crowd"] for t in seen) == 3  # packed up to the third slot, then ...
    assert all("CUDA out of memory on gpu0 while" in r.reason for r in released())
    # ... capped at two: no attempt that started after the back-off saw three running
    backed_off = max(r.wall_time for r in released())
    later = [t for t in seen if t["t"] > backed_off]  # the released trial's next attempt at least
    assert later and all(t["crowd"] <= 2 for t in later)
    usage = read(s, layout.usage(0, 0), records.Usage)
    assert usage.peak_gpu_memory_mb == 1000 + 512 and usage.sharing == 1
