"""Fixtures of the store tests: one ``store`` fixture over every backend (a local folder, memory,
S3 through the moto server of ``tests/conftest.py``), and a fault injector in front of that
server for the S3 fault tests."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


# --- S3 fault injection ------------------------------------------------------------------------


@dataclass
class Rule:
    """Answer the next ``times`` matching requests with ``status``/``code`` instead of moto's
    answer; with ``lost_reply``, moto handles the request first (the write happens) and the
    client gets the error anyway, as when a reply is lost on the way back."""

    bucket: str
    method: str
    status: int
    code: str
    times: int
    conditional: bool | None = None  # only PUTs with (True) / without (False) If-None-Match
    lost_reply: bool = False
    hits: int = 0


@dataclass
class Faults:
    """A WSGI middleware in front of the moto app (inside the server's lock, so requests are
    handled one at a time). Only requests to buckets named in a rule are ever touched."""

    app: Any
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, conditional)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, bucket: str, method: str, status: int, code: str, times: int, **kw: Any) -> Rule:
        rule = Rule(bucket, method, status, code, times, **kw)
        with self.lock:
            self.rules.append(rule)
        return rule

    def requests(self, bucket: str, method: str | None = None) -> list[tuple[str, str, bool]]:
        with self.lock:
            return [
                r
                for r in self.seen
                if r[1].split("/")[1:2] == [bucket] and (method is None or r[0] == method)
            ]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        conditional = environ.get("HTTP_IF_NONE_MATCH") == "*"
        bucket = path.split("/")[1] if path.count("/") >= 1 else ""
        rule = None
        with self.lock:
            self.seen.append((method, path, conditional))
            for r in self.rules:
                if (
                    r.bucket == bucket
                    and r.method == method
                    and r.times > 0
                    and (r.conditional is None or r.conditional == conditional)
                ):
                    r.times -= 1
                    r.hits += 1
                    rule = r
                    break
        if rule is None:
            return self.app(environ, start_response)
        if rule.lost_reply:
            # Let moto do the work (the object is stored), then "lose" its reply.
            list(self.app(environ, lambda *a, **k: lambda data: None))
        else:
            _drain(environ)
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{rule.code}</Code>'
            f"<Message>injected by the test</Message><RequestId>test</RequestId></Error>"
        ).encode()
        reason = {403: "Forbidden", 409: "Conflict", 500: "Internal Server Error", 503: "Slow Down"}.get(
            rule.status, "Error"
        )
        start_response(
            f"{rule.status} {reason}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]


def _drain(environ: dict[str, Any]) -> None:
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    length = environ.get("CONTENT_LENGTH")
    if length:
        stream.read(int(length))
    elif environ.get("wsgi.input_terminated"):
        stream.read()


_fault_buckets = itertools.count()


@pytest.fixture
def s3_faults(s3_server: Any) -> Iterator[tuple[Faults, str]]:
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
