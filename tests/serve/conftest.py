"""Helpers of the dashboard tests: a real ``python -m ablator serve`` process, and a headless
Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import child_env

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A real ``python -m ablator serve STORE --port 0`` process; ``url`` is what it printed."""

    def __init__(self, store_url: str, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        args = [sys.executable, "-m", "ablator", "serve", store_url, "--port", "0", *extra]
        self._out = open(log, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        self.url = ""
        while not self.url:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("ablator serve:") and " at http://" in line:
                    self.url = line.split(" at ", 1)[1].strip()
            if self.proc.poll() is not None:
                raise AssertionError(f"ablator serve exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ablator serve printed no URL:\n{text}")
            time.sleep(0.05)
        self.base = self.url.split("?", 1)[0].rstrip("/")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        import json

        status, body = self.get(path, headers)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    env = child_env(ABLATOR_CACHE_DIR=str(tmp_path / "serve-cache"))
    env.pop("ABLATOR_SERVE_TOKEN", None)
    return env


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``servers(store_url, env, *flags)`` starts a server; all are stopped at the end."""
    pytest.importorskip("starlette", reason="ablator serve needs the 'serve' extra")
    pytest.importorskip("uvicorn", reason="ablator serve needs the 'serve' extra")
    started: list[Server] = []

    def start(store_url: str, env: dict[str, str], *extra: str) -> Server:
        s = Server(store_url, env, tmp_path / f"serve-{len(started)}.log", *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need playwright (dev extra)"
    )
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("the browser tests need Debian's chromium package (.ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A browser tab that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.close()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (names and bytes) and every folder: what 'no write' compares."""
    out: dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = ""
        for name in filenames:
            path = Path(dirpath) / name
            out[os.path.join(rel, name)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
