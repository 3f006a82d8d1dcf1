"""Local devices and the agent's slots.

GPUs are found with ``nvidia-smi`` (no CUDA context in the agent process, whose job is only to
coordinate), falling back to a short-lived child process that asks torch. The agent itself never
imports torch: a CUDA context in the parent would pin memory on every GPU and survive the
workers it is meant to outlive.

Several agents on one machine share its GPUs: each GPU slot is a local :mod:`filelock` held for
the agent's lifetime, so two agents started with the same ``--gpus`` split the slots instead of
doubling up. Locks live in a local folder, never in the shared store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ablator.errors import ConfigError
from ablator.records import GpuInfo

_TORCH_PROBE = r"""
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append({"index": i, "name": torch.cuda.get_device_name(i),
                    "memory_total_mb": total // 2**20, "memory_free_mb": free // 2**20})
print(json.dumps(out))
"""


def _visible_filter() -> list[str] | None:
    """The agent's own CUDA_VISIBLE_DEVICES as a list, or None when unset."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    return [p.strip() for p in env.split(",") if p.strip()]


def _nvidia_smi() -> tuple[list[GpuInfo], str | None] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=index,uuid,name,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            check=True,
            timeout=30,
            text=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus: list[GpuInfo] = []
    driver: str | None = None
    visible = _visible_filter()
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6:
            continue
        index, uuid, name, total, free, driver = parts[:6]
        if visible is not None and index not in visible and uuid not in visible:
            continue
        try:
            gpus.append(
                GpuInfo(index=int(index), name=name, memory_total_mb=int(total), memory_free_mb=int(free))
            )
        except ValueError:
            continue
    return gpus, driver


def _torch_probe() -> list[GpuInfo]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE], capture_output=True, check=True, timeout=120, text=True
        ).stdout
        items = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return []
    visible = _visible_filter()
    gpus = []
    for item in items:
        # torch numbers the visible devices 0..n-1; map back to what CUDA_VISIBLE_DEVICES named,
        # so that the slot's own CUDA_VISIBLE_DEVICES selects the same device.
        physical = item["index"]
        if visible is not None and item["index"] < len(visible) and visible[item["index"]].isdigit():
            physical = int(visible[item["index"]])
        gpus.append(
            GpuInfo(
                index=physical,
                name=item["name"],
                memory_total_mb=item["memory_total_mb"],
                memory_free_mb=item["memory_free_mb"],
            )
        )
    return gpus


def discover_gpus() -> tuple[list[GpuInfo], str | None]:
    """Local CUDA GPUs (index as CUDA_VISIBLE_DEVICES takes it) and the driver version."""
    found = _nvidia_smi()
    if found is not None and found[0]:
        return found
    return _torch_probe(), None


@dataclass
class Slot:
    """One concurrent trial: on GPU ``gpu`` (CUDA_VISIBLE_DEVICES=gpu.index) or on the CPU."""

    id: int
    gpu: GpuInfo | None = None
    lock: FileLock | None = None

    @property
    def kind(self) -> str:
        return "cpu" if self.gpu is None else "gpu"

    @property
    def label(self) -> str:
        return "cpu" if self.gpu is None else f"gpu{self.gpu.index}"

    def env(self) -> dict[str, str]:
        """Environment overrides for this slot's worker."""
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU slot must not grab one by accident.
        return {"CUDA_VISIBLE_DEVICES": "" if self.gpu is None else str(self.gpu.index)}

    def can_run(self, requires_gpu: bool, min_gpu_memory_mb: int) -> bool:
        if self.gpu is None:
            return not requires_gpu and min_gpu_memory_mb <= 0
        if min_gpu_memory_mb <= 0:
            return True
        # Free memory at discovery when it is known (another process may already use the GPU),
        # else its total; a GPU that reported neither is given the benefit of the doubt.
        have = self.gpu.memory_free_mb or self.gpu.memory_total_mb
        return have == 0 or have >= min_gpu_memory_mb

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def lock_dir() -> Path:
    d = Path(os.environ.get("ABLATOR_LOCK_DIR") or Path(tempfile.gettempdir()) / "ablator-locks")
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- CPU threads shared by the agents of one host ------------------------------------------
#
# torch gives every process as many intra-op threads as there are cores. Two agents on a 2-core
# machine then run 4 spinning threads on 2 cores, which made a small MLP ~10x slower here. Each
# CPU slot of every agent on this host holds a local lock file ``cpu-slot<k>.lock`` while it
# lives; before each trial a CPU worker counts the held ones and takes its share of the cores.
# (Local files and filelock only: host-local exclusion never touches the shared store.)

