"""benchmarks/gpu_check.py keeps working where there is no GPU: its ``--dry`` mode runs every
check end to end on the CPU with tiny sizes and prints the table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import child_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.procs
def test_gpu_check_dry_runs_end_to_end() -> None:
    env = child_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    table = out.stdout.split("\ncheck ", 1)[1]
    for check in (
        "overhead dry-mlp",
        "overhead dry-resnet18-bf16",
        "two slots (CPU, dry)",
        "memory rule (CPU, dry)",
    ):
        assert check in table
    assert re.search(r"resume after SIGKILL\s+bit-exact", table)
    assert "ablator" in table and "lightning" in table and "k=2 x" in table
    assert "ERROR" not in table and "FAILED" not in table
