"""``--slots-per-gpu auto`` with a real agent on one faked GPU (80 GB free, trials that peak at
1 GB): the first trial runs alone, the agent then packs more trials onto the GPU, and an
out-of-memory error while packed releases the trial (not a failure) and caps the GPU."""

from __future__ import annotations

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
    # Trials run out of memory when more than 2 share the GPU.
    config = {"mode": "oom_crowded", "crowd": 2, "steps": 32, "sleep": 0.25, "trace_dir": str(trace)}
    launch_exp(store, gpu_experiment(gpu="required", trials=6, config=config))
    env = agent_env(
        tmp_path, smi, ABLATOR_DEVICE_CHECK="tests.gpu.fakegpu:fake_cuda", FAKE_CUDA_PEAK_MB="1000"
    )
    agent = start_agent(store, env, "--slots-per-gpu", "auto", "--slots", "3")
    assert agent.wait(300) == 0, agent.output()
    out = agent.output()
    s = open_store(store)
    assert sorted(results(s)) == list(range(6))
    assert {t: f for t in range(6) for f in [records_of(s, t, "failed")] if f} == {}
    seen = traces(trace)
    first = min(seen, key=lambda t: (t["trial"], t["epoch"]))
    assert first["crowd"] == 1  # measured alone
    assert max(t["crowd"] for t in seen) >= 3  # packed up to the third slot ...
    releases = [r for t in range(6) for r in records_of(s, t, "release").values()]
    assert releases and all(
        "CUDA out of memory on gpu0 while 3 trials shared it" in r.reason for r in releases
    )
    assert "started on gpu0" in out
    # ... and after the out-of-memory error never more than two at once
    usage = read(s, layout.usage(first["trial"], 0), records.Usage)
    assert usage.peak_gpu_memory_mb == 1000 + 512 and usage.sharing == 1
