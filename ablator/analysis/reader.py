"""Read one trial's records from a store into a table row and its canonical metric history.

Everything here is read-only and tolerant: a corrupt record is skipped with a
:class:`~ablator.records.CorruptRecordWarning` naming its key, and the trial keeps whatever the
other records say. The trial's state is :func:`ablator.lease.state.classify`'s, the one the
claimer, ``ablator status`` and the operations use (``docs/protocol.md``, Trial state); a done
trial shows its result's status (completed, early_stopped, ...) instead of "done". Whether a
claim's holder is still alive is not judged here (that needs heartbeats observed over a lease:
``ablator status``): a claimed trial without a later failure or release is "running".
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from ablator import layout, lineage, records
from ablator.errors import StoreError
from ablator.lease.state import TrialStatus, classify, scan
from ablator.store.base import Entry, Store

#: Result statuses: the trial is done (its result is immutable).
DONE_STATUSES: tuple[str, ...] = get_args(records.ResultStatus)
#: The states of an unfinished trial, in the order analysis shows them (the names are the
#: trial states of :mod:`ablator.lease.state`; an analysis never judges liveness, so "orphaned"
#: does not occur, and a done trial shows its result's status instead of "done").
UNFINISHED_STATUSES: tuple[TrialStatus, ...] = (
    "failed",
    "needs_repair",
    "retryable",
    "released",
    "running",
    "pending",
)
#: Every status a trial row can have, done ones first.
STATUSES: tuple[str, ...] = (*DONE_STATUSES, *UNFINISHED_STATUSES)

CONFIG_PREFIX = "config."
FINAL_PREFIX = "final."
BEST_PREFIX = "best."


@dataclass(frozen=True)
class Context:
    """What every trial's state depends on besides its own records."""

    ablation: bool = False
    #: trial index -> its variant by the design (an ablation's), for a trial whose claims do not
    #: decode (a torn ``claim.e0000``): the trial keeps its place in the analysis
    variant_of: Callable[[int], str | None] | None = None
    max_attempts: int = 3
    #: trial -> the highest epoch whose failure an operator's ``retry --failed`` forgave
    forgiven: Mapping[int, int] = field(default_factory=dict)


@dataclass
class TrialData:
    """One trial as read: its table row (internal column names: ``config.<path>``,
    ``final.<metric>``, ``best.<metric>``) and its canonical history, column-wise."""

    index: int
    row: dict[str, Any]
    done: bool
    result_nonce: str | None = None
    steps: list[int] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class _TrialView(Store):
    """A read-only view of one trial that answers ``list`` from one listing made up front and
    remembers what it read, so that :mod:`ablator.lineage` (which reads attempts and lists the
    metrics folder itself) costs no extra store round trips."""

    def __init__(self, base: Store, entries: list[Entry]) -> None:
        self._base = base
        self._entries = entries
        self._memo: dict[str, bytes] = {}
        self.url = base.url
        self.max_record_bytes = base.max_record_bytes
        self.read_only = True

    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        data = self._memo.get(key)
        if data is None:
            data = self._memo[key] = self._base.read(key, max_bytes=max_bytes)
        return data

    def list(self, prefix: str) -> list[Entry]:
        p = prefix.rstrip("/") + "/"
        return [e for e in self._entries if e.key.startswith(p)]

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return self._base.list_dirs(prefix)

    def stat(self, key: str) -> Entry | None:
        return self._base.stat(key)

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        raise StoreError(f"create {key!r}: analysis reads {self.url} only")

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        raise StoreError(f"replace {key!r}: analysis reads {self.url} only")

    def delete(self, key: str) -> None:
        raise StoreError(f"delete {key!r}: analysis reads {self.url} only")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dropout": 0.2}}`` -> ``{"model.dropout": 0.2}``. Lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def read_trial(store: Store, index: int, ctx: Context) -> TrialData:
    """Read trial ``index``: one listing of its folder, then only the records it needs."""
    view = _TrialView(store, store.list(layout.trial_dir(index)))
    recs = scan(index, view.list(layout.trial_dir(index))).records
    has_result = recs.result != "absent"

    row: dict[str, Any] = {"index": index}
    spec = None
    # The resolved trial is in claim.e0000; where that is torn, a takeover recorded it again in
    # its own claim (the claimer embeds it when claim.e0000 is unreadable).
    for ep in sorted(recs.claims):
        claim = records.read(view, layout.claim(index, ep), records.Claim)
        spec = None if claim is None else claim.spec
        if spec is not None:
            break
    variant: str | None = None
    if spec is not None:
        variant = spec.variant or None
        row.update(seed=spec.seed, repeat=spec.repeat, config_hash=spec.config_hash)
        row.update({CONFIG_PREFIX + k: v for k, v in flatten(spec.config).items()})
    if spec is None and ctx.variant_of is not None and recs.claims:
        variant = ctx.variant_of(index)  # the claim is corrupt (warned): the design says which variant
    if ctx.ablation and (spec is not None and variant in (None, "baseline")):
        variant = "baseline"  # '' and 'baseline' both name the ablation's baseline
    row["variant"] = variant

    attempts = {
        e: records.read(view, layout.attempt(index, e), records.Attempt) for e in sorted(recs.attempts)
    }
    # History columns: every attempt, failure and takeover the trial ever had (forgiven or not).
    row["attempts"] = len(recs.attempts)
    row["failures"] = len(recs.failures)
    row["takeovers"] = recs.takeovers()
    if recs.failures:
        failed_epochs = sorted(recs.failures)
        failures = [records.read(view, layout.failed(index, e), records.Failure) for e in failed_epochs]
        error = failure_summary([f for f in failures if f is not None])
        if error:
            row["error"] = error
        last = failures[-1]
        if last is not None and failed_epochs[-1] == recs.top:
            recs = replace(recs, top_failure=last.kind)  # the classifier takes the kind as a value

    result = records.read(view, layout.result(index), records.Result) if has_result else None
    if has_result:
        recs = replace(recs, result="corrupt" if result is None else "valid")
    data = TrialData(index, row, done=result is not None)
    if result is not None:
        epoch: int | None = result.epoch
        row.update(
            status=result.status,
            steps=result.steps,
            duration_s=result.duration_s,  # refined by attempt_times below when there is history
            best_step=result.best_step,
        )
        row.update({FINAL_PREFIX + k: _float(v) for k, v in result.metrics.items()})
        row.update({BEST_PREFIX + k: _float(v) for k, v in result.best.items()})
        data.result_nonce = result.nonce
    else:
        # A result file that does not decode is "needs_repair": the trial finished, but its
        # outcome is lost; never shown as running (nothing will rerun it).
        v = classify(recs, max_attempts=ctx.max_attempts, forgiven=ctx.forgiven.get(index, -1))
        row["status"] = v.status
        epoch = v.epoch
    row["epoch"] = epoch

    att = attempts.get(epoch) if epoch is not None else None
    if att is None and attempts:
        att = attempts[max(attempts)]
    if att is not None:
        row["host"] = att.environment.host or None
        row["gpu"] = att.environment.gpu

    # Done trials: the lineage the result names. Running ones: the newest attempt's lineage,
    # provisional. A failed or released trial's partial rows are not history (yet): a retry
    # will continue them along its own lineage.
    if att is not None and epoch is not None and att.epoch == epoch and att.resumed_from is not None:
        row["resumed_from"] = att.resumed_from[1]  # the checkpoint step the canonical attempt resumed
    if row["status"] in DONE_STATUSES or row["status"] == "running":
        tip = epoch if result is not None else (max(attempts) if attempts else None)
        if tip is not None:
            canonical = lineage.canonical_rows(view, index, tip)
            _history(data, canonical)
            if result is None and data.steps:
                row["steps"] = data.steps[-1]  # progress so far
            if result is not None:
                segs = lineage.segments(view, index, tip)  # memoised reads: no extra round trips
                row["duration_s"], row["setup_s"] = attempt_times(canonical, segs, result.duration_s)
    return data


