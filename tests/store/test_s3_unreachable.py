"""An S3 endpoint that cannot be reached fails on first contact with a message naming it (not
after a minute of retries that look like a hang)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import ablator_cli, child_env

from ablator.errors import StoreError
from ablator.store import open_store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


def _env(port: int) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        # the test S3 server (another test's fixture) may have set this one, which wins over the above
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }


def test_unreachable_endpoint_is_a_store_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    for k, v in _env(port).items():
        monkeypatch.setenv(k, v)
    store = open_store("s3://nobucket/exp", read_only=True)
    with pytest.raises(
        StoreError, match=rf"cannot reach the S3 endpoint http://127.0.0.1:{port} \(bucket 'nobucket'\)"
    ):
        store.get("experiment.json")


@pytest.mark.procs
def test_cli_on_an_unreachable_endpoint_says_so() -> None:
    port = _closed_port()
    out = ablator_cli("trials", "s3://nobucket/exp", env=child_env(**_env(port)), timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in out.stderr
    assert "after 6 attempts" not in out.stderr  # not the retry loop of a store that was reachable


@pytest.mark.procs
def test_agent_says_which_endpoint_it_tries_and_fails_on_first_contact(tmp_path: Path) -> None:
    port = _closed_port()
    env = child_env(ABLATOR_CACHE_DIR=str(tmp_path / "cache"), **_env(port))
    out = subprocess.run(
        [sys.executable, "-m", "ablator.agent", "s3://nobucket/exp", "--cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"reading s3://nobucket/exp (S3 endpoint http://127.0.0.1:{port})" in out.stderr
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port} (bucket 'nobucket')" in out.stderr
