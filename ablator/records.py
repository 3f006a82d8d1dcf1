"""The records written to the store: msgspec Structs, encoded as MessagePack (``experiment.json``
as JSON so that a human can read it). Never pickle.

Schema evolution follows msgspec's rules: every field added after protocol version 1 gets a
default, so that a store written by an older ablator still decodes. Each record carries ``v`` (the
protocol version of its writer) and ``nonce`` (random per write), which lets a writer recognise its
own record when a create-if-absent reply was lost (see ``Store.create``).
"""

from __future__ import annotations

import secrets
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from ablator.errors import CorruptRecordError

if TYPE_CHECKING:
    from ablator.store.base import Store

PROTOCOL_VERSION = 1


def new_nonce() -> str:
    return secrets.token_hex(8)


class Record(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=False):
    """Base of every record: protocol version, writer's nonce, writer's wall time (informational
    only: wall clocks of different machines are never compared)."""

    v: int = PROTOCOL_VERSION
    nonce: str = msgspec.field(default_factory=new_nonce)
    wall_time: float = msgspec.field(default_factory=time.time)


# --- experiment level ----------------------------------------------------------------------


class ExperimentSpec(Record, frozen=True, kw_only=True):
    """``experiment.json``: created once by ``launch``, never rewritten.

    ``experiment`` is the validated experiment file as plain data (see ``ablator.experiment``);
    ``experiment_hash`` identifies it (a relaunch with the same hash is a no-op).
    """

    name: str
    experiment: dict[str, Any]
    experiment_hash: str
    code_sha256: str | None = None
    code_git_commit: str | None = None
    ablator_version: str = ""
    # trials before extensions (experiment.budget at launch), so that readers on machines
    # without the user's code (a grid's size needs its config type) still know the budget
    budget: int | None = None


class Extension(Record, frozen=True, kw_only=True):
    """``extend/<k>.msgpack``: adds ``trials`` to the budget (a negative number takes a wrong
    extension back). ``settles``: extension number -> the trials an unreadable extension record
    counts as from now on (``launch --extend`` writes it when it finds one; the first settling
    extension decides; a settled record restored from a backup counts as itself again)."""

    k: int
    trials: int
    settles: dict[int, int] = msgspec.field(default_factory=dict)


class Stop(Record, frozen=True, kw_only=True):
    """``control/stop.msgpack``: agents finish or release their trials and exit."""

    reason: str = ""


class Retry(Record, frozen=True, kw_only=True):
    """``control/retry/<k>.msgpack``: failures recorded before this command no longer count.

    ``epochs`` maps trial index -> the highest epoch whose failure is forgiven.
    """

    k: int
    epochs: dict[int, int]


class FrontierHint(Record, frozen=True, kw_only=True):
    """``frontier/<shard>.msgpack``: the highest trial index this shard has seen claimed."""

    index: int


class DesignPoint(Record, frozen=True, kw_only=True):
    """``design/points/<point>.msgpack``: an adaptive design's (tpe) choice for one point, created
    once by whichever agent needs it first, so that every repeat of the point runs the same
    config. ``params``: the sampler's own coordinates (Optuna params by dimension name)."""

    point: int
    overrides: dict[str, Any] = {}
    params: dict[str, Any] = {}


class DesignEvent(Record, frozen=True, kw_only=True):
    """``design/log/<seq>.msgpack``: one entry of an adaptive design's journal (tpe), appended by
    the agent that saw it happen. ``claimed``: trial ``trial`` (epoch ``epoch``) started running
    the point ``params``; ``finished``: it ended with a result whose objective is ``value`` (None:
    no usable value); ``ended``: it stopped running without a result (failed, released)."""

    seq: int
    trial: int
    epoch: int = 0
    kind: Literal["claimed", "finished", "ended"] = "claimed"
    params: dict[str, Any] = {}
    value: float | None = None
    pruned: bool = False  # ``finished`` by a pruner: no final value, but a trial TPE ranks low


