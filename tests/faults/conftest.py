"""Fixtures of the fault tests: a fault spec file that the test process and its children share
(``$ABLATOR_FAULTS``), and a store URL on a local folder or on the moto S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ablator.store import faults


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
