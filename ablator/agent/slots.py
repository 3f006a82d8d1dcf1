"""The agent's GPU bookkeeping: the memory rule, device health and packing, in one object.

:class:`GpuSlots` is what the agent's loop asks before it claims a trial for a slot
(:meth:`~GpuSlots.can_run`), which device a trial runs on (:meth:`~GpuSlots.device_for`), and
what to do when a worker reports a device problem. It owns no process: the loop starts and
retires workers, and calls the ``on_*`` methods with what they said.

The memory rule (``resources.min_gpu_memory_mb``, and packing's estimates)
---------------------------------------------------------------------------
A trial needing M MiB may start on a device when the device's *available* memory is at least
M, where available = free memory re-read from nvidia-smi (at most :data:`REREAD_S` old) minus
what this agent's trials already running there may still claim: each one's reservation less
what its worker uses now (when nvidia-smi lists the worker's process; in another PID namespace
nothing is listed and the whole reservation counts). A reported 0 MiB free is a known 0. Where
free memory is not reported (MIG instances, ``[N/A]``) the total stands in for it, and a device
that reported neither is given the benefit of the doubt. The heartbeat carries each device's
available figure, and ``ablator status`` explains waiting trials with it.

Device health
-------------
A GPU worker checks its device before it says hello (:func:`ablator.agent.devices.check_device`).
A failed check, and a trial error that is the device's fault
(:func:`ablator.agent.devices.device_trouble`), are *device errors*: the trial is released, not
failed (the attempt does not count), and the worker restarted. After :data:`MAX_DEVICE_ERRORS`
device errors in a row on one device (a finished trial resets the count) the device is out of
service for this agent's life: its slots run only trials that may use the CPU (``gpu:
preferred`` and ``none``), on the CPU, and the heartbeat says why (``ablator status`` shows it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ablator.agent.devices import MemoryReading, Slot, read_memory
from ablator.agent.packing import Packer
from ablator.records import GpuInfo, TrialSpec

#: device errors in a row that take a device out of service
MAX_DEVICE_ERRORS = 3
#: the memory rule re-reads nvidia-smi when its last reading is older than this (seconds)
REREAD_S = 1.0
#: out-of-memory errors on one GPU this soon after a packing back-off belong to the same event
OOM_WINDOW_S = 30.0

#: the loop's view of its running trials: slot id -> (the trial's spec, its worker's pid)
Busy = Callable[[], Mapping[int, tuple[TrialSpec, int | None]]]
Reader = Callable[[], "tuple[dict[str, MemoryReading], dict[int, int]] | None"]


@dataclass
class _DeviceState:
    slots: list[Slot]
    reading: MemoryReading | None = None
    available_mb: int | None = None
    errors: int = 0
    last_error: str = ""
    out_of_service: str = ""


@dataclass
class _SlotRate:
    trial: int
    step: int
    t: float
    rate: float = 0.0


@dataclass
class GpuSlots:
    """Memory, health and packing for an agent's slots. ``busy()`` tells which slots run which
    trial now; ``packer`` is set for ``--slots-per-gpu auto``."""

    slots: list[Slot]
    busy: Busy
    packer: Packer | None = None
    reader: Reader = read_memory
    clock: Callable[[], float] = time.monotonic
    devices: dict[str, _DeviceState] = field(default_factory=dict)
    _read_at: float = -1e18
    _rates: dict[int, _SlotRate] = field(default_factory=dict)
    _used: dict[int, int] = field(default_factory=dict)  # MiB per process id, as last read
    _last_oom: dict[str, float] = field(default_factory=dict)  # device key -> when packing backed off

    def __post_init__(self) -> None:
        for s in self.slots:
            if s.device is not None:
                self.devices.setdefault(s.device.key, _DeviceState([])).slots.append(s)

    # -- which slots run ------------------------------------------------------------------------

    def _state(self, slot: Slot) -> _DeviceState | None:
        return None if slot.device is None else self.devices.get(slot.device.key)

    def _position(self, slot: Slot) -> int:
        st = self._state(slot)
        return 0 if st is None else st.slots.index(slot)

    def should_start(self, slot: Slot, has_worker: Callable[[Slot], bool]) -> bool:
        """Whether the loop should start a worker for idle ``slot`` now. Without packing every
        slot has one; with it a GPU's next slot starts once all slots before it run a trial and
        packing allows one more (one at a time). A device out of service keeps its first slot
        only (for trials that may use the CPU)."""
        st = self._state(slot)
        if st is None:
            return True
        pos = st.slots.index(slot)
        if st.out_of_service:
            return pos == 0
        if self.packer is None or pos == 0:
            return True
        key = slot.device.key if slot.device is not None else ""
        if pos >= self.packer.cap(key):
            return False
        busy = self.busy()
        earlier = st.slots[:pos]
        if not all(s.id in busy and has_worker(s) for s in earlier):
            return False
        self.refresh()
        ok, _ = self.packer.may_add(key, sum(1 for s in st.slots if s.id in busy), st.available_mb)
        return ok

    def should_retire(self, slot: Slot) -> bool:
        """Whether idle ``slot``'s worker should go: its device is out of service (all but the
        first slot), or packing capped the GPU below its position."""
        st = self._state(slot)
        if st is None:
            return False
        pos = st.slots.index(slot)
        if st.out_of_service:
            return pos > 0
        if self.packer is None or slot.device is None:
            return False
        return pos >= self.packer.cap(slot.device.key)

    # -- the memory rule ----------------------------------------------------------------------------

    def need_mb(self, slot: Slot, spec: TrialSpec) -> int:
        """What ``spec`` is expected to need on ``slot``'s device: its ``min_gpu_memory_mb``,
        and with packing, once the device is shared, the largest peak measured (with margin)."""
        need = int(spec.min_gpu_memory_mb or 0)
        st = self._state(slot)
        if self.packer is not None and st is not None:
            busy = self.busy()
            if any(s.id in busy and s is not slot for s in st.slots):
                need = max(need, self.packer.need_mb() or 0)
        return need

    def refresh(self, *, force: bool = False) -> None:
        """Re-read memory (when the last reading is older than :data:`REREAD_S`) and work out
        each device's available memory."""
        if not self.devices:
            return
        now = self.clock()
        if force or now - self._read_at >= REREAD_S:
            self._read_at = now
            got = self.reader()
            if got is not None:
                readings, self._used = got
                for st in self.devices.values():
                    dev = st.slots[0].device
                    if dev is not None and dev.uuid in readings and dev.instance is None:
                        st.reading = readings[dev.uuid]
            else:
                self._used = {}
        self._available()

    def _available(self) -> None:
        busy = self.busy()
        for st in self.devices.values():
            dev = st.slots[0].device
            assert dev is not None
            reading = st.reading
            total = reading.total_mb if reading is not None else dev.memory_total_mb
            free = reading.free_mb if reading is not None else dev.memory_free_mb
            base, free_known = (free, True) if free is not None else (total, False)
            if base is None:
                st.available_mb = None
                continue
            held = 0
            for s in st.slots:
                if s.id not in busy:
                    continue
                spec, pid = busy[s.id]
                reserved = self.need_mb(s, spec)
                # free memory already excludes what the worker uses now (when nvidia-smi shows it)
                used = self._used.get(pid, 0) if (free_known and pid is not None) else 0
                held += max(0, reserved - used)
            st.available_mb = base - held

    def available_mb(self, slot: Slot) -> int | None:
        st = self._state(slot)
        return None if st is None else st.available_mb

    def can_run(self, slot: Slot, spec: TrialSpec) -> bool:
        """Whether ``spec`` may start on ``slot`` now (device, health and the memory rule)."""
        if slot.device is None or slot.out_of_service:
            return slot.can_run(spec.requires_gpu, spec.min_gpu_memory_mb)
        st = self._state(slot)
        if self.packer is not None and st is not None:
            busy = self.busy()
            if sum(1 for s in st.slots if s.id in busy and s is not slot) >= self.packer.cap(
                st.slots[0].device.key if st.slots[0].device else ""
            ):
                return False  # packing capped this GPU after an out-of-memory error
        need = self.need_mb(slot, spec)
        if need <= 0:
            return True
        self.refresh()
        return slot.can_run(spec.requires_gpu, need, self.available_mb(slot))

    def device_for(self, slot: Slot, gpu_policy: str) -> str:
        """The device a trial of an experiment with ``resources.gpu == gpu_policy`` runs on."""
        if slot.device is None or slot.out_of_service or gpu_policy == "none":
            return "cpu"
        return "cuda"

    # -- device health ------------------------------------------------------------------------------

    def on_device_error(self, slot: Slot, message: str) -> bool:
        """A device error on ``slot``'s device; True when it is now out of service."""
        st = self._state(slot)
        if st is None:
            return False
        st.errors += 1
        st.last_error = message.strip().splitlines()[0] if message.strip() else "device error"
        if st.errors >= MAX_DEVICE_ERRORS and not st.out_of_service:
            st.out_of_service = (
                f"{st.errors} device errors in a row (last: {st.last_error}); out of service until "
                "the agent restarts"
            )
            for s in st.slots:
                s.out_of_service = st.out_of_service
            return True
        return False

    def on_trial_ok(self, slot: Slot) -> None:
        """A trial finished on ``slot``: its device works."""
        st = self._state(slot)
        if st is not None and not st.out_of_service:
            st.errors = 0

    def can_serve(self, requires_gpu: bool) -> bool:
        """Whether any slot can still run a trial that ``requires_gpu`` (or any trial at all)."""
        return any(s.can_run(requires_gpu, 0) for s in self.slots)

    def out_of_service(self) -> list[str]:
        """``label (uuid): why`` for each device out of service."""
        out = []
        for st in self.devices.values():
            dev = st.slots[0].device
            if st.out_of_service and dev is not None:
                name = f"{dev.label} ({dev.uuid})" if dev.uuid else dev.label
                out.append(f"{name}: {st.out_of_service}")
        return out

    # -- packing ----------------------------------------------------------------------------------

    def on_progress(self, slot: Slot, trial: int, step: int) -> None:
        """A running trial reported ``step``: its step rate feeds packing's throughput check."""
        if self.packer is None or slot.device is None:
            return
        now = self.clock()
        r = self._rates.get(slot.id)
        if r is None or r.trial != trial or step < r.step:
            self._rates[slot.id] = _SlotRate(trial, step, now)
            return
        if now - r.t < 1.0:
            return
        r.rate = (step - r.step) / (now - r.t)
        r.step, r.t = step, now
        st = self._state(slot)
        if st is None:
            return
        busy = self.busy()
        running = [s for s in st.slots if s.id in busy]
        rates = [
            self._rates[s.id].rate for s in running if s.id in self._rates and self._rates[s.id].rate > 0
        ]
        if len(rates) == len(running) and running:
            self.packer.observe_rate(slot.device.key, len(running), sum(rates))

    def on_peak(self, slot: Slot, peak_mb: int | None) -> None:
        if self.packer is not None and peak_mb:
            self.packer.observe_peak(peak_mb)

    def on_oom(self, slot: Slot, peak_mb: int | None) -> bool:
        """A CUDA out-of-memory error on ``slot``. True when the GPU was shared with other trials
        of this agent (packing's fault: the trial is released and the GPU capped); False when
        the trial ran alone there (the trial's own failure)."""
        st = self._state(slot)
        if st is None or self.packer is None or slot.device is None:
            return False
        key = slot.device.key
        now = self.clock()
        recent = now - self._last_oom.get(key, -1e18) < OOM_WINDOW_S
        busy = self.busy()
        running = sum(1 for s in st.slots if s.id in busy)
        if recent:
            # Trials that shared the GPU tend to run out of memory together: the errors of one
            # event are handled one by one, the later ones with fewer trials left running.
            return True
        if running <= 1:
            return False
        self._last_oom[key] = now
        self.packer.on_oom(key, running, peak_mb)
        return True

    # -- the heartbeat ---------------------------------------------------------------------------

    def infos(self, has_worker: Callable[[Slot], bool] = lambda s: True) -> list[GpuInfo]:
        """One record per device for the heartbeat: memory as last read, what the memory rule
        leaves, slots serving there (with a worker) and health."""
        out = []
        for st in self.devices.values():
            dev = st.slots[0].device
            assert dev is not None
            reading = st.reading
            out.append(
                GpuInfo(
                    index=dev.index,
                    name=dev.name,
                    memory_total_mb=reading.total_mb if reading is not None else dev.memory_total_mb,
                    memory_free_mb=reading.free_mb if reading is not None else dev.memory_free_mb,
                    uuid=dev.uuid,
                    instance=dev.instance,
                    available_mb=st.available_mb,
                    slots=sum(1 for s in st.slots if has_worker(s)),
                    out_of_service=st.out_of_service,
                )
            )
        return out
