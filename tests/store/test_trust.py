"""Which stores are trusted: ``open_store``'s checks of a local root (hard links, FUSE mounts of
object stores), URL handling, and the self-test against stores that are broken on purpose."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ablator import layout
from ablator.errors import StoreError, UntrustedStoreError
from ablator.store import open_store, self_test
from ablator.store.memory import MemoryStore, clear
from ablator.store.posix import PosixStore
from ablator.store.s3 import S3Store
from ablator.store.trust import check_local_root, mount_for, object_store_fuse, parse_mountinfo, read_mounts

# --- /proc/self/mountinfo ------------------------------------------------------------------


def _line(mid: int, mount_point: str, fstype: str, source: str, dev: str = "0:50") -> str:
    return f"{mid} 1 {dev} / {mount_point} rw,relatime shared:{mid} - {fstype} {source} rw"


MOUNTINFO = "\n".join(
    [
        _line(21, "/", "ext4", "/dev/vda", "254:0"),
        _line(22, "/mnt/data", "nfs4", "server:/export"),
        _line(23, "/mnt/gcs", "fuse.gcsfuse", "my-bucket"),
        _line(24, "/mnt/mp", "fuse", "mountpoint-s3"),
        _line(25, "/mnt/s3", "fuse.s3fs", "s3fs"),
        _line(26, "/mnt/ssh", "fuse.sshfs", "user@host:/data"),
        _line(27, "/mnt/with\\040space", "ext4", "/dev/vdb"),
        _line(28, "/mnt/data/inner", "tmpfs", "tmpfs"),
        _line(29, "/mnt/stacked", "ext4", "/dev/vdc"),
        _line(30, "/mnt/stacked", "fuse.rclone", "remote:"),
        "garbage line without separator",
    ]
)


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 10
    assert mounts[0].mount_point == "/" and mounts[0].fstype == "ext4" and mounts[0].device == "254:0"
    assert mounts[6].mount_point == "/mnt/with space"  # \040 unescaped
    assert mounts[1].source == "server:/export"


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/user/runs", "ext4"),
        ("/mnt/data/exp", "nfs4"),
        ("/mnt/data", "nfs4"),
        ("/mnt/datax/exp", "ext4"),  # a longer name is not inside /mnt/data
        ("/mnt/data/inner/x", "tmpfs"),  # the longest mount point wins
        ("/mnt/with space/exp", "ext4"),
        ("/mnt/stacked/exp", "fuse.rclone"),  # of two mounts on one point, the last hides the first
    ],
)
def test_mount_for_finds_the_mount_holding_a_path(path: str, fstype: str) -> None:
    mount = mount_for(path, parse_mountinfo(MOUNTINFO))
    assert mount is not None and mount.fstype == fstype


def test_object_store_fuse_mounts_are_recognised() -> None:
    by_point = {m.mount_point: m for m in parse_mountinfo(MOUNTINFO)}
    assert object_store_fuse(by_point["/mnt/gcs"]) == "gcsfuse"
    assert object_store_fuse(by_point["/mnt/mp"]) == "mountpoint-s3"
    assert object_store_fuse(by_point["/mnt/s3"]) == "s3fs"
    assert object_store_fuse(by_point["/mnt/stacked"]) == "rclone"
    assert object_store_fuse(by_point["/mnt/ssh"]) is None  # FUSE, but not an object store
    assert object_store_fuse(by_point["/mnt/data"]) is None
    assert object_store_fuse(by_point["/"]) is None


@pytest.mark.procs
def test_the_real_mount_of_a_folder_is_found(tmp_path: Path) -> None:
    mounts = read_mounts()
    if mounts is None:
        pytest.skip("no /proc/self/mountinfo (not Linux)")
    mount = mount_for(str(tmp_path), mounts)
    assert mount is not None
    st = os.stat(tmp_path)
    assert mount.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    findmnt = shutil.which("findmnt")
    if findmnt:
        out = subprocess.run(
            [findmnt, "-n", "-o", "FSTYPE", "--target", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert mount.fstype == out.stdout.strip()
    store = open_store(str(tmp_path / "store"))
    assert store.capabilities().filesystem == mount.fstype


def _fake_mountinfo(tmp_path: Path, fstype: str, source: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(
        "\n".join([_line(1, "/", "ext4", "/dev/vda"), _line(2, str(tmp_path), fstype, source)]) + "\n"
    )
    return str(path)


@pytest.mark.parametrize(("fstype", "source"), [("fuse.gcsfuse", "bucket"), ("fuse", "mountpoint-s3")])
def test_a_fuse_mount_of_an_object_store_is_refused_unless_forced(
    tmp_path: Path, fstype: str, source: str
) -> None:
    info = _fake_mountinfo(tmp_path, fstype, source)
    root = str(tmp_path / "store")
    with pytest.raises(UntrustedStoreError) as exc:
        check_local_root(root, mountinfo=info)
    msg = str(exc.value)
    assert "FUSE mount of an object store" in msg and root in msg and "--force" in msg
    facts = check_local_root(root, force=True, mountinfo=info)
    assert facts.filesystem == fstype
    assert any(n.startswith("FORCED:") for n in facts.notes)
    # a reader needs no atomic create: a read-only open is not refused
    assert check_local_root(root, read_only=True, mountinfo=info).filesystem == fstype


def test_other_fuse_and_nfs_mounts_are_accepted_with_notes(tmp_path: Path) -> None:
    facts = check_local_root(str(tmp_path / "a"), mountinfo=_fake_mountinfo(tmp_path, "fuse.sshfs", "u@h:/d"))
    assert facts.hard_links is True
    assert any("fuse.sshfs" in n for n in facts.notes)
    facts = check_local_root(str(tmp_path / "b"), mountinfo=_fake_mountinfo(tmp_path, "nfs4", "srv:/x"))
    assert any("NFS" in n for n in facts.notes)


def test_a_file_system_without_hard_links_is_refused_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on SMB/vfat: link(2) fails with EPERM. (No such file system can be mounted here.)
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_links)
    root = tmp_path / "store"
    with pytest.raises(UntrustedStoreError, match=r"does not support hard links.+--force"):
        open_store(str(root))
    store = open_store(str(root), force=True)
    caps = store.capabilities()
    assert caps.hard_links is False and caps.atomic_create is False
    assert any(n.startswith("FORCED:") for n in caps.notes)
    # forced, the first create still fails loudly instead of pretending
    with pytest.raises(StoreError, match=r"create 'experiment.json'.+does not support hard links"):
        store.create("experiment.json", b"{}")
    assert [p.name for p in root.iterdir()] == []  # the probe and the temp files are gone


# --- open_store ------------------------------------------------------------------------------


def test_a_missing_root_is_created_with_its_parents(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "store"
    store = open_store(str(root))
    assert root.is_dir()
    assert store.capabilities().hard_links is True
    assert list(root.iterdir()) == []  # the hard-link probe cleaned up
    assert open_store(root.as_uri()).url == store.url  # file:// is the same store


def test_a_missing_root_opened_read_only_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no such folder"):
        open_store(str(tmp_path / "nope"), read_only=True)
    assert not (tmp_path / "nope").exists()


def test_a_root_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"not a folder"):
        open_store(str(tmp_path / "file"))


@pytest.mark.parametrize("url", ["gs://bucket/exp", "http://example.com/exp", "ftp://host/x", "hdfs://nn/x"])
def test_unsupported_schemes_are_refused_naming_the_scheme(url: str) -> None:
    scheme = url.split(":")[0]
    with pytest.raises(
        UntrustedStoreError, match=rf"scheme '{scheme}' is not supported.+atomic create-if-absent"
    ):
        open_store(url)


def test_bad_urls_and_options(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no bucket"):
        open_store("s3:///exp")
    with pytest.raises(StoreError, match="file:// URLs name a local path"):
        open_store("file://otherhost/exp")
    with pytest.raises(StoreError, match="apply to s3:// stores only"):
        open_store(str(tmp_path), endpoint_url="http://x")
    with pytest.raises(StoreError, match="empty store URL"):
        open_store("")
    with pytest.raises(StoreError, match="use_listings_cache=True is refused"):
        open_store("s3://bucket/exp", use_listings_cache=True)


def test_open_store_returns_a_store_unchanged() -> None:
    store = MemoryStore("passthrough")
    assert open_store(store) is store
    clear("passthrough")


def test_s3_endpoint_from_aws_endpoint_url_s3_or_options(
    s3_url: str, s3_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    bucket = s3_url.split("/")[2]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    a = open_store(f"s3://{bucket}/exp")
    assert a.create("k", b"via AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    b = open_store(f"s3://{bucket}/exp", endpoint_url=endpoint, region="us-east-1")
    assert b.read("k") == b"via AWS_ENDPOINT_URL_S3"
    assert isinstance(b, S3Store) and b.capabilities().filesystem == f"s3 ({endpoint})"
    a.close()
    b.close()


def test_s3_url_forms(s3_url: str) -> None:
    bucket = s3_url.split("/")[2]
    store = open_store(f"s3a://{bucket}/a/b/")
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/a/b"
    assert store.create("k", b"x")
    assert open_store(f"s3://{bucket}").read("a/b/k") == b"x"
    store.close()


# --- the self-test against broken stores ------------------------------------------------------


class CheckThenWrite(PosixStore):
    """What fsspec's generic ``mode="create"`` does: look, then write (here with a network's
    worth of delay between the two)."""

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        if self.exists(key):
            return self.read(key) == data
        time.sleep(0.02)
        self.replace(key, data)
        return True


class IgnoresIfNoneMatch(MemoryStore):
    """An S3-compatible server that ignores ``If-None-Match``: every PUT wins."""

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        self.replace(key, data)
        return True


def test_self_test_refuses_check_then_write(tmp_path: Path) -> None:
    store = CheckThenWrite(str(tmp_path))
    with pytest.raises(UntrustedStoreError, match=r"failed the self-test: .*both won.+--force"):
        self_test(store)
    assert store.list(layout.SELFTEST_DIR) == []  # cleaned up even so
    caps = self_test(store, raise_on_failure=False)
    assert caps.self_test.startswith("failed:") and caps.atomic_create is False and caps.atomic_replace


def test_self_test_refuses_a_server_ignoring_if_none_match() -> None:
    store = IgnoresIfNoneMatch("ignores-if-none-match")
    try:
        caps = self_test(store, raise_on_failure=False)
        assert "another body returned True" in caps.self_test
        assert caps.atomic_create is False
        with pytest.raises(UntrustedStoreError):
            self_test(store)
    finally:
        clear("ignores-if-none-match")


def test_self_test_reports_a_store_error_or_raises_it(tmp_path: Path) -> None:
    class Broken(PosixStore):
        def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
            raise StoreError(f"replace {key!r}: disk on fire")

    with pytest.raises(StoreError, match="disk on fire"):
        self_test(Broken(str(tmp_path)))
    caps = self_test(Broken(str(tmp_path)), raise_on_failure=False)
    assert "disk on fire" in caps.self_test
    assert Broken(str(tmp_path)).list(layout.SELFTEST_DIR) == []


def test_self_test_races_really_overlap(tmp_path: Path) -> None:
    # The two racers are released together: both are inside create at the same time. The first
    # racer (a thread of its own: the self-test's other creates run in this one) to reach the
    # link waits there for the other; a 10 ms sleep was the old overlap, which a thread
    # descheduled on a loaded machine misses. Racers that never meet still fail, only slower.
    inside = 0
    peak = 0
    lock = threading.Lock()
    met = threading.Event()

    class Watched(PosixStore):
        def _link(self, src: str, dst: str) -> None:
            nonlocal inside, peak
            with lock:
                inside += 1
                peak = max(peak, inside)
                if inside == 2:
                    met.set()
            if threading.current_thread() is not threading.main_thread():
                met.wait(5)
            try:
                super()._link(src, dst)
            finally:
                with lock:
                    inside -= 1

    assert self_test(Watched(str(tmp_path))).self_test == "passed"
    assert peak == 2


# --- SMB/CIFS and 9p ---------------------------------------------------------------------------


def _fake_mountinfo_opts(tmp_path: Path, fstype: str, source: str, super_options: str) -> str:
    path = tmp_path / "mountinfo"
    line = f"2 1 0:60 / {tmp_path} rw,relatime shared:2 - {fstype} {source} {super_options}"
    path.write_text(_line(1, "/", "ext4", "/dev/vda") + "\n" + line + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("fstype", "source", "opts"),
    [
        ("cifs", "//srv/share", "rw,vers=3.1.1,cache=loose,actimeo=1"),
        ("smb3", "//srv/share", "rw,cache=loose"),
        ("9p", "hostshare", "rw,cache=loose,access=client,trans=virtio"),
        ("9p", "drvfs", "rw,cache=fscache,aname=drvfs"),
    ],
)
def test_smb_and_9p_with_an_incoherent_cache_are_refused_unless_forced(
    tmp_path: Path, fstype: str, source: str, opts: str
) -> None:
    info = _fake_mountinfo_opts(tmp_path, fstype, source, opts)
    root = str(tmp_path / "store")
    with pytest.raises(UntrustedStoreError) as exc:
        check_local_root(root, mountinfo=info)
    msg = str(exc.value)
    assert fstype in msg and "cache=" in msg and "not coherent" in msg and "--force" in msg
    facts = check_local_root(root, force=True, mountinfo=info)
    assert any(n.startswith("FORCED:") for n in facts.notes)
    assert check_local_root(root, read_only=True, mountinfo=info).filesystem == fstype


@pytest.mark.parametrize(
    ("fstype", "source", "opts", "words"),
    [
        ("cifs", "//srv/share", "rw,vers=3.1.1,cache=strict,actimeo=3", ["SMB/CIFS", "actimeo=3"]),
        ("smb3", "//srv/share", "rw", ["SMB/CIFS", "actimeo=1"]),
        ("9p", "hostshare", "rw,access=client,trans=virtio", ["9p", "cache=none"]),
        ("9p", "drvfs", "rw,cache=mmap,aname=drvfs", ["9p", "cache=mmap"]),
    ],
)
def test_smb_and_9p_otherwise_are_accepted_with_a_warning_note(
    tmp_path: Path, fstype: str, source: str, opts: str, words: list[str]
) -> None:
    facts = check_local_root(
        str(tmp_path / "a"), mountinfo=_fake_mountinfo_opts(tmp_path, fstype, source, opts)
    )
    assert facts.hard_links is True and facts.filesystem == fstype
    note = next(n for n in facts.notes if words[0] in n)
    assert all(w in note for w in words), note
