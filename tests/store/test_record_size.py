"""Records are small by design: a read refuses a key over its limit from the size, before the
body is read (issue 12: a hostile or damaged store must not make readers load gigabytes), on
every backend; code snapshots and checkpoints pass limits of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from ablator import layout, records
from ablator.store import open_store
from ablator.store.base import NO_LIMIT, RecordTooLarge

KEY = layout.result(0)


@pytest.mark.parametrize("backend", ["posix", "memory", "s3"])
def test_a_record_over_the_limit_is_refused_naming_its_key_and_size(make_url: Callable[[str], str]) -> None:
    """The limit is the store's parameter (lowered here to keep the S3 object small); a key at
    the limit reads, one byte more is refused with the key, its size and what to do, and a read
    that names its own limit (a checkpoint's) still reads it."""
    store = open_store(make_url("exp"), max_record_bytes=1000)
    try:
        store.replace(layout.result(1), b"r" * 1000)
        store.replace(KEY, b"x" * 1001)
        assert store.read(layout.result(1)) == b"r" * 1000
        with pytest.raises(RecordTooLarge) as err:
            store.read(KEY)
        text = str(err.value)
        assert KEY in text and store.url in text and "1,001 bytes" in text and "1,000" in text
        assert "restore it from a backup" in text
        with pytest.raises(RecordTooLarge):
            store.get(KEY)
        assert store.read(KEY, max_bytes=NO_LIMIT) == b"x" * 1001
        assert store.get(KEY, max_bytes=2000) == b"x" * 1001
        # readers treat it as a torn record: None, with a warning naming the key
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert records.read(store, KEY, records.Result) is None
        assert any(KEY in str(w.message) and "1,001 bytes" in str(w.message) for w in caught)
        with pytest.raises(FileNotFoundError):  # an absent key is still absent, not too large
            store.read(layout.result(2))
    finally:
        store.close()


@pytest.mark.procs
def test_a_sparse_file_of_gigabytes_is_refused_unread(tmp_path: Path) -> None:
    """A 5 GiB result (a sparse file: no disk) at the default limit: refused from the file's
    size; the child process that reads it stays far below 5 GiB (its peak memory is printed)."""
    store = open_store(tmp_path / "store")
    path = tmp_path / "store" / KEY
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(5 * 1024**3)
    with pytest.raises(RecordTooLarge, match=r"5,368,709,120 bytes"):
        store.read(KEY)
    code = (
        "import resource, sys, warnings\n"
        "from ablator import layout, records\n"
        "from ablator.store import open_store\n"
        "warnings.simplefilter('ignore')\n"
        "st = open_store(sys.argv[1], read_only=True)\n"
        "assert records.read(st, layout.result(0), records.Result) is None\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 1024**3  # nothing like the file's 5 GiB was read


@pytest.mark.procs  # the snapshot asks git which files to take
def test_a_code_snapshot_over_its_own_limit_is_refused_unread_and_replaced_on_upload(tmp_path: Path) -> None:
    """Code snapshots are not records: their reads take ``MAX_ZIP_BYTES`` (an ordinary snapshot
    over the record limit still reads), and a 5 GiB one is refused from its size: the agent's
    unpack says which key and why; ``launch --code`` replaces it (as it replaces a corrupt one)."""
    from ablator import codesnap

    code = tmp_path / "code"
    code.mkdir()
    (code / "model.py").write_text("X = 1\n")
    snap = codesnap.snapshot_code(code)
    store = open_store(tmp_path / "store", max_record_bytes=16)  # far below the zip's size
    codesnap.upload(store, snap)
    assert (
        codesnap.ensure_code(store, snap.sha256, tmp_path / "cache") / "model.py"
    ).read_text() == "X = 1\n"

    path = tmp_path / "store" / layout.code(snap.sha256)
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(codesnap.MAX_ZIP_BYTES + 1)
    with pytest.raises(codesnap.CodeSnapshotError, match=f"{codesnap.MAX_ZIP_BYTES + 1:,} bytes"):
        codesnap.ensure_code(store, snap.sha256, tmp_path / "cache2")
    codesnap.upload(store, snap)
    assert path.stat().st_size == len(snap.data)
