"""Local devices and the agent's slots.

GPUs are found with ``nvidia-smi`` (no CUDA context in the agent process, whose job is only to
coordinate), falling back to a short-lived child process that asks torch. The agent itself never
imports torch: a CUDA context in the parent would pin memory on every GPU and survive the
workers it is meant to outlive. Once its slots are planned the agent hides every GPU from
itself (:func:`hide_gpus_from_parent`), so that a user module's ``.cuda()`` at import, which
runs in the parent too when the agent validates the entry point, cannot make one either.

Which GPUs, and how workers name them:

* nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is "fastest first". Workers get
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and, wherever nvidia-smi told us, the device's UUID in
  ``CUDA_VISIBLE_DEVICES``, so the name, memory and heartbeat of a slot describe the card it
  really runs on.
* An inherited ``CUDA_VISIBLE_DEVICES`` (Slurm, Kubernetes device plugins, a user) restricts the
  agent to those devices. Its tokens may be indexes, UUIDs, unique UUID prefixes (as CUDA accepts
  them) or MIG instances; like CUDA, the list ends at the first token that names nothing. A
  token nvidia-smi cannot resolve is passed to the worker as it is.
* A GPU in MIG mode is not a device CUDA can use: its MIG instances are (``nvidia-smi -L``),
  each with its own slots.

Several agents on one machine share its GPUs: each GPU slot is a local :mod:`filelock` held for
the agent's lifetime, keyed by the device's UUID (two agents that name one GPU differently still
exclude each other), so two agents started with the same ``--gpus`` split the slots instead of
doubling up. Locks live in a local folder (``$ABLATOR_LOCK_DIR``), never in the shared store;
containers that share GPUs must share that folder too (``docs/agent.md``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ablator.errors import ConfigError
from ablator.records import GpuInfo

#: nvidia-smi is asked for these; ``mig.mode.current`` is missing on old drivers (asked again without).
_QUERY = "index,uuid,name,memory.total,memory.free,driver_version,mig.mode.current"
_QUERY_OLD = "index,uuid,name,memory.total,memory.free,driver_version"
#: the memory rule's re-read before a claim
_MEMORY_QUERY = "uuid,memory.total,memory.free,utilization.gpu"
_APPS_QUERY = "pid,gpu_uuid,used_memory"

_TORCH_PROBE = r"""
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        uuid = str(getattr(props, "uuid", "") or "")
        out.append({"index": i, "name": torch.cuda.get_device_name(i), "uuid": uuid,
                    "memory_total_mb": total // 2**20, "memory_free_mb": free // 2**20})
print(json.dumps(out))
"""

#: Environment every GPU worker gets: CUDA numbers devices as nvidia-smi does.
DEVICE_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


# --- nvidia-smi ---------------------------------------------------------------------------------


def _smi(*args: str, timeout: float = 30) -> str | None:
    """nvidia-smi's stdout, or None when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run(
            [exe, *args], capture_output=True, check=True, timeout=timeout, text=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _int_or_none(text: str) -> int | None:
    """A reported number; None for ``[N/A]``, ``[Not Supported]`` and other non-numbers."""
    try:
        return int(float(text))
    except ValueError:
        return None


def _rows(out: str, width: int) -> Iterator[list[str]]:
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= width:
            yield parts


@dataclass(frozen=True)
class Device:
    """A CUDA device this host has: a whole GPU, or a MIG instance of one."""

    index: int  # nvidia-smi's index (PCI order) of the GPU, or of the MIG instance's parent
    uuid: str = ""  # GPU-... or MIG-...; "" when unknown
    name: str = ""
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    instance: int | None = None  # MIG device number within the parent
    parent_uuid: str = ""
    token: str = ""  # what the worker's CUDA_VISIBLE_DEVICES says ("" -> uuid or index)

    @property
    def label(self) -> str:
        return f"gpu{self.index}" if self.instance is None else f"gpu{self.index}/mig{self.instance}"

    @property
    def visible(self) -> str:
        """The worker's ``CUDA_VISIBLE_DEVICES``."""
        return self.token or self.uuid or str(self.index)

    @property
    def key(self) -> str:
        """A name for lock files: the UUID when known (every agent spells it alike)."""
        raw = self.uuid or f"gpu{self.index}" + (f"-mig{self.instance}" if self.instance is not None else "")
        return re.sub(r"[^A-Za-z0-9._-]", "_", raw)

    def info(self, **kw: Any) -> GpuInfo:
        return GpuInfo(
            index=self.index,
            name=self.name,
            memory_total_mb=self.memory_total_mb,
            memory_free_mb=self.memory_free_mb,
            uuid=self.uuid,
            instance=self.instance,
            **kw,
        )


_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*([^)]+)\)")
_GPU_LINE = re.compile(r"^GPU\s+(\d+):.*\(UUID:\s*([^)]+)\)")
_PROFILE_GB = re.compile(r"(\d+(?:\.\d+)?)gb$")


