"""One set of tests over every backend (a local folder, memory, S3 through a moto server): the
semantics every part of ablator relies on. A new backend passes these before anything else."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from ablator import layout
from ablator.errors import StoreError
from ablator.store import Store, open_store, self_test

# --- reads of what is not there ---------------------------------------------------------------


def test_absent_key(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("trials/000000/claim.e0000.msgpack")
    assert store.get("trials/000000/claim.e0000.msgpack") is None
    assert store.stat("trials/000000/claim.e0000.msgpack") is None
    assert not store.exists("trials/000000/claim.e0000.msgpack")
    assert store.list("trials") == []
    assert store.list("") == []
    assert store.list_dirs("") == []
    assert store.list_dirs("no/such/folder") == []


# --- create ----------------------------------------------------------------------------------


def test_create_then_read_stat_list(store: Store) -> None:
    key = layout.claim(3, 0)
    assert store.create(key, b"first body")
    assert store.read(key) == b"first body"
    assert store.get(key) == b"first body"
    assert store.exists(key)
    st = store.stat(key)
    assert st is not None and st.key == key and st.size == len(b"first body")
    assert isinstance(st.mtime, float)
    (entry,) = store.list("trials")
    assert entry.key == key and entry.size == st.size


def test_create_returns_false_for_another_body_and_keeps_the_first(store: Store) -> None:
    key = layout.result(1)
    assert store.create(key, b"winner")
    assert store.create(key, b"loser") is False
    assert store.read(key) == b"winner"


def test_create_returns_true_for_a_byte_identical_body(store: Store) -> None:
    # A writer whose reply was lost retries and finds its own record: that is a win.
    key = layout.result(1)
    assert store.create(key, b"same nonce-carrying body")
    assert store.create(key, b"same nonce-carrying body") is True


def test_create_does_not_see_a_prefix_or_extension_as_taken(store: Store) -> None:
    assert store.create("a/claim.e0001.msgpack", b"1")
    assert store.create("a/claim.e0001.msgpack.bak", b"2")
    assert store.create("a/claim.e0001", b"3")
    assert [e.key for e in store.list("a")] == [
        "a/claim.e0001",
        "a/claim.e0001.msgpack",
        "a/claim.e0001.msgpack.bak",
    ]


def test_create_after_replace_of_the_key_is_false(store: Store) -> None:
    store.replace("agents/x.msgpack", b"heartbeat 1")
    assert store.create("agents/x.msgpack", b"something else") is False
    assert store.read("agents/x.msgpack") == b"heartbeat 1"


# --- replace and delete ------------------------------------------------------------------------


def test_replace_creates_and_overwrites(store: Store) -> None:
    key = layout.agent("host-1-abc")
    store.replace(key, b"v1")
    assert store.read(key) == b"v1"
    store.replace(key, b"version two, longer")
    assert store.read(key) == b"version two, longer"
    st = store.stat(key)
    assert st is not None and st.size == len(b"version two, longer")
    assert [e.key for e in store.list("agents")] == [key]


def test_delete(store: Store) -> None:
    store.create("ckpt/e0000-s00000001.pt", b"x")
    store.delete("ckpt/e0000-s00000001.pt")
    assert store.get("ckpt/e0000-s00000001.pt") is None
    assert store.list("ckpt") == []
    store.delete("ckpt/e0000-s00000001.pt")  # absent is fine
    store.delete("never/was/there")
    # the key is free again
    assert store.create("ckpt/e0000-s00000001.pt", b"y")
    assert store.read("ckpt/e0000-s00000001.pt") == b"y"


def test_bodies_round_trip_exactly(store: Store) -> None:
    every_byte = bytes(range(256)) * 4
    big = bytes(i % 251 for i in range(3 * 1024 * 1024 + 7))
    store.create("bin/every-byte", every_byte)
    store.replace("bin/big", big)
    store.create("bin/empty", b"")
    assert store.read("bin/every-byte") == every_byte
    assert store.read("bin/big") == big
    assert store.read("bin/empty") == b""
    sizes = {e.key: e.size for e in store.list("bin")}
    assert sizes == {"bin/big": len(big), "bin/empty": 0, "bin/every-byte": len(every_byte)}


# --- listing ---------------------------------------------------------------------------------


def _fill(store: Store, keys: list[str]) -> None:
    for i, k in enumerate(keys):
        store.create(k, f"body {i}".encode())


def test_list_is_recursive_sorted_and_scoped_to_the_folder(store: Store) -> None:
    keys = [
        "trials/000002/result.msgpack",
        "trials/000001/claim.e0000.msgpack",
        "trials/000001/metrics/e0000-s00000010.msgpack",
        "trials/000010/claim.e0000.msgpack",
        "trialsX/not-a-trial",
        "trials.txt",
        "experiment.json",
    ]
    _fill(store, keys)
    under = [e.key for e in store.list("trials")]
    assert under == sorted(k for k in keys if k.startswith("trials/"))
    # "trials", "trials/" and "/trials/" are the same folder; "trial" is not a folder of anything
    assert [e.key for e in store.list("trials/")] == under
    assert [e.key for e in store.list("/trials/")] == under
    assert store.list("trial") == []
    assert [e.key for e in store.list("trials/000001")] == [
        "trials/000001/claim.e0000.msgpack",
        "trials/000001/metrics/e0000-s00000010.msgpack",
    ]
    # the empty prefix is the whole store
    assert [e.key for e in store.list("")] == sorted(keys)
    # a key is not a folder
    assert store.list("experiment.json") == []
    sizes = {e.key: e.size for e in store.list("")}
    assert sizes["experiment.json"] == len(b"body 6")


def test_list_dirs_names_immediate_sub_folders(store: Store) -> None:
    _fill(
        store,
        [
            "trials/000001/claim.e0000.msgpack",
            "trials/000001/ckpt/e0000-s00000001.pt",
            "trials/000002/logs/e0000.txt",
            "trials/readme",
            "agents/a.msgpack",
            "experiment.json",
        ],
    )
    assert store.list_dirs("") == ["agents", "trials"]
    assert store.list_dirs("trials") == ["000001", "000002"]
    assert store.list_dirs("trials/") == ["000001", "000002"]
    assert store.list_dirs("trials/000001") == ["ckpt"]
    assert store.list_dirs("trials/000001/ckpt") == []
    assert store.list_dirs("experiment.json") == []


def test_keys_with_many_levels(store: Store) -> None:
    parts = [f"level{i:02d}" for i in range(16)]
    deep = "/".join(parts) + "/leaf.msgpack"
    assert store.create(deep, b"deep")
    assert store.read(deep) == b"deep"
    assert [e.key for e in store.list(parts[0])] == [deep]
    assert [e.key for e in store.list("/".join(parts[:10]))] == [deep]
    for i in range(len(parts) - 1):
        assert store.list_dirs("/".join(parts[: i + 1])) == [parts[i + 1]]
    assert store.list_dirs("/".join(parts)) == []
    assert store.create(deep, b"other") is False


def test_keys_with_spaces_unicode_and_url_characters(store: Store) -> None:
    # Agent ids contain host names; S3 listings arrive URL-encoded and must decode exactly.
    keys = ["agents/host name+1=ü%20.msgpack", "agents/a&b?c#d.msgpack", "agents/日本-ø.msgpack"]
    for i, k in enumerate(keys):
        assert store.create(k, bytes([i]))
    assert [e.key for e in store.list("agents")] == sorted(keys)
    for i, k in enumerate(keys):
        assert store.read(k) == bytes([i])
        st = store.stat(k)
        assert st is not None and st.size == 1
    store.delete(keys[0])
    assert [e.key for e in store.list("agents")] == sorted(keys[1:])


def test_list_sees_writes_of_another_store_object_at_once(make_url: Callable[[str], str]) -> None:
    # No listing cache: an agent must see a key another agent wrote a moment ago.
    a, b = open_store(make_url("shared")), open_store(make_url("shared"))
    try:
        assert a.list("trials") == [] and a.list_dirs("trials") == []
        assert b.create("trials/000004/claim.e0000.msgpack", b"b's claim")
        assert [e.key for e in a.list("trials")] == ["trials/000004/claim.e0000.msgpack"]
        assert a.list_dirs("trials") == ["000004"]
        assert a.create("trials/000004/claim.e0000.msgpack", b"a's claim") is False
        b.delete("trials/000004/claim.e0000.msgpack")
        assert a.list("trials") == []
        assert a.get("trials/000004/claim.e0000.msgpack") is None
    finally:
        a.close()
        b.close()


def test_sibling_stores_do_not_see_each_other(make_url: Callable[[str], str]) -> None:
    # s3://b/exp and s3://b/exp2 share a key prefix string; folders "store" and "store2" too.
    one, two = open_store(make_url("exp")), open_store(make_url("exp2"))
    try:
        assert two.create("trials/000001/result.msgpack", b"two's")
        assert one.list("") == [] and one.list_dirs("") == []
        assert one.get("trials/000001/result.msgpack") is None
        assert one.create("trials/000001/result.msgpack", b"one's")
        assert two.read("trials/000001/result.msgpack") == b"two's"
    finally:
        one.close()
        two.close()


def test_a_store_at_the_root_of_its_space(make_url: Callable[[str], str]) -> None:
    # S3: s3://bucket with no prefix; memory: a bare name; posix: a folder (its own root).
    root = open_store(make_url(""))
    inner = open_store(make_url("exp"))
    try:
        assert inner.create("k/v", b"inner")
        assert root.create("top.msgpack", b"top")
        assert root.read("top.msgpack") == b"top"
        if "exp" in root.list_dirs(""):
            # S3 and posix nest "exp" inside the root; memory names are flat spaces
            assert root.read("exp/k/v") == b"inner"
        assert [e.key for e in inner.list("")] == ["k/v"]
    finally:
        root.close()
        inner.close()


# --- bad keys and read-only stores -------------------------------------------------------------


BAD_KEYS = ["", "/abs/key", "a/../b", "../outside", "a//b", "a/./b", "a/", ".tmp-x", "a/.tmp-y/z"]


def _every_op(store: Store, key: str) -> list[Callable[[], object]]:
    return [
        lambda: store.create(key, b"x"),
        lambda: store.replace(key, b"x"),
        lambda: store.read(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ]


def test_invalid_keys_are_refused_with_the_key_named(store: Store) -> None:
    for key in BAD_KEYS:
        for op in _every_op(store, key):
            with pytest.raises(StoreError, match="invalid store key") as info:
                op()
            assert repr(key) in str(info.value)
    with pytest.raises(StoreError, match="invalid store key"):
        store.list("a/../..")
    assert store.list("") == []


def test_read_only_store_reads_and_refuses_writes(make_url: Callable[[str], str]) -> None:
    rw = open_store(make_url("exp"))
    rw.create("experiment.json", b"{}")
    ro = open_store(make_url("exp"), read_only=True)
    try:
        assert ro.read("experiment.json") == b"{}"
        assert [e.key for e in ro.list("")] == ["experiment.json"]
        for name, op in (
            ("create", lambda: ro.create("trials/000001/claim.e0000.msgpack", b"x")),
            ("replace", lambda: ro.replace("trials/000001/claim.e0000.msgpack", b"x")),
            ("delete", lambda: ro.delete("experiment.json")),
        ):
            with pytest.raises(StoreError, match=rf"{name} '.+': store .+ was opened read-only"):
                op()
        assert ro.capabilities().read_only
        assert self_test(ro).self_test.startswith("not run")
        assert rw.read("experiment.json") == b"{}"
        assert rw.get("trials/000001/claim.e0000.msgpack") is None
    finally:
        ro.close()
        rw.close()


# --- concurrency within one process ------------------------------------------------------------


def _race(store: Store, key: str, threads_n: int) -> list[int]:
    """``threads_n`` threads create ``key`` at once (a barrier releases them); the winners."""
    barrier = threading.Barrier(threads_n)
    wins: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            if store.create(key, f"writer {i}".encode()):
                wins.append(i)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    return wins


def test_racing_creates_from_threads_have_one_winner(store: Store, backend: str) -> None:
    for r in range(3 if backend == "s3" else 20):
        key = layout.claim(r, 0)
        wins = _race(store, key, threads_n=6)
        assert len(wins) == 1, f"round {r}: winners {wins}"
        assert store.read(key) == f"writer {wins[0]}".encode()


def test_replace_is_atomic_for_concurrent_readers(store: Store, backend: str) -> None:
    # Readers must see one whole body or the other, never a mix or a truncation.
    size = 256 * 1024
    bodies = {b"A" * size, b"B" * (size + 1)}
    ordered = sorted(bodies)
    key = layout.agent("agent-under-test")
    store.replace(key, ordered[0])
    writes = 8 if backend == "s3" else 200
    done = threading.Event()
    seen: list[bytes] = []
    bad: list[str] = []

    def reader() -> None:
        while not done.is_set():
            body = store.read(key)
            if body not in bodies:
                bad.append(f"{len(body)} bytes, starting {body[:8]!r}, ending {body[-8:]!r}")
            seen.append(body[:1])

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(writes):
            store.replace(key, ordered[i % 2])
    finally:
        done.set()
        for t in readers:
            t.join()
    assert bad == []
    assert len(seen) > 0
    assert store.read(key) == ordered[(writes - 1) % 2]


# --- the self-test -----------------------------------------------------------------------------


def test_self_test_passes_and_cleans_up(store: Store) -> None:
    store.create("experiment.json", b"{}")
    caps = self_test(store)
    assert caps.self_test == "passed"
    assert caps.atomic_create and caps.atomic_replace
    assert caps.url == store.url
    assert store.list(layout.SELFTEST_DIR) == []
    assert [e.key for e in store.list("")] == ["experiment.json"]
