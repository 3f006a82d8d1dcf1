"""Fixtures of the store tests: one ``store`` fixture over every backend (a local folder, memory,
S3 through the moto server of ``tests/conftest.py``, whose ``s3_faults`` fixture puts a fault
injector in front of that server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from ablator.store import Store, open_store
from ablator.store import memory as memory_backend

BACKENDS = ["posix", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_url(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """``make_url(name)``: the URL of a fresh store called ``name`` on the current backend. Stores
    of one test with different names are siblings (same folder, memory space or bucket)."""
    names: list[str] = []
    run = uuid.uuid4().hex[:8]
    s3_bucket = ""
    if backend == "s3":
        s3_bucket = urlparse(request.getfixturevalue("s3_url")).netloc

    def make(name: str) -> str:
        if backend == "posix":
            return str(tmp_path / name)
        if backend == "memory":
            names.append(f"{run}-{name}")
            return f"memory://{run}-{name}"
        return f"s3://{s3_bucket}/{name}" if name else f"s3://{s3_bucket}"

    yield make
    for n in names:
        memory_backend.clear(n)


@pytest.fixture
def store(make_url: Callable[[str], str]) -> Iterator[Store]:
    s = open_store(make_url("exp"))
    yield s
    s.close()
