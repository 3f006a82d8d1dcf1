"""The fault layer itself: which operations fail, when, in which process, with which error; and
that the backends report a transient fault as :class:`StoreUnavailable`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ablator import layout
from ablator.errors import ConfigError, StoreError, StoreUnavailable
from ablator.store import open_store
from ablator.store.faults import FaultStore, Rule, write_spec
from ablator.store.posix import PosixStore
from ablator.store.s3 import S3Store

ROOT = Path(__file__).resolve().parents[2]
FOREVER = 1e12  # a window end far in the future: tests switch rules off by rewriting the spec


def test_open_store_wraps_only_when_the_variable_is_set(
    tmp_path: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABLATOR_FAULTS", raising=False)
    assert isinstance(open_store(str(tmp_path / "a")), PosixStore)
    monkeypatch.setenv("ABLATOR_FAULTS", str(spec_path))
    store = open_store(str(tmp_path / "a"))
    assert isinstance(store, FaultStore)
    assert any("fault injection" in n for n in store.capabilities().notes)
    assert store.capabilities().backend == "posix"


def test_rules_pick_operations_prefixes_and_windows(store_url: str, faults_env: Path) -> None:
    store = open_store(store_url)
    assert isinstance(store, FaultStore)
    hb, claim = layout.agent("a-1-x"), layout.claim(3, 0)
    store.replace(hb, b"1")
    write_spec(faults_env, [Rule(ops=["replace"], prefix=layout.AGENTS_DIR, end=FOREVER, error="ESTALE")])
    time.sleep(0.1)  # the spec is re-read at most every 50 ms
    with pytest.raises(StoreUnavailable, match=r"replace 'agents/a-1-x.msgpack'.*Stale"):
        store.replace(hb, b"2")
    assert store.read(hb) == b"1"  # reads of the same key still work
    assert store.create(claim, b"c") is True  # other prefixes too
    # a window in the past or the future fails nothing
    now = time.time()
    write_spec(
        faults_env,
        [
            Rule(end=now - 1, error="EIO"),
            Rule(start=now + 3600, error="EIO"),
            Rule(ops=["delete"], prefix="nothing/", error="EIO"),
        ],
    )
    time.sleep(0.1)
    store.replace(hb, b"3")
    assert store.read(hb) == b"3"
    # all operations, S3 flavour: the error names the operation and the key
    write_spec(faults_env, [Rule(end=FOREVER, error="SlowDown")])
    time.sleep(0.1)
    for op in (
        lambda: store.read(claim),
        lambda: store.get(claim),
        lambda: store.exists(claim),
        lambda: store.list(layout.TRIALS_DIR),
        lambda: store.list_dirs(layout.TRIALS_DIR),
        lambda: store.delete(claim),
        lambda: store.create(layout.claim(4, 0), b"x"),
    ):
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            op()
    assert store.failed == 8
    os.unlink(faults_env)  # no spec file: no faults
    time.sleep(0.1)
    assert store.read(claim) == b"c"
    store.close()


def test_a_lost_reply_writes_and_raises(store_url: str, faults_env: Path) -> None:
    store = open_store(store_url)
    write_spec(faults_env, [Rule(ops=["create"], end=FOREVER, error="ETIMEDOUT", lost_reply=True)])
    time.sleep(0.1)
    key = layout.claim(1, 0)
    with pytest.raises(StoreUnavailable):
        store.create(key, b"mine")
    os.unlink(faults_env)
    time.sleep(0.1)
    assert store.read(key) == b"mine"
    assert store.create(key, b"mine") is True  # the read-back recognises our own body
    store.close()


def test_hang_blocks_until_the_window_ends_then_completes(tmp_path: Path, faults_env: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    end = time.time() + 0.5
    write_spec(faults_env, [Rule(ops=["replace"], end=end, error="hang")])
    time.sleep(0.1)
    store.replace("a/b", b"x")
    assert time.time() >= end  # it did not return before the server "answered"
    assert store.read("a/b") == b"x"


@pytest.mark.procs
@pytest.mark.procs
def test_rules_select_one_process(tmp_path: Path, child_env: dict[str, str], spec_path: Path) -> None:
    """A rule for the label "worker" fails a child labelled so, and not this process; a rule for
    a pid fails only that process."""
    root = tmp_path / "s"
    write_spec(spec_path, [Rule(process="worker", end=FOREVER, error="EIO")])
    code = (
        "import sys\n"
        "from ablator.store import open_store\n"
        "from ablator.errors import StoreUnavailable\n"
        f"s = open_store({str(root)!r})\n"
        "try:\n"
        "    s.replace('k/v', b'child')\n"
        "except StoreUnavailable as e:\n"
        "    print('FAILED', e); sys.exit(7)\n"
        "print('OK')\n"
    )

    def child(label: str | None) -> subprocess.CompletedProcess[str]:
        env = dict(child_env)
        if label is not None:
            env["ABLATOR_FAULTS_PROCESS"] = label
        return subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    out = child("worker")
    assert out.returncode == 7 and "Input/output error" in out.stdout, out.stdout + out.stderr
    out = child("agent")
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
    # by pid: this process only
    write_spec(spec_path, [Rule(process=os.getpid(), end=FOREVER, error="EIO")])
    store = FaultStore(PosixStore(str(root)), str(spec_path))
    with pytest.raises(StoreUnavailable):
        store.read("k/v")
    assert child(None).returncode == 0


def test_a_bad_spec_is_a_config_error_naming_the_file(tmp_path: Path, spec_path: Path) -> None:
    spec_path.write_text(json.dumps({"rules": [{"ops": ["frobnicate"], "error": "EWHAT"}]}))
    with pytest.raises(ConfigError) as info:
        FaultStore(PosixStore(str(tmp_path)), str(spec_path))
    msg = str(info.value)
    assert str(spec_path) in msg and "frobnicate" in msg and "EWHAT" in msg and "valid" in msg
    spec_path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        FaultStore(PosixStore(str(tmp_path)), str(spec_path))


# --- the backends' own classification -----------------------------------------------------------


class _LinkFails(PosixStore):
    def __init__(self, root: str, err: int) -> None:
        super().__init__(root)
        self.err = err

    def _link(self, src: str, dst: str) -> None:
        raise OSError(self.err, os.strerror(self.err), dst)


@pytest.mark.parametrize("err", [errno.EIO, errno.ESTALE, errno.ETIMEDOUT])
def test_posix_transient_errnos_are_store_unavailable(tmp_path: Path, err: int) -> None:
    store = _LinkFails(str(tmp_path), err)
    with pytest.raises(StoreUnavailable, match="create 'a/b'"):
        store.create("a/b", b"x")


def test_posix_other_errors_are_not_transient(tmp_path: Path) -> None:
    store = _LinkFails(str(tmp_path), errno.ENAMETOOLONG)
    with pytest.raises(StoreError) as info:
        store.create("a/b", b"x")
    assert not isinstance(info.value, StoreUnavailable)


def test_s3_outage_outlasting_retries_is_store_unavailable_and_then_passes(
    s3_faults: tuple[Any, str],
) -> None:
    faults, bucket = s3_faults
    store = S3Store(
        bucket, "exp", attempts=2, backoff=0.01, config_kwargs={"retries": {"total_max_attempts": 1}}
    )
    store.list("")
    rule = faults.outage(bucket, 1.0, key_prefix="exp/agents/")
    with pytest.raises(StoreUnavailable, match="SlowDown"):
        store.replace(layout.agent("a-1-x"), b"hb")
    store.replace(layout.claim(1, 0), b"c")  # another prefix: untouched
    assert rule.hits == 2  # two attempts, both answered 503
    time.sleep(max(0.0, (rule.until or 0) - time.time()))
    store.replace(layout.agent("a-1-x"), b"hb")  # the outage is over
    assert store.read(layout.agent("a-1-x")) == b"hb"
    # a 403 is an answer, not an outage
    faults.add(bucket, "GET", 403, "AccessDenied", times=1)
    with pytest.raises(StoreError) as info:
        store.read(layout.agent("a-1-x"))
    assert not isinstance(info.value, StoreUnavailable)
    store.close()


# --- a lost reply while claiming -----------------------------------------------------------------


def _claimer(store: Any) -> Any:
    from ablator.lease import Claimer, LeaseLimits, Membership

    limits = LeaseLimits(lease_seconds=30.0, heartbeat_seconds=5.0)
    m = Membership(store, limits, host="h", agent_id="h-1-x", versions={})
    return m, Claimer(store, m, budget=4)


def _spec(i: int) -> Any:
    from ablator import records

    return records.TrialSpec(index=i, config={"i": i}, config_hash=f"h{i}", seed=i)


def test_a_claim_whose_reply_and_read_back_were_lost_is_never_held_by_nobody(
    tmp_path: Path, faults_env: Path
) -> None:
    store = open_store(str(tmp_path / "s"))
    m, c = _claimer(store)
    write_spec(
        faults_env, [Rule(ops=["create"], prefix="trials/", end=FOREVER, error="ETIMEDOUT", lost_reply=True)]
    )
    time.sleep(0.1)
    with pytest.raises(StoreUnavailable):
        c.claim_next(_spec)
    # The claim was made; we cannot know it yet: it stays listed in our heartbeat.
    claimed = [e.key for e in open_store(str(tmp_path / "s")).list(layout.TRIALS_DIR)]
    assert len(claimed) == 1
    pair = (layout.parse_trial(claimed[0]), 0)
    assert m.held() == [pair]
    os.unlink(faults_env)  # the store answers again
    time.sleep(0.1)
    held = c.claim_next(_spec)  # first settles the unanswered claim: it is ours
    assert held is not None and (held.trial, held.epoch) == pair
    assert m.held() == [pair]


def test_a_claim_that_was_never_made_is_let_go(tmp_path: Path, faults_env: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    m, c = _claimer(store)
    write_spec(faults_env, [Rule(ops=["create"], prefix="trials/", end=FOREVER, error="EIO")])
    time.sleep(0.1)
    with pytest.raises(StoreUnavailable):
        c.claim_next(_spec)
    assert len(m.held()) == 1  # unknown yet
    os.unlink(faults_env)
    time.sleep(0.1)
    held = c.claim_next(_spec)
    assert held is not None
    assert m.held() == [(held.trial, held.epoch)]  # the unmade claim was dropped
