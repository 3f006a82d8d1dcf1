"""Fixtures every test folder shares: the moto S3 server, one store-backend fixture
(``backend`` and ``store_url``), and the environment of child processes. Helper functions
(``child_env``, ``ablator_cli``, ``put_claim``) are in ``testkit.py``."""

from __future__ import annotations

import itertools
import os
import platform
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # for ``from s3server import ...`` in tests and helpers

from s3server import Faults, S3Server, running_s3  # noqa: E402
from testkit import child_env  # noqa: E402

from ablator.store import memory as memory_backend  # noqa: E402

PROCESS_BACKENDS = ["posix", "s3"]
"""Backends that other processes can open too (``memory://`` lives in one process); a folder's
conftest overrides ``backend`` to test another set (``tests/store`` adds memory)."""

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
    return child_env(**s3_server.env())


@pytest.fixture(params=PROCESS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of a test: ``posix`` (a local folder), ``s3`` (the moto server) or,
    where a folder's conftest adds it, ``memory``."""
    return str(request.param)


@pytest.fixture
def make_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """``make_url(name)``: the URL of a fresh store called ``name`` on the test's backend. Stores
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
def store_url(make_url: Callable[[str], str]) -> str:
    """A fresh, empty store on the test's backend."""
    return make_url("store")


@pytest.fixture
def backend_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """:func:`testkit.child_env`, plus the S3 server's address when the backend is S3 (the S3
    server is started only then)."""
    if backend == "s3":
        return dict(request.getfixturevalue("subprocess_env"))
    return child_env()


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


# --- the ``procs`` marker ------------------------------------------------------------------------
# ``pytest -m "not procs"`` is the fast unit loop: no test in it starts a process. Tests that do
# are marked ``@pytest.mark.procs`` (or ``pytestmark`` for a whole module); a test that asks for a
# fixture that exists to start processes is marked here. A test that starts a process without
# the marker is named at the end of the run (an audit hook sees every spawn), so the marker
# stays true as tests are added.

PROCESS_FIXTURES = frozenset(
    {
        "agents",
        "agent_env",
        "subprocess_env",
        "backend_env",
        "child_env",
        "serve_env",
        "servers",
        "cli_env",
        # tests/engines/test_slurm.py: a Slurm cluster (slurmctld, slurmd) and jobs on it
        "slurm_cluster",
        "time_limited",
    }
)
_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.spawn", "os.exec"}
)
_current: list[pytest.Item] = []
_unmarked_spawners: dict[str, str] = {}


def _on_audit(event: str, args: tuple[object, ...]) -> None:
    if event in _SPAWN_EVENTS and _current:
        item = _current[-1]
        if item.get_closest_marker("procs") is None:
            _unmarked_spawners.setdefault(item.nodeid, event)


# Every attempt records platform.platform(), whose first call in a process runs `uname -p` (the
# processor) and caches it: asked here, before the hook, so that no in-process trial test is
# blamed for a spawn that belongs to whichever of them happens to run first.
platform.platform()
sys.addaudithook(_on_audit)  # audit hooks cannot be removed; this one only reads a list


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.procs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unmarked_spawners:
        terminalreporter.section("tests that start processes without @pytest.mark.procs")
        for nodeid, event in sorted(_unmarked_spawners.items()):
            terminalreporter.write_line(
                f"{nodeid} ({event}): mark it, so that -m 'not procs' stays process-free"
            )
