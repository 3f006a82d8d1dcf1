"""``--slots-per-gpu auto``: how many trials share one GPU.

Small models leave most of a modern GPU idle; several processes on one GPU overlap their kernels
and host work (measured on an H100: 1.7x / 3.7x / 4.8x the steps per second of one MLP trial
with 2 / 4 / 8 processes). How many fit is a question of memory first, throughput second:

1. **Measure alone.** Each GPU starts with one slot. A trial's worker measures its peak GPU
   memory (torch's peak reservation plus the CUDA context) and reports it with the result; the
   agent records it (``trials/<i>/usage.e<epoch>.msgpack``, see docs/store.md).
2. **Grow while memory allows.** Another slot starts on a GPU only when the memory rule
   (:class:`ablator.agent.slots.GpuMemory`: free memory re-read now, minus what this agent's
   running trials may still claim) leaves room for the largest peak measured so far, plus a
   margin, and at most :data:`~ablator.agent.devices.AUTO_MAX_SLOTS_PER_GPU` slots per GPU.
3. **Grow while it pays.** The agent keeps the GPU's aggregate steps per second with k trials
   running; when k trials were not at least ``min_gain`` times faster than k - 1, it stops
   adding slots there.
4. **Back off on OOM.** A CUDA out-of-memory error while the GPU was shared is not the trial's
   fault: its attempt is released (not failed), the GPU's cap drops to one fewer trial than
   were running, and the largest peak estimate grows to what was reserved at the time.

This module is the decision logic alone (no processes, no store): :class:`Packer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: headroom on a measured peak: allocator fragmentation, a larger batch later in the trial
MARGIN = 1.2
#: k trials must be this much faster in aggregate than k - 1 for the agent to try k + 1
MIN_GAIN = 1.1


@dataclass
class _Rate:
    value: float
    samples: int


@dataclass
class Packer:
    """Packing decisions for one agent's GPUs (keyed by device key, see ``Device.key``)."""

    max_per_gpu: int = 8
    margin: float = MARGIN
    min_gain: float = MIN_GAIN
    peak_mb: int | None = None  # the largest measured peak of a trial (MiB)
    caps: dict[str, int] = field(default_factory=dict)
    rates: dict[str, dict[int, _Rate]] = field(default_factory=dict)

    def observe_peak(self, peak_mb: int) -> None:
        """A trial's measured peak GPU memory (MiB)."""
        if peak_mb > 0:
            self.peak_mb = max(self.peak_mb or 0, int(peak_mb))

    def need_mb(self) -> int | None:
        """What an unmeasured trial is expected to need (MiB), or None before any measurement."""
        return None if self.peak_mb is None else math.ceil(self.peak_mb * self.margin)

    def cap(self, key: str) -> int:
        return self.caps.get(key, self.max_per_gpu)

    def on_oom(self, key: str, running: int, reserved_mb: int | None = None) -> int:
        """An out-of-memory error with ``running`` trials on the GPU: cap it at one fewer (at
        least 1) and raise the estimate to ``reserved_mb`` when that is larger. The new cap."""
        self.caps[key] = max(1, min(self.cap(key), running - 1))
        if reserved_mb is not None:
            self.observe_peak(reserved_mb)
        return self.caps[key]

    def observe_rate(self, key: str, running: int, steps_per_s: float) -> None:
        """The GPU's aggregate steps per second while ``running`` trials ran there (a running
        mean per k)."""
        if running < 1 or steps_per_s <= 0 or not math.isfinite(steps_per_s):
            return
        by_k = self.rates.setdefault(key, {})
        r = by_k.get(running)
        if r is None:
            by_k[running] = _Rate(steps_per_s, 1)
        else:
            r.samples += 1
            r.value += (steps_per_s - r.value) / min(r.samples, 20)

    def pays(self, key: str, running: int) -> bool:
        """False when ``running`` trials were measured not to beat ``running - 1`` by
        ``min_gain``: adding another would not either. Unmeasured: True."""
        by_k = self.rates.get(key, {})
        now, before = by_k.get(running), by_k.get(running - 1)
        if now is None or before is None or now.samples < 3 or before.samples < 3:
            return True
        return now.value >= before.value * self.min_gain

    def may_add(self, key: str, running: int, available_mb: int | None) -> tuple[bool, str]:
        """Whether one more trial may start on GPU ``key`` where ``running`` run now and the
        memory rule leaves ``available_mb``; with the reason when not."""
        if running == 0:
            return True, ""
        need = self.need_mb()
        if need is None:
            return False, "no trial's peak memory is measured yet (the first runs alone)"
        if running >= self.cap(key):
            return False, f"capped at {self.cap(key)} trial(s) per GPU after an out-of-memory error"
        if running >= self.max_per_gpu:
            return False, f"at most {self.max_per_gpu} trials per GPU"
        if available_mb is None:
            return False, "its free memory is not reported"
        if available_mb < need:
            return False, f"{available_mb} MiB available, a trial needs about {need} MiB"
        if not self.pays(key, running):
            return False, f"{running} trials were not {self.min_gain:g}x faster than {running - 1}"
        return True, ""
