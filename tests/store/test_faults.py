"""Injected faults: lost replies, transient and permanent S3 errors, a missing bucket, corrupt
records, a folder this process may not write to."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ablator import layout, records
from ablator.errors import CorruptRecordError, StoreError
from ablator.store import Store, open_store
from ablator.store.posix import PosixStore
from ablator.store.s3 import S3Store

# botocore's own retries off: then every retry the server sees is ablator's.
NO_BOTO_RETRIES = {"retries": {"total_max_attempts": 1}}


def _claim(agent: str = "host-1-abcd") -> bytes:
    return records.encode(records.Claim(trial=1, epoch=0, agent_id=agent))


# --- lost replies ------------------------------------------------------------------------------


class LostLinkReply(PosixStore):
    """NFS: the client's LINK reached the server and was done, the reply was lost, and the
    retransmitted LINK is answered EEXIST -- by our own link."""

    def _link(self, src: str, dst: str) -> None:
        os.link(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists (retransmitted LINK)", dst)


def test_posix_create_whose_reply_was_lost_knows_it_won(tmp_path: Path) -> None:
    store = LostLinkReply(str(tmp_path))
    body = _claim()
    assert store.create(layout.claim(1, 0), body) is True
    assert store.read(layout.claim(1, 0)) == body
    # and a genuine EEXIST (somebody else's record) is still a loss
    other = PosixStore(str(tmp_path))
    assert other.create(layout.claim(2, 0), _claim("other"))
    assert store.create(layout.claim(2, 0), _claim("me")) is False
    assert [p.name for p in (tmp_path / "trials" / "000001").iterdir()] == ["claim.e0000.msgpack"]


def test_s3_create_whose_reply_was_lost_is_retried_by_botocore_and_knows_it_won(
    s3_faults: tuple[Any, str],
) -> None:
    # The server stores the object, then the client gets a 500 instead of the 200: botocore
    # retries the conditional PUT, which now finds the object (412). create must say True.
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp")
    key = layout.result(1)
    body = records.encode(records.Result(trial=1, epoch=0, agent_id="a"))
    store.list("")  # connect first, so that only the PUTs below are counted
    rule = faults.add(bucket, "PUT", 500, "InternalError", times=1, conditional=True, lost_reply=True)
    assert store.create(key, body, durable=True) is True
    assert rule.hits == 1
    puts = faults.requests(bucket, "PUT")
    assert len(puts) == 2 and all(conditional for _, _, conditional in puts)
    assert store.read(key) == body
    # a second writer with its own body still loses
    assert store.create(key, records.encode(records.Result(trial=1, epoch=0, agent_id="b"))) is False
    store.close()


def test_s3_create_whose_reply_was_lost_is_retried_by_ablator_and_knows_it_won(
    s3_faults: tuple[Any, str],
) -> None:
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp", backoff=0.01, config_kwargs=NO_BOTO_RETRIES)
    store.list("")
    faults.add(bucket, "PUT", 503, "SlowDown", times=1, conditional=True, lost_reply=True)
    body = _claim()
    assert store.create(layout.claim(1, 0), body) is True
    assert len(faults.requests(bucket, "PUT")) == 2
    assert store.read(layout.claim(1, 0)) == body
    store.close()


def test_s3_create_lost_reply_through_wrapped_s3fs_call(s3_url: str) -> None:
    # The same fault one layer up: s3fs's request function performs the conditional PUT and
    # then "retries" it, as botocore does after a timeout; the retry gets the real 412.
    store = open_store(s3_url)
    assert isinstance(store, S3Store)
    fs = store._filesystem()
    original = fs._call_s3
    calls: list[str] = []

    async def put_twice(method: str, *args: object, **kwargs: object) -> object:
        if method == "put_object" and kwargs.get("IfNoneMatch") == "*":
            calls.append("first")
            await original(method, *args, **kwargs)
            calls.append("retry")
        return await original(method, *args, **kwargs)

    fs._call_s3 = put_twice
    body = _claim()
    assert store.create(layout.claim(5, 0), body) is True
    assert calls == ["first", "retry"]
    assert store.read(layout.claim(5, 0)) == body
    store.close()


# --- transient and permanent S3 errors -----------------------------------------------------------


def test_s3_conditional_write_conflict_409_is_retried(s3_faults: tuple[Any, str]) -> None:
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp", backoff=0.01, config_kwargs=NO_BOTO_RETRIES)
    store.list("")
    rule = faults.add(bucket, "PUT", 409, "ConditionalRequestConflict", times=2, conditional=True)
    body = _claim()
    assert store.create(layout.claim(1, 0), body) is True
    assert rule.hits == 2
    assert len(faults.requests(bucket, "PUT")) == 3
    assert store.read(layout.claim(1, 0)) == body
    store.close()


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")]
)
def test_s3_transient_errors_are_retried_with_backoff(
    s3_faults: tuple[Any, str], status: int, code: str
) -> None:
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp", backoff=0.01, config_kwargs=NO_BOTO_RETRIES)
    store.replace("agents/a.msgpack", b"heartbeat")
    faults.add(bucket, "GET", status, code, times=3)
    assert store.read("agents/a.msgpack") == b"heartbeat"
    assert len(faults.requests(bucket, "GET")) == 4
    store.close()


def test_s3_errors_that_persist_raise_store_error_naming_url_key_and_operation(
    s3_faults: tuple[Any, str],
) -> None:
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp", attempts=3, backoff=0.01, config_kwargs=NO_BOTO_RETRIES)
    store.list("")
    before = len(faults.requests(bucket, "PUT"))
    faults.add(bucket, "PUT", 500, "InternalError", times=100)
    with pytest.raises(StoreError) as info:
        store.replace("agents/a.msgpack", b"heartbeat")
    msg = str(info.value)
    assert f"s3://{bucket}/exp" in msg and "replace 'agents/a.msgpack'" in msg
    assert "after 3 attempts" in msg and "InternalError" in msg
    assert len(faults.requests(bucket, "PUT")) - before == 3  # bounded
    store.close()


def test_s3_access_denied_is_not_retried(s3_faults: tuple[Any, str]) -> None:
    faults, bucket = s3_faults
    store = S3Store(bucket, "exp", backoff=0.01, config_kwargs=NO_BOTO_RETRIES)
    store.list("")
    faults.add(bucket, "PUT", 403, "AccessDenied", times=100)
    with pytest.raises(StoreError, match=r"create 'experiment.json' in s3://.+AccessDenied.+credentials"):
        store.create("experiment.json", b"{}")
    assert len(faults.requests(bucket, "PUT")) == 1
    store.close()


def test_s3_endpoint_lost_after_first_contact_is_retried_then_reported(s3_server: object) -> None:
    """An endpoint that answered once and then stops answering is a transient fault: ablator's
    own retries run out, then the error names the operation and the attempts. (An endpoint that
    cannot be reached on first contact is reported at once, naming it: test_s3_unreachable.py.)"""
    from s3server import S3Server

    own = S3Server().start()  # a server of this test's own, so that it can be stopped
    stopped = False
    try:
        bucket = "ablator-lost-endpoint"
        own.make_bucket(bucket)
        store = S3Store(
            bucket,
            "exp",
            attempts=2,
            backoff=0.01,
            endpoint_url=own.endpoint,
            config_kwargs={**NO_BOTO_RETRIES, "connect_timeout": 2},
        )
        assert store.get("experiment.json") is None  # first contact: the endpoint answers
        own.stop()
        stopped = True
        with pytest.raises(
            StoreError, match=rf"read 'experiment.json' in s3://{bucket}/exp failed after 2 attempts"
        ):
            store.read("experiment.json")
        store.close()
    finally:
        if not stopped:
            own.stop()


def test_s3_missing_bucket_is_a_clear_error(s3_server: object) -> None:
    store = open_store("s3://ablator-no-such-bucket/exp")
    for op in (
        lambda: store.read("experiment.json"),
        lambda: store.list("trials"),
        lambda: store.create("experiment.json", b"{}"),
    ):
        with pytest.raises(StoreError, match=r"bucket 'ablator-no-such-bucket' does not exist.+aws s3 mb"):
            op()
    store.close()


# --- corrupt records ---------------------------------------------------------------------------


def test_corrupt_and_truncated_records_raise_naming_the_key(store: Store) -> None:
    good = _claim()
    store.create(layout.claim(1, 0), good[: len(good) // 2])  # truncated
    store.create(layout.claim(2, 0), b"\xc1 not msgpack at all")
    store.create(
        layout.claim(3, 0),
        records.encode(records.Heartbeat(agent_id="a", host="h", pid=1, counter=1, lease_s=1, heartbeat_s=1)),
    )
    for i in (1, 2, 3):
        key = layout.claim(i, 0)
        with pytest.raises(CorruptRecordError, match=rf"corrupt record '{key}'"):
            records.decode(store.read(key), records.Claim, key)
        with pytest.warns(records.CorruptRecordWarning, match=key):
            assert records.try_decode(store.read(key), records.Claim, key) is None
    # nothing was lost: the bytes are still there for repair
    assert store.read(layout.claim(1, 0)) == good[: len(good) // 2]


# --- a folder this process may not write to -------------------------------------------------------


@pytest.fixture
def locked_root() -> Iterator[Path]:
    """A store folder with one record, then made read-only (0o555), under a world-traversable
    temp folder (pytest's own tmp_path is 0o700, which a dropped-privilege child cannot enter)."""
    top = Path(tempfile.mkdtemp(prefix="ablator-ro-"))
    top.chmod(0o755)
    root = top / "store"
    open_store(str(root)).create("experiment.json", b"{}")
    root.chmod(0o555)
    try:
        yield root
    finally:
        root.chmod(0o755)
        shutil.rmtree(top)


def _try_writes(root: Path) -> list[str]:
    store = open_store(str(root))
    out = []
    for op in (
        lambda: store.create("trials/000001/claim.e0000.msgpack", b"x"),
        lambda: store.replace("experiment.json", b"changed"),
        lambda: store.create("result.msgpack", b"x"),
    ):
        try:
            op()
            out.append("no error")
        except StoreError as exc:
            out.append(str(exc))
    return out


def _in_unprivileged_child(root: Path) -> list[str]:
    """Run :func:`_try_writes` in a forked child that dropped root to nobody (root ignores file
    permissions, so a 0o555 folder stops only an ordinary user). Fork, not exec: the child
    cannot read root's Python installation once unprivileged."""
    import json

    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, Python >= 3.12
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(_try_writes(root)).encode())
            code = 0
        except BaseException as exc:
            os.write(w, json.dumps([repr(exc)]).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    result: list[str] = json.loads(data)
    return result


@pytest.mark.procs
def test_a_read_only_folder_gives_a_clear_error_naming_the_key(locked_root: Path) -> None:
    messages = _in_unprivileged_child(locked_root) if os.geteuid() == 0 else _try_writes(locked_root)
    assert len(messages) == 3
    for msg, key in zip(
        messages, ["trials/000001/claim.e0000.msgpack", "experiment.json", "result.msgpack"], strict=True
    ):
        assert f"{key!r}" in msg and "not writable" in msg, msg
    # nothing changed
    assert (locked_root / "experiment.json").read_bytes() == b"{}"
    assert sorted(p.name for p in locked_root.iterdir()) == ["experiment.json"]


def test_a_store_opened_read_only_refuses_writes_before_touching_the_folder(tmp_path: Path) -> None:
    open_store(str(tmp_path / "s")).create("experiment.json", b"{}")
    store = open_store(str(tmp_path / "s"), read_only=True)
    with pytest.raises(
        StoreError, match=r"create 'trials/000001/claim.e0000.msgpack': store file://.+ read-only"
    ):
        store.create("trials/000001/claim.e0000.msgpack", b"x")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["experiment.json"]