def _mig_instances(parents: dict[int, Device]) -> dict[int, list[Device]]:
    """MIG instances by parent index, from ``nvidia-smi -L``. A MIG instance's memory is its
    profile's nominal size less 5% (``3g.20gb``: 19000 MiB); its free memory is not reported."""
    out = _smi("-L")
    found: dict[int, list[Device]] = {}
    if out is None:
        return found
    parent: Device | None = None
    for line in out.splitlines():
        g = _GPU_LINE.match(line)
        if g:
            parent = parents.get(int(g.group(1)))
            continue
        m = _MIG_LINE.match(line)
        if m and parent is not None:
            profile, number, uuid = m.group(1), int(m.group(2)), m.group(3).strip()
            gb = _PROFILE_GB.search(profile)
            found.setdefault(parent.index, []).append(
                Device(
                    index=parent.index,
                    uuid=uuid,
                    name=f"{parent.name} MIG {profile}",
                    memory_total_mb=int(float(gb.group(1)) * 950) if gb else None,
                    memory_free_mb=None,
                    instance=number,
                    parent_uuid=parent.uuid,
                )
            )
    return found


def _nvidia_smi() -> tuple[list[Device], str | None] | None:
    """Every CUDA device nvidia-smi sees (MIG instances in place of their parents) and the
    driver version; None without a working nvidia-smi."""
    out = _smi(f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits")
    width = 7
    if out is None:  # an old driver that does not know mig.mode.current
        out = _smi(f"--query-gpu={_QUERY_OLD}", "--format=csv,noheader,nounits")
        width = 6
    if out is None:
        return None
    gpus: list[Device] = []
    mig_parents: dict[int, Device] = {}
    driver: str | None = None
    for parts in _rows(out, width):
        index = _int_or_none(parts[0])
        if index is None:
            continue  # not a GPU row
        driver = parts[5] or driver
        dev = Device(
            index=index,
            uuid=parts[1] if parts[1].startswith("GPU-") else "",
            name=parts[2],
            # [N/A] is "not reported", not a reason to drop the GPU
            memory_total_mb=_int_or_none(parts[3]),
            memory_free_mb=_int_or_none(parts[4]),
        )
        if width == 7 and parts[6].lower() == "enabled":
            mig_parents[index] = dev
        gpus.append(dev)
    if mig_parents:
        instances = _mig_instances(mig_parents)
        gpus = [d for g in gpus for d in (instances.get(g.index, []) if g.index in mig_parents else [g])]
    return gpus, driver


def _torch_probe() -> list[Device]:
    env = dict(os.environ)
    env.update(DEVICE_ORDER)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE],
            capture_output=True,
            check=True,
            timeout=120,
            text=True,
            env=env,
        ).stdout
        items = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return []
    visible = visible_tokens()
    found = []
    for item in items:
        i = int(item["index"])
        uuid = str(item.get("uuid") or "")
        if uuid and not uuid.startswith(("GPU-", "MIG-")):
            uuid = f"GPU-{uuid}"
        # torch numbers the visible devices 0..n-1: the worker gets the token that named it.
        token = visible[i] if visible is not None and i < len(visible) else ""
        found.append(
            Device(
                index=int(token) if token.isdigit() else i,
                uuid=uuid,
                name=str(item["name"]),
                memory_total_mb=item.get("memory_total_mb"),
                memory_free_mb=item.get("memory_free_mb"),
                token=token,
            )
        )
    return found


