"""Agents on a GPU host faked at its edges: an ``nvidia-smi`` on PATH, and either this machine's
real CPU-only torch (a GPU slot that really cannot run CUDA) or a device check that makes torch
pretend (``tests.gpu.fakegpu:fake_cuda``). The agents, workers, store and trials are real."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from testkit import ablator_cli

from ablator import layout, records
from ablator.store import open_store
from tests.agent.conftest import read, records_of, results
from tests.gpu.fakegpu import FakeSmi, gpu
from tests.gpu.helpers import agent_env, gpu_experiment, launch_exp, start_agent, traces

pytestmark = pytest.mark.procs  # every test here starts processes

__all__ = ["start_agent"]  # the fixture

H100 = "GPU-8f0e2f43-1111-2222-3333-444455556666"
A100 = "GPU-5d5ba0d6-aaaa-bbbb-cccc-ddddeeeeffff"
FAKE_CUDA = "tests.gpu.fakegpu:fake_cuda"


def _status(store: str, env: dict[str, str]) -> dict[str, Any]:
    import json

    out = ablator_cli("status", store, "--json", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def _failures(store: Any, n: int) -> dict[int, Any]:
    return {t: f for t in range(n) for f in [records_of(store, t, "failed")] if f}


def test_gpu_slot_that_cannot_run_cuda_fails_no_trial_and_preferred_falls_back(
    tmp_path: Path, start_agent: Any
) -> None:
    """A CPU-only torch on a GPU host: the worker's device check fails (for real), three times,
    and the GPU goes out of service; `gpu: preferred` trials then run on the CPU and none
    fails. (Before: every trial failed at once with "CUDA is not available".)"""
    smi = FakeSmi(tmp_path, [gpu(0, H100)])
    store = str(tmp_path / "store")
    launch_exp(store, gpu_experiment(gpu="preferred", trials=3))
    agent = start_agent(store, agent_env(tmp_path, smi))
    assert agent.wait() == 0, agent.output()
    out = agent.output()
    assert "gpu0 is out of service: 3 device errors in a row" in out and "CPU-only build" in out
    s = open_store(store)
    assert sorted(results(s)) == [0, 1, 2] and _failures(s, 3) == {}
    attempts = [read(s, layout.attempt(t, 0), records.Attempt) for t in range(3)]
    assert all(a.environment.gpu is None for a in attempts)  # they ran on the CPU


def test_required_gpu_out_of_service_exits_and_status_says_why(tmp_path: Path, start_agent: Any) -> None:
    """`gpu: required` and the only GPU fails its check: the agent exits 1 with the reason,
    no trial failed, and `ablator status` shows the GPU out of service."""
    smi = FakeSmi(tmp_path, [gpu(0, H100)])
    store = str(tmp_path / "store")
    launch_exp(store, gpu_experiment(gpu="required", trials=2))
    env = agent_env(tmp_path, smi, ABLATOR_DEVICE_CHECK=FAKE_CUDA, FAKE_CUDA_BROKEN="1")
    agent = start_agent(store, env)
    assert agent.wait() == 1, agent.output()
    out = agent.output()
    assert "every GPU of this agent is out of service" in out and "uncorrectable ECC error" in out
    s = open_store(store)
    assert _failures(s, 2) == {} and results(s) == {}
    report = _status(store, env)
    (a,) = report["agents"]
    assert len(a["out_of_service"]) == 1 and a["out_of_service"][0].startswith(
        f"gpu0 ({H100}): 3 device errors"
    )


def test_device_errors_in_trials_do_not_count_against_attempts(tmp_path: Path, start_agent: Any) -> None:
    """The device passes its check but every trial on it hits a device error (an ECC error):
    each is released, not failed; after three the GPU is out of service and the `preferred`
    trial finishes on the CPU, with max_attempts=2 never reached."""
    smi = FakeSmi(tmp_path, [gpu(0, H100)])
    store = str(tmp_path / "store")
    trace = tmp_path / "trace"
    trace.mkdir()
    launch_exp(
        store,
        gpu_experiment(gpu="preferred", trials=1, config={"mode": "device_error", "trace_dir": str(trace)}),
    )
    agent = start_agent(store, agent_env(tmp_path, smi, ABLATOR_DEVICE_CHECK=FAKE_CUDA))
    assert agent.wait() == 0, agent.output()
    s = open_store(store)
    assert list(results(s)) == [0] and _failures(s, 1) == {}
    releases = records_of(s, 0, "release")
    assert len(releases) == 3 and all("device error on gpu0" in r.reason for r in releases.values())
    devices = [t["device"] for t in traces(trace)]
    assert devices == ["cuda", "cuda", "cuda", "cpu"]


def test_inherited_uuid_prefix_reaches_the_worker_and_the_parent_sees_no_gpu(
    tmp_path: Path, start_agent: Any
) -> None:
    """CUDA_VISIBLE_DEVICES=GPU-5d5ba0 (a UUID prefix, as a device plugin may set it) on a host
    whose GPU 0 is another card: the worker gets that token in nvidia-smi's order, the agent
    process imports the user's module with no GPU visible, cuBLAS's workspace is set when the
    worker starts, and the attempt names the card it ran on."""
    smi = FakeSmi(tmp_path, [gpu(0, H100), gpu(1, A100, "NVIDIA A100-SXM4-40GB", 40960, 40000)])
    store = str(tmp_path / "store")
    trace = tmp_path / "trace"
    trace.mkdir()
    imports = tmp_path / "imports.txt"
    launch_exp(store, gpu_experiment(gpu="required", trials=2, config={"trace_dir": str(trace)}))
    env = agent_env(
        tmp_path,
        smi,
        ABLATOR_DEVICE_CHECK=FAKE_CUDA,
        FAKE_CUDA_NAME="NVIDIA A100-SXM4-40GB",
        CUDA_VISIBLE_DEVICES="GPU-5d5ba0",
        GPUTOY_IMPORTS=str(imports),
    )
    agent = start_agent(store, env, "--slots-per-gpu", "2")
    assert agent.wait() == 0, agent.output()
    seen = traces(trace)
    assert len(seen) == 2
    for t in seen:
        assert (t["device"], t["visible"], t["order"], t["cublas"]) == (
            "cuda",
            "GPU-5d5ba0",
            "PCI_BUS_ID",
            ":4096:8",
        )
        assert t["threads"] == max(1, (os.cpu_count() or 1) // 2)  # its share of the cores: two slots
    by_pid = dict(line.split(" ", 1) for line in imports.read_text().splitlines())
    assert by_pid[str(agent.proc.pid)] == "''"  # the agent process saw no GPU when it imported the module
    assert "'GPU-5d5ba0'" in [v for k, v in by_pid.items() if k != str(agent.proc.pid)]
    s = open_store(store)
    att = read(s, layout.attempt(0, 0), records.Attempt)
    assert att.environment.gpu == "NVIDIA A100-SXM4-40GB"
    hb = read(s, next(e.key for e in s.list(layout.AGENTS_DIR)), records.Heartbeat)
    assert [(g.index, g.uuid) for g in hb.gpus] == [(1, A100)]
    usage = read(s, layout.usage(0, 0), records.Usage)
    assert usage.peak_gpu_memory_mb == 100 + 512 and usage.gpu == "NVIDIA A100-SXM4-40GB"


def test_entry_module_using_cuda_at_import_is_refused_with_advice(tmp_path: Path, start_agent: Any) -> None:
    """A module-level `.cuda()`: the agent's process, which sees no GPU, refuses the entry point
    with advice (exit 1, no traceback) instead of making a CUDA context of its own."""
    smi = FakeSmi(tmp_path, [gpu(0, H100)])
    store = str(tmp_path / "store")
    exp = gpu_experiment(gpu="required", trials=1)
    exp["entry"] = "tests.gpu.cudaimport:trial"
    launch_exp(store, exp)
    agent = start_agent(store, agent_env(tmp_path, smi, ABLATOR_DEVICE_CHECK=FAKE_CUDA))
    assert agent.wait() == 1, agent.output()
    out = agent.output()
    assert "the agent's own process sees no GPU" in out and "Move .cuda()" in out
    assert "Traceback" not in out
