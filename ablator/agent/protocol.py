"""Messages between the agent (parent) and its worker processes.

Plain msgspec Structs, MessagePack-encoded, each frame prefixed with its length (4 bytes, big
endian), over two pipes that are *not* the worker's stdout/stderr (those go to the trial's log).
Nothing user-defined crosses the pipe and nothing is pickled: a trial's config travels as plain
data inside its :class:`~ablator.records.TrialSpec`, results as floats.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgspec

from ablator.records import Environment, Outcome, TrialSpec

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # a corrupt length must not make us allocate gigabytes


# --- parent -> worker ------------------------------------------------------------------------


class Init(msgspec.Struct, tag="init", kw_only=True, frozen=True):
    """First message: what every trial of this worker shares. The worker imports the entry point
    (and torch) right away, validates the experiment's config, and answers :class:`Hello`."""

    store_url: str
    force: bool = False
    entry: str
    code_dir: str | None = None
    experiment: dict[str, Any] = {}
    git_commit: str | None = None


class Run(msgspec.Struct, tag="run", kw_only=True, frozen=True):
    """Run one claimed trial. ``valid_until`` is a ``time.monotonic()`` deadline: past it the
    worker's fence fails (its parent stopped renewing: paused, partitioned or dead)."""

    trial: int
    epoch: int
    spec: TrialSpec
    valid_until: float
    agent_id: str
    device: str = "cpu"
    smoke: bool = False


class Renew(msgspec.Struct, tag="renew", kw_only=True, frozen=True):
    """The parent renewed its heartbeat: the lease holds until ``valid_until`` (monotonic)."""

    valid_until: float


class StopTrial(msgspec.Struct, tag="stop", kw_only=True, frozen=True):
    """Checkpoint and stop the running trial (drain, operator stop)."""

    reason: str = ""


class Quit(msgspec.Struct, tag="quit", kw_only=True, frozen=True):
    """Exit after the current trial (none should be running)."""


ToWorker = Init | Run | Renew | StopTrial | Quit


# --- worker -> parent ------------------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", kw_only=True, frozen=True):
    """The worker is ready (``error`` is None) or cannot run this experiment at all (broken
    entry point, invalid config): then the agent must not claim anything."""

    pid: int
    environment: Environment = Environment()
    error: str | None = None
    error_kind: str = ""
    # A GPU worker whose device check failed (ablator.agent.devices.check_device): a device
    # error, not the experiment's; the worker can still run CPU trials.
    device_error: str | None = None


class Progress(msgspec.Struct, tag="progress", kw_only=True, frozen=True):
    """The trial reported ``step`` (the stall clock restarts) with ``values`` (its metrics at
    that step, for the agent's progress lines)."""

    step: int
    values: dict[str, float] = {}


class Resumed(msgspec.Struct, tag="resumed", kw_only=True, frozen=True):
    """The trial started; ``resumed_from`` is the checkpoint (epoch, step) it loaded, if any."""

    resumed_from: tuple[int, int] | None = None


class Finished(msgspec.Struct, tag="finished", kw_only=True, frozen=True):
    """The trial ended with a result (completed, early_stopped, diverged, pruned): the trainer's
    :class:`~ablator.records.Outcome`, which the agent records as it is."""

    outcome: Outcome
    peak_gpu_mb: int | None = None  # peak GPU memory of the attempt (a GPU trial's only)


class Errored(msgspec.Struct, tag="errored", kw_only=True, frozen=True):
    """The trial raised; counts against ``max_attempts`` unless ``device`` says the device was
    at fault: "device" (ablator.agent.devices.device_trouble) or "oom" (out of GPU memory)."""

    kind: str = "exception"
    message: str = ""
    traceback: str = ""
    step: int | None = None
    device: str = ""
    peak_gpu_mb: int | None = None


class Stopped(msgspec.Struct, tag="stopped", kw_only=True, frozen=True):
    """The trial stopped on request after checkpointing ``step`` (None: nothing checkpointed)."""

    step: int | None = None


class Fenced(msgspec.Struct, tag="fenced", kw_only=True, frozen=True):
    """The trial stopped because its lease is gone (a later epoch or a result exists, or the
    parent stopped renewing). Nothing more was written."""

    message: str = ""


FromWorker = Hello | Progress | Resumed | Finished | Errored | Stopped | Fenced

_enc = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)


def frame(msg: msgspec.Struct) -> bytes:
    body = _enc.encode(msg)
    return _HEADER.pack(len(body)) + body


def write_message(fd: int, msg: msgspec.Struct) -> None:
    """Write one whole frame to ``fd`` (blocking)."""
    view = memoryview(frame(msg))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_to_worker(fd: int) -> ToWorker | None:
    """Blocking read of one parent message; None at end of file (the parent is gone)."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes from the agent: the pipe is corrupt")
    body = _read_exact(fd, size)
    return None if body is None else _to_worker.decode(body)


class FrameReader:
    """Incremental decoder of worker messages for the parent's non-blocking reads."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[FromWorker]:
        self._buf += data
        out: list[FromWorker] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes from a worker: the pipe is corrupt")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(_from_worker.decode(bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return out
