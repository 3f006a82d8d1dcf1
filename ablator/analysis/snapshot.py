"""Compacted snapshots of finished trials, so that a warm ``load`` reads one file, not thousands.

A trial's result is created once and never changes, and nothing canonical is written after it, so
the table rows and histories of finished trials can be cached for good. A snapshot holds them as
two Arrow IPC tables (written and read by polars; never pickle) inside one msgpack envelope, and
is named by the sha256 of the sorted result keys it covers (``layout.snapshot``): two readers that
cover the same trials compute the same name, and create-if-absent lets exactly one write it.

Where it goes: into the store's ``cache/`` when the store takes writes; otherwise (a read-only
store, a copy on a read-only mount) into a local folder, ``$ABLATOR_CACHE_DIR`` or
``~/.cache/ablator``, keyed by the experiment's nonce (random per launch, so a relaunch of the same
file never reuses another run's snapshot). A reader starts from the largest snapshot whose trials
all exist in the store it reads and reads only the trials it does not cover. Local snapshots are
checked against the store first (every covered result must exist, a sample of their nonces must
match), because a local folder can outlive or predate the copy being read.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from ablator import layout, records
from ablator.analysis.reader import Context, TrialData, read_trial
from ablator.errors import CorruptRecordError, StoreError
from ablator.store.base import Store

#: Bump when the snapshot's tables change meaning: old snapshots are then simply not found.
FORMAT = 2
_SPOT_CHECKS = 16


class Snapshot(msgspec.Struct, kw_only=True, frozen=True):
    """The envelope stored at ``layout.snapshot(FORMAT, len(trials), digest)``."""

    format: int
    experiment_nonce: str
    trials: list[int]  # covered trial indices, sorted
    result_nonces: list[str]  # the covered results' nonces, same order (for spot checks)
    trials_ipc: bytes  # one row per covered trial (internal column names)
    history_ipc: bytes  # (trial, step, metric, value) along each result's lineage


@dataclass
class Loaded:
    """A snapshot that passed its checks, decoded."""

    key: str
    location: str  # "store" or the local folder
    trials: list[int]
    result_nonces: list[str]
    rows: pl.DataFrame
    history: pl.DataFrame


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local snapshot folder: ``cache_dir``, ``$ABLATOR_CACHE_DIR``,
    ``$XDG_CACHE_HOME/ablator`` or ``~/.cache/ablator``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ABLATOR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ablator"


def digest(trials: Iterable[int]) -> str:
    """sha256 of the sorted result keys of ``trials``: the snapshot's content address."""
    keys = sorted(layout.result(i) for i in trials)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="lz4")
    return buf.getvalue()


def encode(
    experiment_nonce: str,
    trials: Sequence[int],
    result_nonces: Sequence[str],
    rows: pl.DataFrame,
    history: pl.DataFrame,
) -> bytes:
    return msgspec.msgpack.encode(
        Snapshot(
            format=FORMAT,
            experiment_nonce=experiment_nonce,
            trials=list(trials),
            result_nonces=list(result_nonces),
            trials_ipc=_ipc(rows),
            history_ipc=_ipc(history),
        )
    )


_decoder = msgspec.msgpack.Decoder(Snapshot)


def decode(data: bytes, key: str) -> tuple[Snapshot, pl.DataFrame, pl.DataFrame]:
    """Decode a snapshot; CorruptRecordError naming ``key`` when it is not one."""
    try:
        snap = _decoder.decode(data)
        rows = pl.read_ipc(snap.trials_ipc)
        history = pl.read_ipc(snap.history_ipc)
    except (msgspec.DecodeError, msgspec.ValidationError, pl.exceptions.PolarsError, OSError) as exc:
        raise CorruptRecordError(f"corrupt analysis snapshot {key!r} ({len(data)} bytes): {exc}") from exc
    if len(snap.trials) != len(snap.result_nonces) or rows.height != len(snap.trials):
        raise CorruptRecordError(f"corrupt analysis snapshot {key!r}: its trial list and table disagree")
    return snap, rows, history


