"""The trainer's device-facing parts with torch.cuda's queries monkeypatched (no GPU here): CUDA
RNG states follow the training device, warn-only determinism, the environment names the GPU the
trial trains on, bf16 on pre-Ampere GPUs warns. A real-GPU version of the resume check is in
benchmarks/gpu_check.py."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from ablator.config import TrainConfig
from ablator.train import execute, seeding


class FakeCudaRng:
    """Two CUDA devices' RNG states and a current device, as torch.cuda would keep them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, current: int = 0) -> None:
        self.states = {
            0: torch.full((16,), 10, dtype=torch.uint8),
            1: torch.full((16,), 11, dtype=torch.uint8),
        }
        self.current = current
        self.names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA A100-SXM4-40GB"}
        m = monkeypatch
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "is_initialized", lambda: True)
        m.setattr(torch.cuda, "device_count", lambda: 2)
        m.setattr(torch.cuda, "current_device", lambda: self.current)
        m.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[0].clone(), self.states[1].clone()])
        m.setattr(torch.cuda, "set_rng_state", self.set_state)
        m.setattr(torch.cuda, "get_device_name", lambda device=None: self.names[int(device or 0)])

    def set_state(self, state: torch.Tensor, device: Any = "cuda") -> None:
        index = device if isinstance(device, int) else self.current
        self.states[index] = state.clone()


def test_cuda_rng_of_the_training_device_goes_onto_the_resuming_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trained on cuda:1 (`ablator run --device cuda:1`), resumed by a worker whose only GPU is
    cuda:0: device 1's state must continue on device 0. (Before: restored by position, so
    device 0 got device 0's unrelated state and the random stream silently changed.)"""
    fake = FakeCudaRng(monkeypatch)
    saved = seeding.capture_rng(torch.device("cuda:1"))
    assert saved["cuda_device"] == 1 and saved["device"] == "cuda:1"
    fake.states = {0: torch.zeros(16, dtype=torch.uint8), 1: torch.zeros(16, dtype=torch.uint8)}
    seeding.restore_rng(saved, torch.device("cuda:0"))
    assert torch.equal(fake.states[0], torch.full((16,), 11, dtype=torch.uint8))
    assert torch.equal(fake.states[1], torch.zeros(16, dtype=torch.uint8))  # untouched
    # "cuda" (no index) means the current device, on both sides
    fake.current = 1
    saved = seeding.capture_rng(torch.device("cuda"))
    assert saved["cuda_device"] == 1
    fake.current = 0
    seeding.restore_rng(saved)
    assert torch.equal(fake.states[0], torch.zeros(16, dtype=torch.uint8))  # device 1's zeros
    # an old checkpoint without cuda_device: by position, as before
    old = {k: v for k, v in saved.items() if k not in ("cuda_device", "device")}
    old["cuda"] = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 8, dtype=torch.uint8)]
    seeding.restore_rng(old)
    assert fake.states[0][0].item() == 7 and fake.states[1][0].item() == 8


@pytest.mark.procs  # platform.platform() runs a command
def test_environment_names_the_training_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCudaRng(monkeypatch)
    assert execute.collect_environment(device=torch.device("cuda:1")).gpu == "NVIDIA A100-SXM4-40GB"
    assert execute.collect_environment(device=torch.device("cpu")).gpu is None
    env = execute.collect_environment(device=torch.device("cuda:0"))
    assert env.gpu == "NVIDIA H100 80GB HBM3"
    assert execute._on_device(env, torch.device("cpu")).gpu is None  # a CPU attempt in a GPU worker


def test_bf16_on_a_pre_ampere_gpu_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCudaRng(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.warns(execute.AmpWarning, match=r"bf16 on NVIDIA A100-SXM4-40GB \(compute capability 7.5\)"):
        execute.check_amp(TrainConfig(amp="bf16"), torch.device("cuda:1"))
    execute.check_amp(TrainConfig(amp="fp16"), torch.device("cuda:1"))  # no warning (filterwarnings=error)
    execute.check_amp(TrainConfig(amp="bf16"), torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    execute.check_amp(TrainConfig(amp="bf16"), torch.device("cuda:0"))


def _nondeterministic_op() -> None:
    # put_ without accumulate has no deterministic implementation (on the CPU too)
    torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]), accumulate=False)


def test_warn_only_determinism_names_the_operations(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deterministic: warn` runs operations that have no deterministic implementation and
    says which (the trial is then not bit-exact); `true` still refuses them."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # restored (unset) after the test
    assert TrainConfig(deterministic="warn").deterministic == "warn"
    refused = pytest.raises(RuntimeError, match="does not have a deterministic implementation")
    with refused, seeding.deterministic_mode(True):
        _nondeterministic_op()
    with caplog.at_level("WARNING", logger="ablator.train"), seeding.deterministic_mode("warn") as seen:
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        _nondeterministic_op()
        _nondeterministic_op()
    assert seen == ["put_"]
    assert "put_ has no deterministic implementation; this trial is not bit-exact" in caplog.text
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"  # set, and left for cuBLAS
