"""Fault injection: a store wrapper that fails chosen operations for chosen seconds.

For testing how agents, workers and ``ablator run`` ride out a store that stops answering. Set
``ABLATOR_FAULTS`` to the path of a JSON spec file and every store that :func:`open_store` opens in
that process (and in its children, which inherit the variable) is wrapped in a
:class:`FaultStore`::

    {"rules": [
        {"start": 1767225600.0, "end": 1767225608.0,     # unix time: every process agrees on it
         "ops": ["replace"], "prefix": "agents/",        # heartbeats only (default: every op, key)
         "error": "EIO",                                  # or ESTALE, ETIMEDOUT, SlowDown, hang, ...
         "process": "agent"}                              # or "worker", "cli", a pid (default: all)
    ]}

The spec file is re-read when it changes (at most every 50 ms), so a test can switch an outage
on and off while real processes run. A failing operation raises what the backend raises for that
fault after its own retries: :class:`~ablator.errors.StoreUnavailable` (EIO, ESTALE, ETIMEDOUT, S3
5xx and throttling) or, for ``"error": "EACCES"``, a plain :class:`~ablator.errors.StoreError`.
``"hang"`` blocks the operation until the rule's window ends and then performs it (a hard NFS
mount); ``"lost_reply": true`` performs a write and then raises (the reply was lost on the way
back); ``"delay"`` makes each failing operation take that many seconds first (a soft mount's
timeout, an S3 client's retries). docs/failures.md lists the faults and what each one does.

This module is a test tool shipped with the package so that child processes (agent workers,
``python -m ablator.agent``) can be driven by it without test code on their path. Without the
variable nothing is wrapped and nothing is read.
"""

from __future__ import annotations

import builtins
import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec

from ablator.errors import ConfigError, StoreError, StoreUnavailable
from ablator.store.base import Capabilities, Entry, Store

T = TypeVar("T")

#: The environment variable naming the spec file.
ENV = "ABLATOR_FAULTS"
#: Overrides the process label a rule's ``process`` is matched against (else derived from the
#: main module: ``agent``, ``worker``, ``cli``, ``other``).
ENV_PROCESS = "ABLATOR_FAULTS_PROCESS"

#: Operation names a rule may list. ``get`` and ``exists`` go through ``read`` and ``stat``.
OPS = frozenset({"read", "stat", "list", "list_dirs", "create", "replace", "delete"})
_ERRNO_ERRORS = {
    "EIO": errno.EIO,
    "ESTALE": errno.ESTALE,
    "ETIMEDOUT": errno.ETIMEDOUT,
    "ECONNRESET": errno.ECONNRESET,
    "EACCES": errno.EACCES,
}
_S3_ERRORS = {"SlowDown": 503, "InternalError": 500, "ServiceUnavailable": 503, "Throttling": 400}
ERRORS = frozenset(_ERRNO_ERRORS) | frozenset(_S3_ERRORS) | {"hang"}
_RELOAD_EVERY_S = 0.05


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One fault: operations ``ops`` (empty: all) on keys starting with ``prefix`` fail with
    ``error`` from ``start`` to ``end`` (unix time; None: unbounded) in processes matching
    ``process`` (None: all; a label or a pid)."""

    start: float | None = None
    end: float | None = None
    ops: list[str] = []
    prefix: str = ""
    error: str = "EIO"
    process: str | int | None = None
    lost_reply: bool = False
    delay: float = 0.0

    def active(self, now: float) -> bool:
        return (self.start is None or now >= self.start) and (self.end is None or now < self.end)

    def matches(self, op: str, key: str, now: float, label: str, pid: int) -> bool:
        if not self.active(now):
            return False
        if self.ops and op not in self.ops:
            return False
        if self.prefix and not key.startswith(self.prefix):
            return False
        if self.process is None:
            return True
        if isinstance(self.process, int):
            return self.process == pid
        return self.process == label or self.process == str(pid)


class Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The spec file: a list of :class:`Rule`."""

    rules: list[Rule] = []


def write_spec(path: str | os.PathLike[str], rules: list[Rule]) -> None:
    """Atomically (re)write the spec file at ``path`` (tests switch faults on and off with it)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(Spec(rules=rules)))
    os.replace(tmp, path)


def load_spec(path: str) -> Spec:
    """Read and validate a spec file; a bad one raises ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{ENV}={path}: cannot read the fault spec ({exc})") from exc
    try:
        spec = msgspec.json.decode(data, type=Spec)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{ENV}={path}: invalid fault spec: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{ENV}={path}: the fault spec is not JSON: {exc}") from exc
    problems = []
    for i, r in enumerate(spec.rules):
        bad_ops = sorted(set(r.ops) - OPS)
        if bad_ops:
            problems.append(f"rules[{i}].ops: unknown {bad_ops}; valid: {sorted(OPS)}")
        if r.error not in ERRORS:
            problems.append(f"rules[{i}].error: {r.error!r} is not one of {sorted(ERRORS)}")
        if r.error == "hang" and r.end is None:
            problems.append(f"rules[{i}]: a 'hang' needs an end")
        if r.delay < 0:
            problems.append(f"rules[{i}].delay: must be >= 0")
    if problems:
        raise ConfigError(problems, source=path)
    return spec