def visible_tokens() -> list[str] | None:
    """The agent's inherited ``CUDA_VISIBLE_DEVICES`` as a list of tokens, or None when unset."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    return [p.strip() for p in env.split(",") if p.strip()]


def match_token(token: str, devices: Sequence[Device]) -> list[Device] | str:
    """The devices one ``CUDA_VISIBLE_DEVICES`` / ``--gpus`` token names, or why it names none.

    An index names that GPU (all its MIG instances in MIG mode); ``GPU-...`` and ``MIG-...``
    match UUIDs by unique prefix, as CUDA does (case aside); ``MIG-GPU-<uuid>/<gi>/<ci>`` (old
    drivers) must match exactly.
    """
    t = token.strip()
    if t.isdigit():
        hit = [d for d in devices if d.index == int(t)]
        return hit or f"no GPU with index {t}"
    low = t.lower()
    if low.startswith(("gpu-", "mig-")):
        whole = [d for d in devices if d.uuid.lower() == low or d.parent_uuid.lower() == low]
        if whole:
            return whole
        hit = [d for d in devices if d.uuid.lower().startswith(low)]
        if len(hit) == 1:
            return hit
        parents = {d.parent_uuid for d in devices if d.parent_uuid.lower().startswith(low)}
        if len(parents) == 1 and not hit:
            return [d for d in devices if d.parent_uuid in parents]
        if len(hit) > 1 or len(parents) > 1:
            return f"{t!r} is a prefix of more than one UUID"
        return f"no device with UUID {t!r}"
    return f"{t!r} is not an index or a GPU-/MIG- UUID"


def select_visible(devices: list[Device], tokens: list[str] | None) -> tuple[list[Device], list[str]]:
    """The devices an inherited ``CUDA_VISIBLE_DEVICES`` leaves, each carrying the token that
    named it (passed on to its worker), and notes. Like CUDA, the list ends at a token that
    names nothing."""
    if tokens is None:
        return devices, []
    notes: list[str] = []
    out: list[Device] = []
    order = os.environ.get("CUDA_DEVICE_ORDER", "")
    if order and order != "PCI_BUS_ID" and any(t.isdigit() for t in tokens):
        notes.append(
            f"CUDA_DEVICE_ORDER={order}: indexes in CUDA_VISIBLE_DEVICES are read in nvidia-smi's "
            "(PCI bus) order; use UUIDs to be sure"
        )
    seen: set[str] = set()
    for token in tokens:
        hit = match_token(token, devices)
        if isinstance(hit, str):
            notes.append(
                f"CUDA_VISIBLE_DEVICES={','.join(tokens)}: {hit}; like CUDA, the devices after it are ignored"
            )
            break
        for d in hit:
            if d.key not in seen:
                seen.add(d.key)
                # a whole GPU or MIG instance named exactly: its token goes to the worker as is
                exact = len(hit) == 1 and not token.isdigit()
                out.append(_with_token(d, token if exact else ""))
    return out, notes


def _with_token(d: Device, token: str) -> Device:
    from dataclasses import replace

    return replace(d, token=token)


def discover_devices() -> tuple[list[Device], str | None, list[str]]:
    """Local CUDA devices this agent may use (its inherited ``CUDA_VISIBLE_DEVICES`` applied),
    the driver version and notes for the log."""
    found = _nvidia_smi()
    if found is not None and found[0]:
        devices, notes = select_visible(found[0], visible_tokens())
        return devices, found[1], notes
    return _torch_probe(), None, []  # the probe ran under the inherited CUDA_VISIBLE_DEVICES


def discover_gpus() -> tuple[list[GpuInfo], str | None]:
    """Local CUDA GPUs as heartbeat records, and the driver version (see :func:`discover_devices`)."""
    devices, driver, _ = discover_devices()
    return [d.info() for d in devices], driver


@dataclass(frozen=True)
class MemoryReading:
    """One re-read of a device's memory (MiB) and utilisation (%); None: not reported."""

    total_mb: int | None
    free_mb: int | None
    utilization: int | None = None


