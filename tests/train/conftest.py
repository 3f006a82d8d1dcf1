from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import testkit
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # ``import trainlib`` here and in entry points "trainlib:..."


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the machine is shared, and bit-identity across processes needs the
    same thread count on both sides."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child processes: ablator and trainlib importable, one thread."""
    return testkit.child_env(HERE, OMP_NUM_THREADS="1")
