"""The GPU tests' fakes, at the edges only: an ``nvidia-smi`` on PATH and a CUDA that a CPU-only
torch pretends to have. The logic under test (discovery, tokens, locks, the memory rule, device
health, packing, the agent's loop) is the real one.

``FakeSmi(tmp_path)`` writes an executable ``nvidia-smi`` that answers the queries ablator makes
(``--query-gpu=...``, ``--query-compute-apps=...``, ``-L``) from a JSON state file, which a test
may rewrite at any time (free memory changing between claims), and logs every call.

``fake_cuda`` (``ABLATOR_DEVICE_CHECK=tests.gpu.fakegpu:fake_cuda`` in an agent's environment)
is the device check of each GPU worker: it patches this process's ``torch.cuda`` queries so that
CPU-only torch passes for a GPU with ``$FAKE_CUDA_NAME`` and a trial's peak memory of
``$FAKE_CUDA_PEAK_MB``; with ``FAKE_CUDA_BROKEN=1`` it raises as a faulty GPU would.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

SCRIPT = r"""#!{python}
import json, os, sys
state = json.load(open({state!r}))
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
args = sys.argv[1:]
gpus = state["gpus"]
if args == ["-L"]:
    for g in gpus:
        print(f"GPU {{g['index']}}: {{g['name']}} (UUID: {{g['uuid']}})")
        for k, m in enumerate(g.get("migs", [])):
            print(f"  MIG {{m['profile']}}     Device  {{k}}: (UUID: {{m['uuid']}})")
    sys.exit(0)
query = next((a for a in args if a.startswith("--query-")), None)
if query is None:
    sys.exit(0)
kind, _, fields = query.partition("=")
fields = fields.split(",")
if kind == "--query-compute-apps":
    rows = state.get("apps", [])
    names = {{"pid": "pid", "gpu_uuid": "uuid", "used_memory": "used"}}
else:
    rows = gpus
    names = {{"index": "index", "uuid": "uuid", "name": "name", "memory.total": "total",
             "memory.free": "free", "driver_version": "driver", "mig.mode.current": "mig",
             "utilization.gpu": "util", "pci.bus_id": "bus"}}
    if state.get("old_driver") and "mig.mode.current" in fields:
        print('Field "mig.mode.current" is not a valid field to query.', file=sys.stderr)
        sys.exit(2)
for row in rows:
    out = []
    for f in fields:
        if f not in names:
            print(f'Field "{{f}}" is not a valid field to query.', file=sys.stderr)
            sys.exit(2)
        v = row.get(names[f], state.get(names[f], "[N/A]"))
        out.append(str(v))
    print(", ".join(out))
"""


def gpu(
    index: int,
    uuid: str,
    name: str = "NVIDIA H100 80GB HBM3",
    total: int | str = 81559,
    free: int | str | None = None,
    *,
    util: int | str = 0,
    mig: str = "Disabled",
    migs: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """One GPU row of the fake's state (values as nvidia-smi prints them; "[N/A]" allowed)."""
    return {
        "index": index,
        "uuid": uuid,
        "name": name,
        "total": total,
        "free": total if free is None else free,
        "util": util,
        "mig": mig,
        "migs": migs or [],
    }


class FakeSmi:
    """An ``nvidia-smi`` in ``<tmp>/bin`` answering from ``<tmp>/smi.json``."""

    def __init__(self, tmp: Path, gpus: list[dict[str, Any]], **state: Any) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state_path = tmp / "smi.json"
        self.log = tmp / "smi.log"
        self.log.touch()
        self.write(gpus, **state)
        exe = self.bin / "nvidia-smi"
        exe.write_text(SCRIPT.format(python=sys.executable, state=str(self.state_path), log=str(self.log)))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def write(self, gpus: list[dict[str, Any]], **state: Any) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": "550.54.15", "gpus": gpus, **state}))
        os.replace(tmp, self.state_path)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def path_env(self, base: str | None = None) -> str:
        return os.pathsep.join([str(self.bin), base if base is not None else os.environ.get("PATH", "")])


def fake_cuda() -> None:
    """The device check of a GPU worker in the tests (see the module docstring)."""
    if os.environ.get("FAKE_CUDA_BROKEN") == "1":
        raise RuntimeError("CUDA error: uncorrectable ECC error encountered")
    import torch

    peak = int(os.environ.get("FAKE_CUDA_PEAK_MB", "100")) * 2**20
    name = os.environ.get("FAKE_CUDA_NAME", "Fake GPU")
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_name = lambda device=None: name
    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.max_memory_reserved = lambda device=None: peak
    torch.cuda.synchronize = lambda device=None: None