def read_memory() -> tuple[dict[str, MemoryReading], dict[int, int]] | None:
    """Memory of every GPU by UUID, and GPU memory (MiB) used by each process id, from
    nvidia-smi now; None without it. Processes in another PID namespace (containers) are not
    seen: their memory then counts as unknown use."""
    out = _smi(f"--query-gpu={_MEMORY_QUERY}", "--format=csv,noheader,nounits", timeout=10)
    if out is None:
        return None
    mem: dict[str, MemoryReading] = {}
    for parts in _rows(out, 4):
        mem[parts[0]] = MemoryReading(_int_or_none(parts[1]), _int_or_none(parts[2]), _int_or_none(parts[3]))
    used: dict[int, int] = {}
    apps = _smi(f"--query-compute-apps={_APPS_QUERY}", "--format=csv,noheader,nounits", timeout=10)
    for parts in _rows(apps or "", 3):
        pid, mb = _int_or_none(parts[0]), _int_or_none(parts[2])
        if pid is not None and mb is not None:
            used[pid] = used.get(pid, 0) + mb
    return mem, used


def headroom_mb(g: GpuInfo) -> int | None:
    """What a new trial may have on ``g`` by its agent's memory rule: the available figure the
    agent last worked out, else free memory, else total; None when nothing was reported."""
    if g.available_mb is not None:
        return g.available_mb
    return g.memory_free_mb if g.memory_free_mb is not None else g.memory_total_mb


def gpu_fits(g: GpuInfo, need_mb: int) -> bool:
    """The memory rule as ``status`` applies it to a heartbeat's GPU (the agents' own numbers).
    A GPU out of service fits nothing; one that reported no memory is given the benefit of the
    doubt, as agents do."""
    if g.out_of_service:
        return False
    have = headroom_mb(g)
    return have is None or have >= need_mb


def memory_summary(gpus: Sequence[GpuInfo]) -> str:
    """``gpu0 5000 MiB available of 81559, gpu1 out of service`` for a waiting-trials line."""
    if not gpus:
        return "no GPU"
    parts = []
    for g in gpus[:8]:
        label = f"gpu{g.index}" if g.instance is None else f"gpu{g.index}/mig{g.instance}"
        if g.out_of_service:
            parts.append(f"{label} out of service")
            continue
        have = headroom_mb(g)
        total = f" of {g.memory_total_mb}" if g.memory_total_mb is not None else ""
        parts.append(f"{label} {have if have is not None else '?'} MiB available{total}")
    return ", ".join(parts) + (f", ... ({len(gpus)} in all)" if len(gpus) > 8 else "")


def capacity_mb(slot: Slot) -> int | None:
    """The most memory a trial could ever have on ``slot``'s device: its total (None: unknown)."""
    return None if slot.device is None else slot.device.memory_total_mb


def gpus_out_of_service(gpus: Sequence[GpuInfo]) -> list[str]:
    """``gpu1 (GPU-...): why`` for each GPU of a heartbeat that its agent took out of service."""
    out = []
    for g in gpus:
        if g.out_of_service:
            label = f"gpu{g.index}" if g.instance is None else f"gpu{g.index}/mig{g.instance}"
            out.append(
                f"{label} ({g.uuid}): {g.out_of_service}" if g.uuid else f"{label}: {g.out_of_service}"
            )
    return out