_CPU_SLOT_SCAN = 256


def take_cpu_slot_lock() -> FileLock:
    """Hold the first free ``cpu-slot<k>.lock`` of this host (for the agent's lifetime)."""
    for k in range(_CPU_SLOT_SCAN):
        lock = FileLock(str(lock_dir() / f"cpu-slot{k}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        return lock
    raise ConfigError(f"more than {_CPU_SLOT_SCAN} CPU slots are held on this machine")


def local_cpu_slots() -> int:
    """How many CPU slots the agents of this host hold now (at least 1). A probe that gets a
    lock was free; flock locks conflict between processes, so a worker sees its parent's."""
    held = 0
    d = lock_dir()
    for k in range(_CPU_SLOT_SCAN):
        path = d / f"cpu-slot{k}.lock"
        if not path.exists():
            continue
        probe = FileLock(str(path))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            held += 1
        else:
            probe.release()
    return max(1, held)


def cpu_threads_share() -> int:
    """Intra-op threads for one CPU trial: this host's cores split among its CPU slots."""
    return max(1, (os.cpu_count() or 1) // local_cpu_slots())


def parse_gpu_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: expected comma-separated GPU indexes such as 0,1") from None


def plan_slots(
    *,
    cpu: bool,
    gpus_arg: str | None,
    slots: int | None,
    slots_per_gpu: int,
    found: list[GpuInfo],
) -> tuple[list[Slot], list[str]]:
    """The slots this agent runs and notes for the log.

    ``--cpu``: ``slots`` CPU slots (default 1). Otherwise one slot per GPU (times
    ``slots_per_gpu``, at most ``slots`` in all), each taken with a local lock so that several
    agents on this host split the GPUs; without any GPU, one CPU slot.
    """
    notes: list[str] = []
    if slots is not None and slots < 1:
        raise ConfigError(f"--slots {slots}: must be at least 1")
    if slots_per_gpu < 1:
        raise ConfigError(f"--slots-per-gpu {slots_per_gpu}: must be at least 1")
    if cpu:
        return [Slot(i, None, take_cpu_slot_lock()) for i in range(slots or 1)], notes
    chosen = found
    if gpus_arg is not None:
        wanted = parse_gpu_list(gpus_arg)
        by_index = {g.index: g for g in found}
        missing = [i for i in wanted if i not in by_index]
        if missing:
            have = ", ".join(str(g.index) for g in found) or "none"
            raise ConfigError(f"--gpus {gpus_arg}: no GPU {missing} on this machine (found: {have})")
        chosen = [by_index[i] for i in wanted]
    if not chosen:
        notes.append("found no GPU: running CPU-allowed trials on one CPU slot (use --cpu to silence this)")
        return [Slot(0, None, take_cpu_slot_lock())], notes
    out: list[Slot] = []
    busy = 0
    for gpu in chosen:
        for k in range(slots_per_gpu):
            if slots is not None and len(out) >= slots:
                break
            lock = FileLock(str(lock_dir() / f"gpu{gpu.index}-slot{k}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                busy += 1
                continue
            out.append(Slot(len(out), gpu, lock))
    if busy:
        notes.append(f"{busy} GPU slot(s) are held by other agents on this machine")
    if not out:
        raise ConfigError(
            "every GPU slot on this machine is held by another agent; use --gpus or --slots-per-gpu"
        )
    return out, notes