class SnapshotCache:
    """Finds, checks and writes the snapshots of one experiment (the store's and the local ones).

    ``writable`` returns a handle that accepts writes to the same store, or None when the store
    takes none (called only when there is a snapshot to write); ``local`` is this machine's
    snapshot folder root.
    """

    def __init__(
        self, store: Store, experiment_nonce: str, *, writable: Callable[[], Store | None], local: Path
    ) -> None:
        self.store = store
        self.nonce = experiment_nonce
        self._writable = writable
        self.local_dir = local / "snapshots" / experiment_nonce
        self._local: Store | None = None

    def _local_store(self, create: bool) -> Store | None:
        if self._local is None:
            if not create and not self.local_dir.is_dir():
                return None
            from ablator.store.posix import PosixStore

            self._local = PosixStore(self.local_dir)
        return self._local

    def _candidates(self, present: int) -> list[tuple[int, str, Store, str]]:
        """(count, key, where to read it, location) of every snapshot that could be a subset
        of ``present`` trials, largest first; the store's before local ones of equal size."""
        out: list[tuple[int, int, str, Store, str]] = []
        sources: list[tuple[int, Store, str]] = [(0, self.store, "store")]
        local = self._local_store(create=False)
        if local is not None:
            sources.append((1, local, str(self.local_dir)))
        for rank, source, location in sources:
            try:
                entries = source.list(layout.snapshot_dir(FORMAT))
            except StoreError as exc:
                warnings.warn(
                    f"cannot list analysis snapshots in {location}: {exc}", RuntimeWarning, stacklevel=3
                )
                continue
            for e in entries:
                parsed = layout.parse_snapshot(layout.basename(e.key))
                if parsed is not None and 0 < parsed[0] <= present:
                    out.append((parsed[0], rank, e.key, source, location))
        out.sort(key=lambda c: (-c[0], c[1]))
        return [(count, key, source, location) for count, _, key, source, location in out]

    def best(self, present: set[int]) -> Loaded | None:
        """The largest snapshot whose trials are all in ``present`` and that passes its checks."""
        for count, key, source, location in self._candidates(len(present)):
            try:
                # at most ``count`` summaries, each within a record's limit: a hostile file is
                # refused from its size (RecordTooLarge) before it is read
                data = source.get(key, max_bytes=count * source.max_record_bytes)
                if data is None:
                    continue  # deleted since the listing (somebody cleared the cache)
                snap, rows, history = decode(data, key)
            except CorruptRecordError as exc:
                warnings.warn(str(exc), records.CorruptRecordWarning, stacklevel=2)
                continue
            if snap.format != FORMAT or snap.experiment_nonce != self.nonce:
                continue
            if not present.issuperset(snap.trials):
                continue
            if source is not self.store and not self._agrees(snap):
                continue
            return Loaded(key, location, snap.trials, snap.result_nonces, rows, history)
        return None

    def _agrees(self, snap: Snapshot) -> bool:
        """Does the store hold every result a local snapshot covers, and the same ones?"""
        for i in snap.trials:
            if not self.store.exists(layout.result(i)):
                return False
        step = max(1, len(snap.trials) // _SPOT_CHECKS)
        for pos in range(0, len(snap.trials), step):
            i = snap.trials[pos]
            try:
                data = self.store.get(layout.result(i))
                if data is None:
                    return False
                result = records.decode(data, records.Result, layout.result(i))
            except CorruptRecordError:
                return False
            if result.nonce != snap.result_nonces[pos]:
                return False
        return True

    def write(
        self, trials: Sequence[int], result_nonces: Sequence[str], rows: pl.DataFrame, history: pl.DataFrame
    ) -> tuple[str, str] | None:
        """Write a snapshot of ``trials`` (sorted) once; returns (key, location) of the snapshot
        this call created, or None when another reader's was there first or nothing takes it."""
        key = layout.snapshot(FORMAT, len(trials), digest(trials))
        data = encode(self.nonce, trials, result_nonces, rows, history)
        try:
            writable = self._writable()
        except (StoreError, OSError):
            writable = None
        if writable is not None:
            try:
                # Losing the create to another reader is fine: in one store, the same result
                # keys are the same results, so its snapshot holds the same rows.
                return (key, "store") if writable.create(key, data) else None
            except (StoreError, OSError):
                pass  # a read-only mount or bucket policy: fall back to the local folder
        try:
            local = self._local_store(create=True)
            if local is None:  # pragma: no cover - create=True always yields one
                return None
            # Locally, a snapshot of the same keys may come from a diverged copy of the store
            # (``best`` then rejected it): it stays, and this store is read record by record.
            created = local.create(key, data)
        except (StoreError, OSError) as exc:
            warnings.warn(
                f"cannot write an analysis snapshot to {self.local_dir}: {exc}", RuntimeWarning, stacklevel=2
            )
            return None
        return (key, str(self.local_dir)) if created else None


# --- per-trial summaries: the first read of a finished trial -----------------------------------

#: Bump when a summary's contents change meaning: readers then fall back to the trial's records.
SUMMARY_FORMAT = 1
_STEPS = np.dtype("<i8")
_CODES = np.dtype("<u2")
_VALUES = np.dtype("<f8")


class TrialSummary(msgspec.Struct, kw_only=True, frozen=True):
    """``layout.trial_summary(i)``: what analysis reads of a finished trial, in one file.

    Written once, right after the result, by the agent (or ``ablator run``) that holds it, so
    that a first ``load`` reads one file per finished trial instead of its claim, attempts,
    result and every metric chunk. ``row`` is the trial's table row (internal column names, as
    :func:`ablator.analysis.reader.read_trial` builds it); the history along the result's
    lineage is columnar: ``steps`` (int64), ``metric_codes`` (uint16 indices into
    ``metric_names``) and ``values`` (float64), each little-endian bytes that decode with one
    ``numpy.frombuffer`` (no pickle, no per-value decoding). ``result_nonce`` ties it to the
    result it summarises."""

    format: int
    trial: int
    result_nonce: str
    row: dict[str, Any]
    metric_names: list[str]
    steps: bytes
    metric_codes: bytes
    values: bytes


@dataclass
class CompactTrial:
    """A finished trial read from its summary: its row and columnar history."""

    index: int
    row: dict[str, Any]
    result_nonce: str
    metric_names: list[str]
    steps: np.ndarray
    metric_codes: np.ndarray
    values: np.ndarray


def encode_summary(data: TrialData) -> bytes:
    """The summary of a finished trial as :func:`ablator.analysis.reader.read_trial` read it."""
    names = list(dict.fromkeys(data.metrics))
    code = {n: k for k, n in enumerate(names)}
    return msgspec.msgpack.encode(
        TrialSummary(
            format=SUMMARY_FORMAT,
            trial=data.index,
            result_nonce=data.result_nonce or "",
            row=data.row,
            metric_names=names,
            steps=np.asarray(data.steps, dtype=_STEPS).tobytes(),
            metric_codes=np.asarray([code[m] for m in data.metrics], dtype=_CODES).tobytes(),
            values=np.asarray(data.values, dtype=_VALUES).tobytes(),
        )
    )


_summary_decoder = msgspec.msgpack.Decoder(TrialSummary)


def decode_summary(data: bytes, key: str) -> CompactTrial | None:
    """A summary, or None (with a CorruptRecordWarning naming ``key``) when it does not decode;
    None without a warning when it is of another format (the reader falls back to records)."""
    try:
        s = _summary_decoder.decode(data)
        steps = np.frombuffer(s.steps, dtype=_STEPS)
        codes = np.frombuffer(s.metric_codes, dtype=_CODES)
        values = np.frombuffer(s.values, dtype=_VALUES)
        if not steps.size == codes.size == values.size or (
            codes.size and int(codes.max()) >= len(s.metric_names)
        ):
            raise ValueError("its history columns disagree")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        warnings.warn(
            f"corrupt trial summary {key!r} ({len(data)} bytes): {exc}",
            records.CorruptRecordWarning,
            stacklevel=2,
        )
        return None
    if s.format != SUMMARY_FORMAT:
        return None
    return CompactTrial(s.trial, s.row, s.result_nonce, s.metric_names, steps, codes, values)


def write_trial_summary(store: Store, index: int, *, ablation: bool) -> bool:
    """Read finished trial ``index`` record by record and create its summary
    (``layout.trial_summary``). Called by the result's holder right after the result; True when
    this call created it. A trial without a readable result gets none. Create-once: a second
    call (a retried write, another reader) finds it there and leaves it. Best effort: a store
    error is swallowed (False), since readers fall back to the records and the trial is done."""
    key = layout.trial_summary(index)
    try:
        data = read_trial(store, index, Context(ablation=ablation))
        if not data.done:
            return False
        return store.create(key, encode_summary(data))
    except (StoreError, OSError):
        return False


def read_summaries(
    store: Store, indices: Sequence[int], workers: int
) -> tuple[list[CompactTrial], list[int]]:
    """The summaries of ``indices`` that exist, and the indices without one (to be read record
    by record): one read per trial, in parallel where reads are round trips."""

    def one(i: int) -> CompactTrial | None:
        key = layout.trial_summary(i)
        try:
            data = store.get(key)
        except CorruptRecordError as exc:  # over the size limit: read record by record instead
            warnings.warn(str(exc), records.CorruptRecordWarning, stacklevel=2)
            return None
        return None if data is None else decode_summary(data, key)

    if workers > 1 and len(indices) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ablator-summary") as pool:
            found = list(pool.map(one, indices))
    else:
        found = [one(i) for i in indices]
    compact = [c for c, i in zip(found, indices, strict=True) if c is not None and c.index == i]
    done = {c.index for c in compact}
    return compact, [i for i in indices if i not in done]


def compact_history(trials: Sequence[CompactTrial], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The long history (trial, step, metric, value) of summaries, built column-wise: no Python
    work per row, and per trial only a lookup of its metric-name list."""
    if not trials:
        return pl.DataFrame(schema=schema)
    names: dict[str, int] = {}
    offsets: dict[tuple[str, ...], int] = {}  # a trial's metric-name list -> where its remap starts
    table: list[int] = []  # concatenated remaps: a trial's code -> the global metric code
    base = np.empty(len(trials), dtype=np.int64)
    for k, t in enumerate(trials):
        key = tuple(t.metric_names)
        at = offsets.get(key)
        if at is None:
            at = offsets[key] = len(table)
            table.extend(names.setdefault(n, len(names)) for n in key)
        base[k] = at
    sizes = np.fromiter((t.steps.size for t in trials), dtype=np.int64, count=len(trials))
    local = np.concatenate([t.metric_codes for t in trials]).astype(np.int64)
    codes = np.asarray(table, dtype=np.uint32)[local + np.repeat(base, sizes)]
    frame = pl.DataFrame(
        {
            "trial": np.repeat(
                np.fromiter((t.index for t in trials), dtype=np.int64, count=len(trials)), sizes
            ),
            "step": np.concatenate([t.steps for t in trials]).astype(np.int64),
            # Gathering from a categorical series copies codes, not 2,000,000 strings.
            "metric": pl.Series(list(names), dtype=pl.Categorical).gather(codes),
            "value": np.concatenate([t.values for t in trials]),
        }
    )
    return frame.cast(schema)  # type: ignore[arg-type]


__all__ = [
    "FORMAT",
    "SUMMARY_FORMAT",
    "CompactTrial",
    "Loaded",
    "Snapshot",
    "SnapshotCache",
    "TrialSummary",
    "cache_root",
    "compact_history",
    "decode_summary",
    "digest",
    "encode_summary",
    "read_summaries",
    "write_trial_summary",
]