# --- slots --------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One concurrent trial: on device ``device`` or on the CPU (``device`` None).

    ``out_of_service``: why its GPU stopped serving (repeated device errors); the slot then
    runs only trials that may use the CPU, on the CPU. ``gpu`` is the device as a heartbeat
    record (memory as last read).
    """

    id: int
    gpu: GpuInfo | None = None
    lock: FileLock | None = None
    device: Device | None = None
    out_of_service: str = ""
    threads: int | None = None  # torch threads of a GPU worker (its share of the cores)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device is None and self.gpu is not None:
            self.device = Device(
                index=self.gpu.index,
                uuid=self.gpu.uuid,
                name=self.gpu.name,
                memory_total_mb=self.gpu.memory_total_mb,
                memory_free_mb=self.gpu.memory_free_mb,
                instance=self.gpu.instance,
            )
        if self.gpu is None and self.device is not None:
            self.gpu = self.device.info()

    @property
    def kind(self) -> str:
        return "cpu" if self.device is None or self.out_of_service else "gpu"

    @property
    def label(self) -> str:
        if self.device is None:
            return "cpu"
        return f"cpu ({self.device.label} out of service)" if self.out_of_service else self.device.label

    def env(self) -> dict[str, str]:
        """Environment overrides for this slot's worker."""
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU slot must not grab one by accident,
        # nor a slot whose GPU is out of service.
        if self.device is None or self.out_of_service:
            return {"CUDA_VISIBLE_DEVICES": "", **self.extra_env}
        env = {"CUDA_VISIBLE_DEVICES": self.device.visible, **DEVICE_ORDER, **self.extra_env}
        if self.threads is not None:
            env["ABLATOR_THREADS"] = str(self.threads)
        return env

    def can_run(self, requires_gpu: bool, min_gpu_memory_mb: int, available_mb: int | None = None) -> bool:
        """Whether a trial with these needs may start here. ``available_mb``: the memory rule's
        figure for this slot's device now (:class:`ablator.agent.slots.GpuMemory`); without it,
        the device's free memory at discovery. Unknown memory is given the benefit of the doubt."""
        if self.device is None or self.out_of_service:
            return not requires_gpu and min_gpu_memory_mb <= 0
        if min_gpu_memory_mb <= 0:
            return True
        have = available_mb
        if have is None and self.gpu is not None:
            have = (
                self.gpu.memory_free_mb if self.gpu.memory_free_mb is not None else self.gpu.memory_total_mb
            )
        return have is None or have >= min_gpu_memory_mb

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# --- the local lock folder -----------------------------------------------------------------------


def lock_dir() -> Path:
    """The host's lock folder: ``$ABLATOR_LOCK_DIR``, default ``<tmp>/ablator-locks``.

    Every user's agents on a host must see the same folder to share its GPUs, so it is created
    like ``/tmp`` itself (world-writable, sticky) and its lock files readable and writable by
    all. Containers with separate ``/tmp`` folders exclude each other only through a folder
    they share (mount one and set ``ABLATOR_LOCK_DIR``)."""
    d = Path(os.environ.get("ABLATOR_LOCK_DIR") or Path(tempfile.gettempdir()) / "ablator-locks")
    if not d.is_dir():
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o1777)
        except PermissionError as exc:
            raise _lock_error(d, exc) from None
        except OSError:
            pass  # another agent made it first, or a file system without modes
    return d


def _lock_error(path: Path, exc: OSError) -> ConfigError:
    owner = ""
    with contextlib.suppress(OSError, KeyError, ImportError):
        import pwd

        owner = f" (owned by {pwd.getpwuid(path.stat().st_uid).pw_name})"
    return ConfigError(
        f"cannot use the local lock file {str(path)!r}{owner}: {exc.strerror or exc}. Agents of all users on "
        "this machine must share one lock folder to share its GPUs: ask its owner to run "
        f"`chmod 1777 {path if path.is_dir() else path.parent}` and `chmod 666` on its lock files, or "
        "set ABLATOR_LOCK_DIR to a folder every user's agents can write (docs/agent.md, 'Several "
        "users or containers on one machine')"
    )


def try_lock(name: str) -> FileLock | None:
    """Hold ``<lock dir>/<name>`` now, or None when another process holds it. ConfigError when
    this user may not use it (another user's lock file in a folder not made for sharing)."""
    path = lock_dir() / name
    lock = FileLock(str(path), mode=0o666)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    except PermissionError as exc:
        raise _lock_error(path, exc) from None
    with contextlib.suppress(OSError):
        # filelock applies the umask; another user must be able to open this file too
        if stat.S_IMODE(path.stat().st_mode) != 0o666:
            os.chmod(path, 0o666)
    return lock


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
        lock = try_lock(f"cpu-slot{k}.lock")
        if lock is not None:
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
        probe = FileLock(str(path), mode=0o666)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            held += 1
        except PermissionError:
            held += 1  # another user's lock file: count it as held
        else:
            probe.release()
    return max(1, held)


