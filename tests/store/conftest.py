"""Fixtures of the store tests: one ``store`` fixture over every backend (a local folder, memory,
S3 through the moto server of ``tests/conftest.py``, whose ``s3_faults`` fixture puts a fault
injector in front of that server). ``backend`` overrides the root conftest's to add memory;
``make_url`` is the root conftest's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ablator.store import Store, open_store

BACKENDS = ["posix", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend, memory included (the store tests run in one process)."""
    return str(request.param)


@pytest.fixture
def store(make_url: Callable[[str], str]) -> Iterator[Store]:
    s = open_store(make_url("exp"))
    yield s
    s.close()
