"""An endpoint that answers HTTP but is not S3 (a web server, the wrong port) is named as
possibly not S3, not only as "bucket does not exist" (issue 12)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from testkit import ablator_cli, child_env


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the base class names it format
        pass


@pytest.fixture
def web_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.procs
def test_a_web_server_is_not_taken_for_s3_with_a_missing_bucket(web_server: int) -> None:
    url = f"http://127.0.0.1:{web_server}"
    env = child_env(
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=url,
        AWS_ENDPOINT_URL_S3=url,
    )
    out = ablator_cli("status", "s3://bucket/exp", env=env, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert (
        f"bucket 'bucket' was not found at {url}, and that endpoint did not answer an S3 ListBuckets"
        in out.stderr
    )
    assert "is it an S3 endpoint?" in out.stderr
