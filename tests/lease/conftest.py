"""Fixtures of the claim protocol tests: ``agents``, the agent processes a test started, killed
afterwards. The store (``store_url`` on each of ``backend``) and the environment of child
processes (``backend_env``) come from ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Agent

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents started by a test register here; whatever is left is killed afterwards."""
    started: list[Agent] = []
    yield started
    for a in started:
        a.kill()
        for stream in (a.proc.stdout, a.proc.stderr):
            if stream is not None:
                stream.close()
