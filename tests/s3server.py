"""A real S3 API server on loopback for tests: moto's WSGI app behind one lock.

moto checks a conditional PUT (``If-None-Match: *``) and then stores the object without a lock,
so two concurrent conditional PUTs can both win; real S3 never lets that happen. Serialising the
app's requests makes moto a faithful oracle of S3's guarantee (docs/store.md, S3).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Serialised:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self.lock:
            # Materialise the body inside the lock: the app may stream lazily.
            return list(self.app(environ, start_response))


class S3Server:
    """Start with :meth:`start`; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self._app = _Serialised(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 address, never the bytes of a unix socket path
        self.endpoint = f"http://{host}:{port}"

    def start(self) -> S3Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto/s3fs (in this or a child process) at the server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def make_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)


# --- fault injection in front of the server ---------------------------------------------------


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
    # An outage: match every request (of ``method``; "*" for any) until this unix time, however
    # many; ``times`` is then ignored.
    until: float | None = None
    key_prefix: str = ""  # only keys under this prefix (relative to the bucket)

    def matches(self, bucket: str, method: str, path: str, conditional: bool) -> bool:
        if self.bucket != bucket or (self.method != "*" and self.method != method):
            return False
        if self.until is not None:
            if time.time() >= self.until:
                return False
        elif self.times <= 0:
            return False
        if self.key_prefix and not path.split("/", 2)[-1].startswith(self.key_prefix):
            return False
        return self.conditional is None or self.conditional == conditional


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

    def outage(
        self, bucket: str, seconds: float, *, status: int = 503, code: str = "SlowDown", **kw: Any
    ) -> Rule:
        """Every request to ``bucket`` (``method=...``, ``key_prefix=...`` narrow it) is answered
        ``status``/``code`` for the next ``seconds``."""
        kw.setdefault("method", "*")
        method = kw.pop("method")
        return self.add(bucket, method, status, code, 0, until=time.time() + seconds, **kw)

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
                if r.matches(bucket, method, path, conditional):
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


@contextmanager
def running_s3() -> Iterator[S3Server]:
    server = S3Server().start()
    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
