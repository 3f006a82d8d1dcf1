"""A full disk (ENOSPC) is a store error that says so, not an internal error (issue 12). A small
tmpfs, filled up, in a private mount namespace (``unshare -rm``: no privileges needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from testkit import child_env

EXPERIMENT = """
name: full
entry: tests.agent.toy:trial
metric: {name: score, mode: max}
design: {kind: random, trials: 2, space: {x: {range: [0.0, 1.0]}}}
resources: {gpu: none}
"""

# opened while there is room (the trust probe passes), then the disk fills and a create fails
CREATE_WHEN_FULL = """
import sys
from ablator.store import open_store
from ablator.errors import StoreError
st = open_store(sys.argv[1] + "/s2")
try:
    with open(sys.argv[1] + "/fill", "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
except OSError:
    pass  # full
try:
    st.create("trials/0000/claim.e0000", b"x" * 65536)
except StoreError as exc:
    print(exc)
    sys.exit(1)
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.procs
@pytest.mark.skipif(not _can_unshare(), reason="needs user and mount namespaces (unshare -rm)")
def test_a_full_disk_is_a_clear_store_error(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT)
    (tmp_path / "full").mkdir()
    (tmp_path / "create.py").write_text(CREATE_WHEN_FULL)
    full = tmp_path / "full"
    script = (  # the launch meets a disk that is already full; the create one that fills up
        f"mount -t tmpfs -o size=256k tmpfs {full} && head -c 1000000 /dev/zero > {full}/fill; "
        f"python -m ablator launch {exp} --store {full}/s > {tmp_path}/launch.txt 2>&1; "
        f"echo $? > {tmp_path}/launch.rc; rm -rf {full}/fill {full}/s; "
        f"python {tmp_path}/create.py {full} > {tmp_path}/create.txt 2>&1; echo $? > {tmp_path}/create.rc"
    )
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    launch = (tmp_path / "launch.txt").read_text()
    assert (tmp_path / "launch.rc").read_text().strip() == "1", launch
    assert "the disk is full (No space left on device)" in launch and "Traceback" not in launch
    create = (tmp_path / "create.txt").read_text()
    assert (tmp_path / "create.rc").read_text().strip() == "1", create
    assert (
        "the disk is full (No space left on device)" in create
        and "claim.e0000" in create
        and "Traceback" not in create
    )
