"""Seeding and RNG state: everything a resumed trial needs to draw the same random numbers.

A trial is seeded once from its spec's seed (python ``random``, numpy's global generator, torch
on every device). Data order does not use those global generators: each training epoch gets its
own generator, derived from (seed, epoch), so that a resumed attempt can rebuild the epoch's batch
order without replaying anything. The global states are saved in every checkpoint as plain lists
and tensors (no numpy objects, nothing that ``torch.load(weights_only=True)`` refuses).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

# Streams of derived seeds, so that data order and evaluation never share a generator.
STREAM_TRAIN_DATA = 1
STREAM_EVAL_DATA = 2


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (numpy's SeedSequence: well mixed, stable
    across platforms and versions)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from ``seed``."""
    random.seed(seed)
    np.random.seed(derive_seed(seed, 0) & 0xFFFFFFFF)
    torch.manual_seed(derive_seed(seed, 0))  # also seeds every CUDA device


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (e.g. the training epoch)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python and numpy in a worker from the torch seed that
    the loader derived for it (the loader's own generator + worker id), as PyTorch's
    reproducibility notes recommend."""
    base = torch.initial_seed() % 2**32
    random.seed(base)
    np.random.seed(base)


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states as plain data and tensors (``weights_only``-loadable)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device is not None and device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        # A takeover onto a host with a different GPU count restores what it can.
        for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms and cuDNN settings for the duration of a trial, restored after.

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first use; it is set only when unset.
    """
    if not enabled:
        yield
        return
    prev_algos = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    added_env = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if added_env:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_algos, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        if added_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
