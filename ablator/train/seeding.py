"""Seeding and RNG state: everything a resumed trial needs to draw the same random numbers.

A trial is seeded once from its spec's seed (python ``random``, numpy's global generator, torch
on every device). Data order does not use those global generators: each training epoch gets its
own generator, derived from (seed, epoch), so that a resumed attempt can rebuild the epoch's batch
order without replaying anything. The global states are saved in every checkpoint as plain lists
and tensors (no numpy objects, nothing that ``torch.load(weights_only=True)`` refuses).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

log = logging.getLogger("ablator.train")

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


def _cuda_index(device: torch.device | None) -> int:
    """The CUDA device a trial trains on: ``device``'s index, else the current device."""
    if device is not None and device.type == "cuda" and device.index is not None:
        return int(device.index)
    return int(torch.cuda.current_device())


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states as plain data and tensors (``weights_only``-loadable).

    CUDA states are saved for every initialised device, with ``cuda_device``: the index of the
    device the trial trains on (``device``, else the current one), whose state a resume puts
    onto *its* training device (:func:`restore_rng`), whatever that one's index is.
    """
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
        if device is None or device.type == "cuda":
            state["cuda_device"] = _cuda_index(device)
    if device is not None:
        state["device"] = str(device)
    if device is not None and device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what :func:`capture_rng` saved. The training device's CUDA state goes onto
    ``device`` (else the current CUDA device): a trial trained on ``cuda:1`` and resumed by a
    worker that sees its GPU as ``cuda:0`` continues the same random stream. (Checkpoints from
    before ``cuda_device`` was recorded are restored by position.)"""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        trained_on = state.get("cuda_device")
        if trained_on is not None and 0 <= int(trained_on) < len(cuda_states):
            if device is None or device.type == "cuda":
                torch.cuda.set_rng_state(cuda_states[int(trained_on)], _cuda_index(device))
        else:
            # An old checkpoint: by position; a host with fewer GPUs restores what it can.
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())


#: what torch says of an operation without a deterministic implementation (warn-only mode)
_NONDETERMINISTIC = re.compile(r"^(.*?) does not have a deterministic implementation")


@contextlib.contextmanager
def deterministic_mode(mode: bool | str) -> Iterator[list[str]]:
    """Deterministic algorithms and cuDNN settings for the duration of a trial, restored after.

    ``mode``: False (off), True (an operation without a deterministic implementation raises:
    bit-exact or nothing) or ``"warn"`` (such operations run anyway; each is reported once on
    stderr, and the trial is then not bit-exact). Yields the list of those operations, filled
    as they run. On CUDA, ``AdaptiveAvgPool2d`` backward (every ResNet), ``interpolate``
    backward, ``NLLLoss``/``CrossEntropyLoss`` with class weights and ``scatter_add_``/
    ``index_add_`` on some versions have none (torch's docs list them all).

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first use in the process: agent workers
    set it when they start; here it is set only when unset (a process whose cuBLAS already ran
    keeps what it had).
    """
    seen: list[str] = []
    if not mode:
        yield seen
        return
    warn_only = mode == "warn"
    prev_algos = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        if not warn_only:
            yield seen
            return
        with warnings.catch_warnings():
            shown = warnings.showwarning

            def show(
                message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
            ) -> None:
                m = _NONDETERMINISTIC.match(str(message))
                if m is None:
                    shown(message, category, filename, lineno, file, line)
                    return
                op = m.group(1).strip()
                if op not in seen:
                    seen.append(op)
                    log.warning(
                        "deterministic: warn: %s has no deterministic implementation; this trial is not bit-exact",
                        op,
                    )

            warnings.showwarning = show
            # reported here once per operation instead of raised (warn-only is the point)
            warnings.filterwarnings("always", message=".*does not have a deterministic implementation")
            yield seen
    finally:
        torch.use_deterministic_algorithms(prev_algos, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        if seen:
            log.warning(
                "deterministic: warn: operations without a deterministic implementation ran: %s",
                ", ".join(seen),
            )
