"""Races on create-if-absent.

Deterministic: ``PosixStore._link`` is gated with events (as filelock's tests gate ``os.link``),
so that two creators interleave exactly: both write their temp files, then link in a chosen order.
Statistical: N real OS processes race M creates of the same keys, on a local folder and on S3
(moto): exactly one winner per key, and the stored body is the winner's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ablator import layout, records
from ablator.store import open_store
from ablator.store.posix import PosixStore

WORKER = Path(__file__).with_name("race_worker.py")


class GatedStore(PosixStore):
    """A PosixStore whose ``link`` step waits for a per-thread event, and reports arrival."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.arrived: dict[str, threading.Event] = {}
        self.go: dict[str, threading.Event] = {}
        self.linked: dict[str, threading.Event] = {}

    def gate(self, name: str) -> None:
        self.arrived[name] = threading.Event()
        self.go[name] = threading.Event()
        self.linked[name] = threading.Event()

    def _link(self, src: str, dst: str) -> None:
        name = threading.current_thread().name
        self.arrived[name].set()  # the temp file is complete: we are about to link
        assert self.go[name].wait(timeout=30)
        try:
            super()._link(src, dst)
        finally:
            self.linked[name].set()


def _start(store: GatedStore, name: str, key: str, body: bytes, out: dict[str, bool]) -> threading.Thread:
    store.gate(name)

    def run() -> None:
        out[name] = store.create(key, body)

    t = threading.Thread(target=run, name=name)
    t.start()
    return t


@pytest.mark.parametrize("first", ["a", "b"])
def test_gated_creates_link_in_a_chosen_order(tmp_path: Path, first: str) -> None:
    store = GatedStore(str(tmp_path))
    key = layout.claim(7, 0)
    bodies = {"a": b"claim by a", "b": b"claim by b"}
    out: dict[str, bool] = {}
    threads = [_start(store, n, key, bodies[n], out) for n in ("a", "b")]
    # Both have written their whole temp file and wait at link(): nothing is visible yet.
    for n in ("a", "b"):
        assert store.arrived[n].wait(timeout=30)
    assert store.get(key) is None and store.stat(key) is None
    assert store.list("") == []
    temps = [p.name for p in (tmp_path / "trials" / "000007").iterdir()]
    assert len(temps) == 2 and all(t.startswith(".tmp-") for t in temps)

    second = "b" if first == "a" else "a"
    store.go[first].set()
    assert store.linked[first].wait(timeout=30)
    assert store.read(key) == bodies[first]
    store.go[second].set()
    for t in threads:
        t.join(timeout=30)
    assert out == {first: True, second: False}
    assert store.read(key) == bodies[first]
    # temp files are gone; only the record remains
    assert [p.name for p in (tmp_path / "trials" / "000007").iterdir()] == ["claim.e0000.msgpack"]


def test_create_paused_before_link_loses_to_a_replace(tmp_path: Path) -> None:
    # A creator whose temp file is written but not yet linked finds the key that a replace put
    # there meanwhile: it loses, and the replaced body stays.
    store = GatedStore(str(tmp_path))
    key = layout.agent("x")
    out: dict[str, bool] = {}
    t = _start(store, "creator", key, b"created", out)
    assert store.arrived["creator"].wait(timeout=30)
    store.replace(key, b"replaced")
    store.go["creator"].set()
    t.join(timeout=30)
    assert out == {"creator": False}
    assert store.read(key) == b"replaced"


# --- real processes ----------------------------------------------------------------------------


def _race_processes(url: str, env: dict[str, str], procs: int, keys: int) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, f"w{i}", str(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(procs)
    ]
    try:
        for p in racers:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                _, err = p.communicate(timeout=60)
                raise AssertionError(f"racer did not start: {line!r}\n{err}")
        for p in racers:  # all are connected and waiting: release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p in racers:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
                p.wait()

    winners: dict[int, list[str]] = {i: [] for i in range(keys)}
    for rep in reports:
        for i in rep["won"]:
            winners[i].append(rep["writer"])
    assert {i: w for i, w in winners.items() if len(w) != 1} == {}, "every key has exactly one winner"

    store = open_store(url, read_only=True)
    listed = [e.key for e in store.list("race")]
    assert listed == [f"race/{i:06d}.msgpack" for i in range(keys)]
    for i in range(keys):
        probe = records.decode(store.read(f"race/{i:06d}.msgpack"), records.SelfTestProbe, f"race/{i}")
        (writer,) = winners[i]
        assert probe.writer == writer
        nonce = next(r["nonces"][str(i)] for r in reports if r["writer"] == writer)
        assert probe.nonce == nonce
    store.close()


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "posix":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("s3_url"))


@pytest.mark.procs
@pytest.mark.parametrize("kind", ["posix", "s3"])
def test_processes_race_creates_exactly_one_winner_per_key(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, subprocess_env: dict[str, str]
) -> None:
    # moto handles one request at a time: fewer keys on S3 keep the default run short.
    _race_processes(
        _url(kind, tmp_path, request), subprocess_env, procs=4, keys=100 if kind == "posix" else 25
    )


@pytest.mark.procs
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["posix", "s3"])
def test_processes_race_creates_exactly_one_winner_per_key_stress(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, subprocess_env: dict[str, str]
) -> None:
    _race_processes(_url(kind, tmp_path, request), subprocess_env, procs=8, keys=500)


@pytest.mark.procs
def test_a_store_is_usable_in_a_forked_child_and_after(s3_url: str) -> None:
    # The parent's s3fs client (event loop, sockets) must not be used in the child: the store
    # makes a new one there, and the parent's keeps working afterwards.
    import warnings

    store = open_store(s3_url)
    assert store.create("fork/parent-before", b"p1")
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a multi-threaded process may deadlock: the moto
        # server and fsspec's loop run in threads here. The child only uses the store.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            ok = store.create("fork/child", b"c") and store.read("fork/parent-before") == b"p1"
            ok = ok and not store.create("fork/parent-before", b"child's")
            os.write(w, b"ok" if ok else b"bad")
            code = 0
        except BaseException as exc:
            os.write(w, repr(exc).encode()[:4000])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read()
    _, status = os.waitpid(pid, 0)
    assert msg == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read("fork/child") == b"c"
    assert store.create("fork/parent-after", b"p2")
    assert [e.key for e in store.list("fork")] == ["fork/child", "fork/parent-after", "fork/parent-before"]
    store.close()


def test_threads_share_one_s3_store_from_its_first_use(s3_url: str) -> None:
    # The s3fs client is created lazily; eight threads hitting a fresh store at once must all
    # get a working one, and creates stay exactly-once.
    store = open_store(s3_url)
    barrier = threading.Barrier(8)
    wins: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for k in range(5):
                if store.create(f"t/{k}", f"{i}".encode()):
                    wins.append((k, i))
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert sorted(k for k, _ in wins) == [0, 1, 2, 3, 4]
    for k, i in wins:
        assert store.read(f"t/{k}") == f"{i}".encode()
    store.close()
