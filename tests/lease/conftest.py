"""Fixtures of the claim protocol tests: a store URL on a local folder or on S3 (the moto server
of ``tests/conftest.py``), the environment child processes need, and ``agents``: the agent
processes a test started, killed afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Agent

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "local":
        return str(tmp_path / "exp")
    return str(request.getfixturevalue("s3_url"))


@pytest.fixture
def env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "s3":
        return dict(request.getfixturevalue("subprocess_env"))
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


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