def cpu_threads_share() -> int:
    """Intra-op threads for one CPU trial: this host's cores split among its CPU slots."""
    return max(1, (os.cpu_count() or 1) // local_cpu_slots())


def parse_gpu_list(text: str) -> list[str]:
    """``--gpus``: comma-separated indexes (nvidia-smi's), UUIDs or UUID prefixes."""
    tokens = [p.strip() for p in text.split(",") if p.strip()]
    bad = [t for t in tokens if not (t.isdigit() or t.lower().startswith(("gpu-", "mig-")))]
    if bad or not tokens:
        raise ConfigError(
            f"--gpus {text!r}: expected comma-separated GPU indexes such as 0,1 (nvidia-smi's numbering) "
            "or UUIDs such as GPU-5d5ba0d6 (a unique prefix is enough)"
        )
    return tokens


#: ``--slots-per-gpu auto`` starts one slot per GPU and grows to at most this many.
AUTO_MAX_SLOTS_PER_GPU = 8


def parse_slots_per_gpu(value: int | str) -> tuple[int, bool]:
    """``--slots-per-gpu``: a number, or ``auto`` (packing: see :mod:`ablator.agent.packing`).
    Returns (slots per GPU to plan, auto?)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_MAX_SLOTS_PER_GPU, True
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--slots-per-gpu {value!r}: expected a number >= 1 or 'auto'") from None
    if n < 1:
        raise ConfigError(f"--slots-per-gpu {value}: must be at least 1")
    return n, False


def plan_slots(
    *,
    cpu: bool,
    gpus_arg: str | None,
    slots: int | None,
    slots_per_gpu: int,
    found: Sequence[GpuInfo | Device],
) -> tuple[list[Slot], list[str]]:
    """The slots this agent runs and notes for the log.

    ``--cpu``: ``slots`` CPU slots (default 1). Otherwise one slot per device (times
    ``slots_per_gpu``, at most ``slots`` in all), each taken with a local lock so that several
    agents on this host split the GPUs; without any GPU, one CPU slot. GPU workers share the
    host's cores: each gets ``cores // slots`` torch threads.
    """
    notes: list[str] = []
    if slots is not None and slots < 1:
        raise ConfigError(f"--slots {slots}: must be at least 1")
    if slots_per_gpu < 1:
        raise ConfigError(f"--slots-per-gpu {slots_per_gpu}: must be at least 1")
    if cpu:
        return [Slot(i, None, take_cpu_slot_lock()) for i in range(slots or 1)], notes
    devices = [d if isinstance(d, Device) else Slot(0, d).device for d in found]
    chosen: list[Device] = [d for d in devices if d is not None]
    if gpus_arg is not None:
        picked: list[Device] = []
        missing: list[str] = []
        for token in parse_gpu_list(gpus_arg):
            hit = match_token(token, chosen)
            if isinstance(hit, str):
                missing.append(hit)
            else:
                picked.extend(d for d in hit if d not in picked)
        if missing:
            have = ", ".join(f"{d.label} ({d.uuid})" if d.uuid else d.label for d in chosen) or "none"
            raise ConfigError(f"--gpus {gpus_arg}: {'; '.join(missing)} on this machine (found: {have})")
        chosen = picked
    if not chosen:
        notes.append("found no GPU: running CPU-allowed trials on one CPU slot (use --cpu to silence this)")
        return [Slot(0, None, take_cpu_slot_lock())], notes
    out: list[Slot] = []
    busy = 0
    for dev in chosen:
        for k in range(slots_per_gpu):
            if slots is not None and len(out) >= slots:
                break
            lock = try_lock(f"gpu-{dev.key}-slot{k}.lock")
            if lock is None:
                busy += 1
                continue
            out.append(Slot(len(out), None, lock, device=dev))
    if busy:
        notes.append(f"{busy} GPU slot(s) are held by other agents on this machine")
    if not out:
        raise ConfigError(
            "every GPU slot on this machine is held by another agent; use --gpus or --slots-per-gpu"
        )
    share = max(1, (os.cpu_count() or 1) // len(out))
    for s in out:
        s.threads = share
    return out, notes


def describe_slots(slots: Sequence[Slot], *, auto: bool = False) -> str:
    """``gpu0 x2, gpu1 x2`` (``gpu0 x1-8 (auto)`` when packing) for the agent's first log line."""
    counts: dict[str, int] = {}
    for s in slots:
        counts[s.label] = counts.get(s.label, 0) + 1
    out = []
    for label, n in counts.items():
        if auto and label != "cpu":
            out.append(f"{label} x1-{n} (auto)")
        else:
            out.append(label if n == 1 else f"{label} x{n}")
    return ", ".join(out)


def hide_gpus_from_parent() -> str | None:
    """Hide every GPU from this (the agent's) process: its slots are planned, workers name their
    device themselves, and a CUDA context here would pin memory on a GPU for the agent's whole
    life (a user module's ``.cuda()`` at import, run when the agent validates the entry point).
    Returns the previous value (None: unset) for :func:`restore_parent_gpus`."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return previous


def restore_parent_gpus(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = previous


# --- in the worker: is the device usable? ------------------------------------------------------------

#: Environment variable: ``module:function`` run instead of the built-in device check in every GPU
#: worker (a site's own health check; the tests' fake device). It raises when the device is unusable.
DEVICE_CHECK_ENV = "ABLATOR_DEVICE_CHECK"


def check_device() -> str | None:
    """In a GPU worker, before it says hello: run a tiny kernel on its device. None when it
    works, else why not (a CPU-only torch, a driver too old for the wheel, a faulty GPU, an
    Exclusive_Process GPU in use elsewhere)."""
    hook = os.environ.get(DEVICE_CHECK_ENV)
    if hook:
        module, _, name = hook.partition(":")
        try:
            getattr(importlib.import_module(module), name or "check")()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
    import torch

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # torch explains an unusable driver in a warning
        try:
            if not torch.cuda.is_available():
                why = "; ".join(str(w.message).splitlines()[0] for w in seen)
                if torch.version.cuda is None:
                    return (
                        f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch "
                        "on this machine (pytorch.org)"
                    )
                return f"CUDA is not available to torch {torch.__version__} (CUDA {torch.version.cuda})" + (
                    f": {why}" if why else ""
                )
            x = torch.arange(1024, device="cuda", dtype=torch.float32)
            total = float((x * 2).sum().item())
            torch.cuda.synchronize()
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if total != 1024 * 1023:
        return f"a test kernel computed {total:g} instead of {1024 * 1023} on {torch.cuda.get_device_name(0)}"
    return None


#: Messages of errors that are the device's or the installation's fault, not the trial's.
_DEVICE_FAULTS = (
    "cuda is not available",
    "not compiled with cuda",
    "no cuda gpus are available",
    "driver version is insufficient",
    "nvidia driver on your system is too old",
    "no kernel image is available",
    "busy or unavailable",
    "uncorrectable ecc",
    "ecc error",
    "gpu is lost",
    "fallen off the bus",
    "cuda error: initialization error",
    "cuda error: unknown error",
    "cuda error: system not yet initialized",
    "cuda error: operation not supported",
    "invalid device ordinal",
    "nvml",
)


def device_trouble(exc: BaseException) -> str:
    """``"oom"`` when ``exc`` is a CUDA out-of-memory error, ``"device"`` when it is the
    device's or the installation's fault (not the trial's), else ``""``. A device-side assert
    or an illegal memory access is the trial's (an index out of range, a bad kernel)."""
    name = type(exc).__name__
    text = str(exc).lower()
    if name == "OutOfMemoryError" or "cuda out of memory" in text:
        return "oom"
    if any(s in text for s in _DEVICE_FAULTS):
        return "device"
    return ""
