from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # for ``from s3server import ...`` in tests and helpers

from s3server import S3Server, running_s3  # noqa: E402

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