def process_label() -> str:
    """What this process is, for a rule's ``process``: ``$ABLATOR_FAULTS_PROCESS``, else from
    the main module (``python -m ablator.agent`` -> ``agent``, its workers -> ``worker``,
    ``python -m ablator`` -> ``cli``), else ``other``."""
    forced = os.environ.get(ENV_PROCESS)
    if forced:
        return forced
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if name.startswith("ablator.agent.worker"):
        return "worker"
    if name.startswith("ablator.agent"):
        return "agent"
    if name.startswith("ablator"):
        return "cli"
    return "other"


class FaultStore(Store):
    """``inner`` with the faults of the spec file at ``path`` injected (see the module doc).

    ``clock`` is the wall clock rule windows are read on (unix time, shared by every process of
    a test); ``counts`` records how many operations each rule failed, by rule index.
    """

    def __init__(self, inner: Store, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.path = os.fspath(path)
        self.url = inner.url
        self.max_record_bytes = inner.max_record_bytes
        self.read_only = inner.read_only
        self.clock = clock
        self.failed = 0  # operations failed so far (this process)
        self._lock = threading.Lock()
        self._spec = Spec()
        self._sig: tuple[int, int] | None = None
        self._checked = -1.0
        self._label = process_label()
        self._reload(force=True)

    # -- the spec --------------------------------------------------------------------------
    def _reload(self, *, force: bool = False) -> Spec:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < _RELOAD_EVERY_S:
                return self._spec
            self._checked = now
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._spec, self._sig = Spec(), None  # no file: no faults
                return self._spec
            except OSError as exc:
                raise ConfigError(f"{ENV}={self.path}: cannot read the fault spec ({exc})") from exc
            sig = (st.st_mtime_ns, st.st_size)
            if sig != self._sig:
                self._spec, self._sig = load_spec(self.path), sig
            return self._spec

    def _rule(self, op: str, key: str) -> Rule | None:
        now = self.clock()
        pid = os.getpid()
        for r in self._reload().rules:
            if r.matches(op, key, now, self._label, pid):
                return r
        return None

    def _raise(self, rule: Rule, op: str, key: str) -> None:
        with self._lock:
            self.failed += 1
        if rule.delay:
            time.sleep(rule.delay)
        what = f"{op} {key!r} in {self.url}"
        if rule.error in _ERRNO_ERRORS:
            code = _ERRNO_ERRORS[rule.error]
            exc = OSError(code, f"{os.strerror(code)} (injected by {ENV})")
            cls = StoreError if rule.error == "EACCES" else StoreUnavailable
            raise cls(f"{what}: {exc}") from exc
        status = _S3_ERRORS[rule.error]
        raise StoreUnavailable(
            f"{what} failed after retries: {rule.error} (HTTP {status}) (injected by {ENV})"
        )

    def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        rule = self._rule(op, key)
        if rule is None:
            return fn()
        if rule.error == "hang":
            # A hard mount: the call blocks until the server answers again, then completes.
            with self._lock:
                self.failed += 1
            while rule.end is not None and self.clock() < rule.end:
                time.sleep(min(0.05, max(0.0, rule.end - self.clock())))
            return fn()
        if rule.lost_reply and op in ("create", "replace", "delete"):
            fn()  # the write happened; its reply is lost
        self._raise(rule, op, key)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the Store interface -----------------------------------------------------------------
    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self._run("read", key, lambda: self.inner.read(key, max_bytes=max_bytes))

    def stat(self, key: str) -> Entry | None:
        return self._run("stat", key, lambda: self.inner.stat(key))

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self._run("list", prefix, lambda: self.inner.list(prefix))

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return self._run("list_dirs", prefix, lambda: self.inner.list_dirs(prefix))

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        return self._run("create", key, lambda: self.inner.create(key, data, durable=durable))

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._run("replace", key, lambda: self.inner.replace(key, data, durable=durable))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def mtime_resolution(self) -> float:
        return self.inner.mtime_resolution()

    def capabilities(self) -> Capabilities:
        caps = self.inner.capabilities()
        return msgspec.structs.replace(
            caps, notes=[*caps.notes, f"fault injection from {ENV}={self.path} (testing only)"]
        )

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"FaultStore({self.inner!r}, {self.path!r})"


def maybe_wrap(store: Store) -> Store:
    """``store`` wrapped in a :class:`FaultStore` when ``$ABLATOR_FAULTS`` names a spec file."""
    path = os.environ.get(ENV)
    if not path or isinstance(store, FaultStore):
        return store
    return FaultStore(store, path)


__all__ = [
    "ENV",
    "ENV_PROCESS",
    "ERRORS",
    "OPS",
    "FaultStore",
    "Rule",
    "Spec",
    "load_spec",
    "maybe_wrap",
    "process_label",
    "write_spec",
]
