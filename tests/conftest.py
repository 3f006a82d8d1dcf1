from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # for ``from s3server import ...`` in tests and helpers

from s3server import Faults, S3Server, running_s3  # noqa: E402

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server per test session on 127.0.0.1; AWS_* env vars point at it."""
    with running_s3() as server:
        yield server


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh bucket (and prefix) for one test: ``s3://bucket-N/exp``."""
    name = f"ablator-test-{os.getpid()}-{next(_bucket_ids)}"
    s3_server.make_bucket(name)
    return f"s3://{name}/exp"


@pytest.fixture
def subprocess_env(s3_server: S3Server) -> dict[str, str]:
    """Environment for child processes that must reach the S3 server and import ablator."""
    env = dict(os.environ)
    env.update(s3_server.env())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# --- S3 fault injection ------------------------------------------------------------------------

_fault_buckets = itertools.count()


@pytest.fixture
def s3_faults(s3_server: S3Server) -> Iterator[tuple[Faults, str]]:
    """(injector, bucket): a fresh bucket whose requests pass through a :class:`Faults`.

    Wraps the test server's app (``S3Server._app`` is its request-serialising wrapper) for the
    duration of one test; requests to other buckets pass untouched."""
    serialised = s3_server._app
    faults = Faults(serialised.app)
    bucket = f"ablator-faults-{uuid.uuid4().hex[:8]}-{next(_fault_buckets)}"
    s3_server.make_bucket(bucket)
    serialised.app = faults
    try:
        yield faults, bucket
    finally:
        serialised.app = faults.app