#: At most this many characters of a trial's error summary (a table cell, not a log).
ERROR_CHARS = 300


def failure_summary(failures: list[records.Failure]) -> str:
    """Every attempt's error in one line, the first attempt's first: the root cause (a later
    attempt often fails *because* of the first, e.g. while resuming, and would hide it). Each is
    ``kind: first line of the message``; an attempt that failed like the one before adds nothing.
    Attempts are numbered from 1 when they differ: ``exception: RuntimeError: boom (attempt 1);
    then exception: ... (attempt 2)``."""
    parts: list[tuple[str, list[int]]] = []
    for f in sorted(failures, key=lambda f: f.epoch):
        text = f.message.strip()
        line = f"{f.kind}: {text.splitlines()[0] if text else ''}".rstrip()
        if parts and parts[-1][0] == line:
            parts[-1][1].append(f.epoch + 1)
        else:
            parts.append((line, [f.epoch + 1]))
    if len(parts) <= 1:
        return parts[0][0][:ERROR_CHARS] if parts else ""

    def which(epochs: list[int]) -> str:
        if len(epochs) == 1:
            return f"attempt {epochs[0]}"
        return f"attempts {', '.join(map(str, epochs))}"

    summary = "; then ".join(f"{line} ({which(eps)})" for line, eps in parts)
    return summary[: ERROR_CHARS * 2]


def attempt_times(
    rows: list[records.MetricRow], segments: list[tuple[int, int | None]], last_duration: float
) -> tuple[float, float | None]:
    """(training seconds, warm-up seconds) of the attempts on a result's lineage.

    Each attempt's warm-up is :func:`ablator.records.warmup_s` of its first and last rows. Training
    seconds are each attempt's last row (the result's attempt: the result's ``duration_s``)
    minus its warm-up. Warm-up is None when no attempt has two rows to pace it by."""
    total = 0.0
    setup: float | None = None
    start = 0
    floor = -1
    for k, (_epoch, bound) in enumerate(segments):
        part = [r for r in rows if r.step > floor and (bound is None or r.step <= bound)]
        last = k == len(segments) - 1
        end = last_duration if last else (part[-1].time if part else 0.0)
        warm = records.warmup_s(part[0], part[-1], start) if part else None
        if warm is not None:
            setup = (setup or 0.0) + warm
        total += max(0.0, end - (warm or 0.0))
        if bound is not None:
            floor = start = bound
    return total, setup


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _history(data: TrialData, rows: list[records.MetricRow]) -> None:
    # The hottest loop of a cold load (one pass per reported value): bound methods, no lookups.
    add_step, add_name, add_value = data.steps.append, data.metrics.append, data.values.append
    for r in rows:
        step = r.step
        for name, value in r.values.items():
            add_step(step)
            add_name(name)
            add_value(value)


__all__ = [
    "DONE_STATUSES",
    "STATUSES",
    "Context",
    "TrialData",
    "attempt_times",
    "failure_summary",
    "flatten",
    "read_trial",
]
