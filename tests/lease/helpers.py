"""Helpers of the claim protocol tests: :class:`Agent`, a real agent process
(``tests/lease/proc.py``) whose JSON-lines events a test can wait for."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROC = Path(__file__).with_name("proc.py")


class FakeClock:
    """A clock the test moves by hand (for Membership/Claimer/Liveness ``clock=``)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def spec(i: int) -> Any:
    """A resolved trial for index ``i`` (what ``new_spec`` returns in these tests)."""
    from ablator import records

    return records.TrialSpec(index=i, config={"i": i}, config_hash=f"h{i}", seed=i)


class Wrapped:
    """A store wrapper: counts operations per thread and lets a test hook each one.

    ``hooks[name](key, call)`` replaces operation ``name``; ``call()`` runs the real one."""

    OPS = ("read", "get", "list", "list_dirs", "stat", "exists", "create", "replace", "delete")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.read_only = inner.read_only
        self.counts: dict[int, int] = {}
        self.log: list[tuple[str, str]] = []
        self.hooks: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.OPS:
            return attr

        def op(*args: Any, **kwargs: Any) -> Any:
            ident = threading.get_ident()
            self.counts[ident] = self.counts.get(ident, 0) + 1
            key = str(args[0]) if args else ""
            self.log.append((name, key))
            hook = self.hooks.get(name)
            if hook is not None:
                return hook(key, lambda: attr(*args, **kwargs))
            return attr(*args, **kwargs)

        return op

    def ops(self, thread: int | None = None) -> int:
        return self.counts.get(thread if thread is not None else threading.get_ident(), 0)


class Agent:
    """One ``proc.py`` process. ``events`` collects every JSON line it printed."""

    def __init__(self, mode: str, url: str, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROC), mode, "--store", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                ev = json.loads(line)
                self.events.append(ev)
                self._q.put(ev)
        self._q.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, key: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event (old or new) that has ``key``."""
        for ev in self.events:
            if key in ev:
                return ev
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {key!r} event within {timeout}s; events {self.events}; stderr {self.stderr[-3000:]}"
                )
            try:
                got = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if got is None:
                self._err.join(5)
                raise AssertionError(
                    f"process exited without a {key!r} event; events {self.events}; stderr {self.stderr[-3000:]}"
                )
            if key in got:
                return got

    def all(self, key: str) -> list[Any]:
        return [ev[key] for ev in self.events if key in ev]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        self._err.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)
        self._err.join(5)