class RungValue(Record, frozen=True, kw_only=True):
    """``pruning/rung-<r>/<trial>.msgpack``: the experiment metric of ``trial`` when it reached
    ASHA rung ``rung`` (at ``step``), and the decision it took there from the values recorded
    before it. Created once: a resumed trial keeps the decision."""

    trial: int
    rung: int
    step: int
    value: float
    promoted: bool = True
    bracket: int = 0  # Hyperband (``brackets`` > 1): trials compete within their bracket


class Curve(Record, frozen=True, kw_only=True):
    """``pruning/curves/<trial>.msgpack``: a finished trial's values of ``metric`` by step, for the
    median rule. Created once, when the trial finishes its training."""

    trial: int
    metric: str = ""
    steps: list[int] = []
    values: list[float] = []


# --- agents --------------------------------------------------------------------------------


class GpuInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One GPU (or MIG instance) of an agent, as its heartbeat shows it (``ablator.agent.devices``).

    ``index``: nvidia-smi's index (PCI bus order) of the GPU, or of the MIG instance's parent;
    ``instance``: the MIG device number within that parent (None: a whole GPU). Memory in MiB as
    last read; None where nothing was reported (``[N/A]``, MIG instances' free memory): a
    reported 0 is a known 0. ``available_mb``: what this agent's memory rule lets a new trial
    have there (free memory minus what its own running trials may still claim), the number
    ``status`` explains with. ``out_of_service``: why this agent stopped running trials on it
    (repeated device errors), empty while it serves.
    """

    index: int
    name: str = ""
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    uuid: str = ""
    instance: int | None = None
    available_mb: int | None = None
    slots: int = 1
    out_of_service: str = ""


class Heartbeat(Record, frozen=True, kw_only=True):
    """``agents/<agent-id>.msgpack``: replaced every ``heartbeat_s``.

    Observers judge liveness only by whether ``counter`` changes within ``lease_s`` on their own
    monotonic clock; ``wall_time`` is for display.
    """

    agent_id: str
    host: str
    pid: int
    counter: int
    lease_s: float
    heartbeat_s: float
    held: list[tuple[int, int]] = []  # (trial, epoch) pairs
    gpus: list[GpuInfo] = []
    slots: int = 1
    cpu_ok: bool = True
    state: Literal["running", "draining", "exited"] = "running"
    versions: dict[str, str] = {}
    # (trial, epoch) pairs this agent recently released or failed: a hint that lets other agents
    # find takeable trials without a sweep. The trial's own records decide; this only says where
    # to look.
    released: list[tuple[int, int]] = []
    # Which process on which machine (``lease.identity``): an observer with the same boot and
    # pid namespace knows at once when the process (pid + start time) is gone.
    boot_id: str = ""
    pid_ns: str = ""
    start_ticks: int | None = None


class ReleaseHints(Record, frozen=True, kw_only=True):
    """``agents/released/<agent-id>.msgpack``: replaced when the agent releases or fails a trial.

    The same pairs as its heartbeat's ``released``, in a key of their own so that observers
    see *that* something was let go from the listing of ``agents/`` they make anyway (the entry
    changes) and read this small body then, instead of every heartbeat. Only a hint: the trial's
    records decide."""

    agent_id: str
    released: list[tuple[int, int]] = []


# --- trials --------------------------------------------------------------------------------


class TrialSpec(msgspec.Struct, kw_only=True, frozen=True):
    """The resolved trial, fixed at claim time (``claim.e0000``). Nothing later recomputes it."""

    index: int
    config: dict[str, Any]
    config_hash: str
    seed: int
    variant: str = ""
    repeat: int = 0
    overrides: dict[str, Any] = {}
    requires_gpu: bool = False
    min_gpu_memory_mb: int = 0
    # An adaptive design's own coordinates of this point (tpe: Optuna params by dimension name),
    # so that a sampler rebuilt from the store sees exactly what the claimer chose.
    params: dict[str, Any] = {}


class Claim(Record, frozen=True, kw_only=True):
    """``trials/<i>/claim.e<epoch>.msgpack``: the holder of epoch ``epoch``. Epoch 0 carries the
    resolved trial; takeovers (epoch > 0) copy nothing and read it from epoch 0."""

    trial: int
    epoch: int
    agent_id: str
    host: str = ""
    spec: TrialSpec | None = None


class Environment(msgspec.Struct, kw_only=True, frozen=True):
    host: str = ""
    platform: str = ""
    python: str = ""
    torch: str = ""
    cuda: str | None = None
    gpu: str | None = None
    driver: str | None = None
    git_commit: str | None = None
    ablator: str = ""


class Attempt(Record, frozen=True, kw_only=True):
    """``trials/<i>/attempt.e<epoch>.msgpack``: written once before training starts."""

    trial: int
    epoch: int
    agent_id: str
    resumed_from: tuple[int, int] | None = None  # (epoch, step) of the checkpoint
    environment: Environment = Environment()


class Release(Record, frozen=True, kw_only=True):
    """``trials/<i>/release.e<epoch>.msgpack``: the holder let go on purpose; takeable at once."""

    trial: int
    epoch: int
    agent_id: str
    reason: str = ""
    step: int | None = None  # the last checkpointed step, if any


#: Why an attempt failed: its code raised (``exception``; ``checkpoint``: its checkpoint could
#: not be written or read), its worker died (``crashed``) or went silent (``stalled``), or the
#: trial was taken over ``max_takeovers`` times (``lost``: it kills every holder).
FailureKind = Literal["exception", "stalled", "crashed", "lost", "checkpoint"]


class Failure(Record, frozen=True, kw_only=True):
    """``trials/<i>/failed.e<epoch>.msgpack``: counts against ``max_attempts``."""

    trial: int
    epoch: int
    agent_id: str
    kind: FailureKind = "exception"
    message: str = ""
    traceback: str = ""
    step: int | None = None


class MetricRow(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    step: int
    values: dict[str, float]
    time: float = 0.0  # seconds since the attempt started


def warmup_s(first: MetricRow, last: MetricRow, start_step: int) -> float | None:
    """The warm-up inside an attempt's first metric row, or None when two rows cannot pace it.

    A row's ``time`` counts from its attempt's start, before data and model are built, so the
    first row holds the warm-up (imports, data loading, model building: a worker's first trial
    pays most of it) plus the steps from ``start_step`` (0, or the checkpoint step it resumed
    from) up to that row. Those steps are taken away at the attempt's own pace, measured from
    ``first`` to ``last``. The report's training time and the agent's "completed" line both use
    this one estimate: training is the attempt's duration minus it.
    """
    if last.step <= first.step:
        return None
    pace = (last.time - first.time) / (last.step - first.step)
    return min(first.time, max(0.0, first.time - (first.step - start_step) * pace))


class MetricsChunk(Record, frozen=True, kw_only=True):
    """``trials/<i>/metrics/e<epoch>-s<last step>.msgpack``: rows, never rewritten."""

    trial: int
    epoch: int
    rows: list[MetricRow]


ResultStatus = Literal["completed", "early_stopped", "diverged", "pruned"]


class Result(Record, frozen=True, kw_only=True):
    """``trials/<i>/result.msgpack``: created once; the attempt ``epoch`` names the canonical
    lineage. ``lineage`` lists (epoch, resumed_from_step) from the first attempt to this one."""

    trial: int
    epoch: int
    agent_id: str
    status: ResultStatus = "completed"
    metrics: dict[str, float] = {}
    best: dict[str, float] = {}
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    lineage: list[tuple[int, int | None]] = []
    message: str = ""

    @classmethod
    def of(
        cls,
        outcome: Outcome,
        *,
        trial: int,
        epoch: int,
        agent_id: str,
        lineage: list[tuple[int, int | None]],
    ) -> Result:
        """The result record of a finished attempt. A stopped one has no result (it is
        released): ValueError."""
        status = outcome.status
        if status == "stopped":
            raise ValueError(f"trial {trial} epoch {epoch} stopped: it is released, not finished")
        return cls(
            trial=trial,
            epoch=epoch,
            agent_id=agent_id,
            status=status,
            metrics=outcome.metrics,
            best=outcome.best,
            best_step=outcome.best_step,
            steps=outcome.steps,
            duration_s=outcome.duration_s,
            lineage=lineage,
            message=outcome.message,
        )


OutcomeStatus = ResultStatus | Literal["stopped"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The end of one attempt, as the trainer returns it (``ablator.train.execute_trial``), a
    worker sends it to its agent, and :meth:`Result.of` records it. Not stored itself.

    ``status``: a :data:`ResultStatus` (the caller writes the result), or ``"stopped"``: the
    fence asked the trial to stop; it checkpointed ``checkpoint_step`` and the caller writes a
    release instead. ``metrics`` are the final values of every metric, ``best`` the row of the
    best evaluation (at ``best_step``) of the experiment metric.
    """

    status: OutcomeStatus
    metrics: dict[str, float] = {}
    best: dict[str, float] = {}
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    setup_s: float | None = None  # the warm-up inside duration_s (warmup_s), if known
    resumed_from: tuple[int, int] | None = None
    message: str = ""
    checkpoint_step: int | None = None  # the newest checkpoint this attempt wrote


class Usage(Record, frozen=True, kw_only=True):
    """``trials/<i>/usage.e<epoch>.msgpack``: what attempt ``epoch`` used of its GPU, created
    once by the agent when the attempt ended with a result (``--slots-per-gpu auto`` packs by
    it; informational for everyone else). ``peak_gpu_memory_mb``: torch's peak reservation plus
    the CUDA context; ``sharing``: trials of this agent on that GPU when it ended."""

    trial: int
    epoch: int
    gpu: str = ""
    peak_gpu_memory_mb: int = 0
    gpu_memory_total_mb: int | None = None
    sharing: int = 1


class SelfTestProbe(Record, frozen=True, kw_only=True):
    writer: str


# --- encoding ------------------------------------------------------------------------------

R = TypeVar("R", bound=msgspec.Struct)

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


def encode_json(record: msgspec.Struct) -> bytes:
    return msgspec.json.format(_json_encoder.encode(record), indent=2)


def decode(data: bytes, type_: type[R], key: str = "<bytes>") -> R:
    """Decode ``data`` as ``type_``; a corrupt or truncated record raises CorruptRecordError
    naming ``key``."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecordError(f"corrupt record {key!r} ({len(data)} bytes): {exc}") from exc


def decode_json(data: bytes, type_: type[R], key: str = "<bytes>") -> R:
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecordError(f"corrupt record {key!r} ({len(data)} bytes): {exc}") from exc


def try_decode(data: bytes, type_: type[R], key: str) -> R | None:
    """Decode, or warn (naming the key) and return None. For readers that must not crash."""
    try:
        return decode(data, type_, key)
    except CorruptRecordError as exc:
        warnings.warn(str(exc), CorruptRecordWarning, stacklevel=2)
        return None


def read(store: Store, key: str, type_: type[R]) -> R | None:
    """The record at ``key`` decoded as ``type_``; None when it is absent, or corrupt (then a
    :class:`CorruptRecordWarning` names the key). For readers that must not crash: the one
    ``get`` + :func:`try_decode` of the code base. A record over the store's size limit
    (:class:`~ablator.store.base.RecordTooLarge`, refused before it is read) counts as corrupt."""
    try:
        data = store.get(key)
        if data is None:
            return None
        return decode(data, type_, key)
    except CorruptRecordError as exc:
        warnings.warn(str(exc), CorruptRecordWarning, stacklevel=2)
        return None


class CorruptRecordWarning(UserWarning):
    """A reader skipped a record it could not decode."""
