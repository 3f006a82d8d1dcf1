"""Fixtures and helpers of the fault tests: a fault spec file that the test process and its
children share (``$ABLATOR_FAULTS``), open-ended outages switched on and lifted by the test, and
a store URL on a local folder or on the moto S3 server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablator.store import faults
from ablator.store.faults import Rule, write_spec


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    """Where the fault spec lives (absent: no faults)."""
    return tmp_path / "faults.json"


@pytest.fixture
def faults_env(spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``$ABLATOR_FAULTS`` set for this process (and children started with ``os.environ``)."""
    monkeypatch.setenv(faults.ENV, str(spec_path))
    monkeypatch.delenv(faults.ENV_PROCESS, raising=False)
    yield spec_path


@pytest.fixture
def child_env(subprocess_env: dict[str, str], spec_path: Path) -> dict[str, str]:
    env = dict(subprocess_env)  # ablator importable (testkit.child_env) and the S3 server's address
    env[faults.ENV] = str(spec_path)
    env.pop(faults.ENV_PROCESS, None)
    return env


def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A store for ``backend``: a folder under ``tmp_path`` ("posix") or a fresh prefix on the
    moto S3 server ("s3")."""
    if backend == "posix":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("s3_url"))


def outage(spec_path: Path, error: str, prefix: str = "") -> None:
    """Every operation on keys under ``prefix`` fails, in every process, from now until
    :func:`lift` (the test switches it off once it saw what it waits for: any load)."""
    write_spec(spec_path, [Rule(start=time.time() - 1, end=None, error=error, prefix=prefix)])


def lift(spec_path: Path) -> None:
    """The store answers again."""
    write_spec(spec_path, [])
