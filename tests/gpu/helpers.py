"""Real agent processes on a host whose GPUs are faked at the edges (``fakegpu``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import child_env

from ablator.experiment import experiment_from_dict
from ablator.ops import launch
from tests.gpu.fakegpu import FakeSmi

ROOT = Path(__file__).resolve().parents[2]
GPUTOY = "tests.gpu.gputoy:trial"
LIMITS = {
    "max_attempts": 2,
    "max_takeovers": 5,
    "lease_seconds": 3.0,
    "heartbeat_seconds": 0.5,
    "stall_seconds": 120,
}


def gpu_experiment(
    *, gpu: str = "preferred", trials: int = 3, config: dict[str, Any] | None = None, min_mb: int = 0
) -> dict[str, Any]:
    return {
        "name": "gputoy",
        "entry": GPUTOY,
        "config": config or {},
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": LIMITS,
        "resources": {"gpu": gpu, "min_gpu_memory_mb": min_mb},
    }


def launch_exp(store: str, exp: dict[str, Any]) -> None:
    launch(experiment_from_dict(exp), store)


def agent_env(tmp: Path, smi: FakeSmi, **extra: str) -> dict[str, str]:
    env = child_env()
    env["PATH"] = smi.path_env(env.get("PATH", ""))
    env["ABLATOR_CACHE_DIR"] = str(tmp / "cache")
    env["ABLATOR_LOCK_DIR"] = str(tmp / "locks")
    for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUBLAS_WORKSPACE_CONFIG", "ABLATOR_DEVICE_CHECK"):
        env.pop(k, None)
    env.update(extra)
    return env


class Agent:
    """``python -m ablator.agent STORE ARGS`` (no ``--cpu``: it looks for GPUs)."""

    def __init__(self, store: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ablator.agent", store, *args],
                cwd=ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Any]:
    started: list[Agent] = []

    def start(store: str, env: dict[str, str], *args: str) -> Agent:
        a = Agent(store, env, tmp_path / f"agent-{len(started)}.log", *args)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill()


def traces(trace_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(trace_dir.glob("*-e*.json"))]
