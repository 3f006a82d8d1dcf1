"""``load(store) -> Results``: a store (live, finished, or a plain copy) as polars tables.

>>> from ablator.analysis import load
>>> res = load("./runs/digits")                 # or "s3://bucket/exp", or an rsync'd folder
>>> res.trials.filter(pl.col("status") == "completed").select("index", "variant", "best.val_accuracy")
>>> res.history.filter(pl.col("metric") == "val_accuracy")
>>> print(res.effects().render())
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import polars as pl

from ablator import layout, records
from ablator.analysis import reader
from ablator.analysis.reader import BEST_PREFIX, CONFIG_PREFIX, DONE_STATUSES, FINAL_PREFIX, TrialData
from ablator.analysis.snapshot import SnapshotCache, cache_root
from ablator.errors import AnalysisError, StoreError
from ablator.store import open_store
from ablator.store.base import Store

if TYPE_CHECKING:
    from ablator.analysis.effects import Effects, Factor
    from ablator.analysis.report import ReportFiles

Mode = Literal["min", "max"]

#: The fixed columns of ``Results.trials``, in order; config and metric columns follow.
BASE_COLUMNS: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "variant": pl.String(),
    "seed": pl.Int64(),
    "repeat": pl.Int64(),
    "status": pl.String(),
    "attempts": pl.Int64(),
    "failures": pl.Int64(),
    "takeovers": pl.Int64(),
    "epoch": pl.Int64(),
    "steps": pl.Int64(),
    "best_step": pl.Int64(),
    "duration_s": pl.Float64(),
    "host": pl.String(),
    "gpu": pl.String(),
    "config_hash": pl.String(),
    "error": pl.String(),
}
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "trial": pl.Int64(),
    "step": pl.Int64(),
    "metric": pl.Categorical(),  # a handful of names over millions of rows
    "value": pl.Float64(),
}


@dataclass(frozen=True)
class LoadInfo:
    """How a load went: what came from a snapshot, what was read record by record."""

    url: str
    trials_listed: int
    from_snapshot: int
    read: int
    snapshot_read: str | None  # key of the snapshot reused, if any
    snapshot_read_from: str | None  # "store" or the local folder
    snapshot_written: str | None
    snapshot_written_to: str | None
    seconds: float


# --- building frames -------------------------------------------------------------------------


def _series(name: str, values: list[Any]) -> pl.Series:
    """A typed column; values of clashing types (a config path that is a number in one trial and
    a string in another) fall back to their JSON text rather than failing the load."""
    try:
        return pl.Series(name, values, strict=False)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        return pl.Series(
            name, [None if v is None else msgspec.json.encode(v).decode() for v in values], dtype=pl.String
        )


def rows_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Trial rows (internal column names) as a frame with the base columns first."""
    names: dict[str, None] = dict.fromkeys(BASE_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = []
    for name in names:
        values = [row.get(name) for row in rows]
        dtype = BASE_COLUMNS.get(name)
        columns.append(
            pl.Series(name, values, dtype=dtype, strict=False) if dtype is not None else _series(name, values)
        )
    return pl.DataFrame(columns)


def history_frame(trials: Iterable[TrialData]) -> pl.DataFrame:
    """The long history of ``trials`` (trial, step, metric, value)."""
    idx: list[int] = []
    steps: list[int] = []
    names: list[str] = []
    values: list[float] = []
    for t in trials:
        if t.steps:
            idx.extend([t.index] * len(t.steps))
            steps.extend(t.steps)
            names.extend(t.metrics)
            values.extend(t.values)
    return pl.DataFrame(
        {"trial": idx, "step": steps, "metric": names, "value": values}, schema=HISTORY_SCHEMA, strict=False
    )


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame()
    frames = [f for f in frames if f.height] or frames[:1]  # empty parts add nothing but work
    if len(frames) == 1:
        return frames[0]
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError:
        # Columns whose types no supertype reconciles (a list here, a number there): as text.
        frames = [
            f.with_columns(
                pl.col(c).cast(pl.String, strict=False)
                for c in f.columns
                if not f[c].dtype.is_numeric() and c not in BASE_COLUMNS
            )
            for f in frames
        ]
        return pl.concat(frames, how="diagonal_relaxed")


def _budget(experiment: dict[str, Any], extensions: int) -> int | None:
    """The trial budget when the design fixes one: explicit ``trials``, an ablation's
    (1 + variants) x repeats, or a grid of plain choices; plus ``launch --extend`` additions."""
    design = experiment.get("design") or {}
    repeats = int(design.get("repeats") or 1)
    base: int | None = None
    if design.get("trials") is not None:
        base = int(design["trials"])
    elif design.get("kind") == "ablation":
        base = (1 + len(design.get("ablations") or {})) * repeats
    elif design.get("kind") == "grid":
        size = 1
        for spec in (design.get("space") or {}).values():
            choices = (
                spec if isinstance(spec, list) else spec.get("choice") if isinstance(spec, dict) else None
            )
            if not isinstance(choices, list):
                return None  # ranges with steps, conditional spaces: the planner knows, not us
            size *= len(choices)
        base = size * repeats
    return None if base is None else base + extensions


# --- the public object -----------------------------------------------------------------------


class Results:
    """An experiment's trials and histories as polars frames, plus its statistics and figures.

    ``trials``: one row per trial: ``index``, ``variant``, ``seed``, ``repeat``, ``status`` (a
    result's status, or failed/retrying/released/running/pending), ``attempts``, ``failures``,
    ``takeovers``, ``epoch`` (the attempt whose lineage is canonical), ``steps``, ``best_step``,
    ``duration_s``, ``host``, ``gpu``, ``config_hash``, ``error`` (the newest failure), then
    ``final.<metric>`` and ``best.<metric>`` from the result (null until there is one), then every
    config value under its dotted path (``model.dropout``; ``config.<path>`` if that name is taken).

    ``history``: (trial, step, metric, value) of finished trials along their result's lineage and
    of running trials along their newest attempt's (provisional); never a failed attempt's
    orphaned rows.
    """

    def __init__(
        self,
        spec: records.ExperimentSpec,
        rows: pl.DataFrame,
        history: pl.DataFrame,
        *,
        budget: int | None,
        info: LoadInfo,
    ) -> None:
        self.spec = spec
        self.experiment: dict[str, Any] = dict(spec.experiment)
        self.name: str = spec.name or str(self.experiment.get("name", ""))
        metric = self.experiment.get("metric") or {}
        self.metric: str = str(metric.get("name", ""))
        self.mode: Mode = "min" if metric.get("mode") == "min" else "max"
        self.design: dict[str, Any] = dict(self.experiment.get("design") or {})
        self.budget = budget
        self.info = info
        self.url = info.url
        self.trials, self.config_columns = self._public(rows, budget)
        self.history = history

    @staticmethod
    def _public(rows: pl.DataFrame, budget: int | None) -> tuple[pl.DataFrame, dict[str, str]]:
        if rows.width == 0:
            rows = rows_frame([])
        present = set(rows["index"].to_list())
        missing = [{"index": i, "status": "pending"} for i in range(budget or 0) if i not in present]
        if missing:
            rows = _concat([rows, rows_frame(missing)])
        rows = rows.sort("index")
        taken = {c for c in rows.columns if not c.startswith(CONFIG_PREFIX)}
        config_columns: dict[str, str] = {}
        renames: dict[str, str] = {}
        for c in rows.columns:
            if c.startswith(CONFIG_PREFIX):
                path = c[len(CONFIG_PREFIX) :]
                config_columns[path] = c if path in taken else path
                if path not in taken:
                    renames[c] = path
        metrics = sorted(c for c in rows.columns if c.startswith((FINAL_PREFIX, BEST_PREFIX)))
        order = [*BASE_COLUMNS, *metrics, *(config_columns[p] for p in config_columns)]
        return rows.rename(renames).select(order), config_columns

    # -- convenience ----------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        """Names of the metrics any result reported."""
        names = {c.split(".", 1)[1] for c in self.trials.columns if c.startswith((FINAL_PREFIX, BEST_PREFIX))}
        return sorted(names)

    def column(self, path: str) -> str:
        """The ``trials`` column of config path ``path`` (AnalysisError if no trial has it)."""
        try:
            return self.config_columns[path]
        except KeyError:
            raise AnalysisError(
                f"no config value {path!r} in the trials of {self.url}; known paths: {', '.join(sorted(self.config_columns)) or 'none'}"
            ) from None

    def direction(self, metric: str | None = None, mode: Mode | None = None) -> tuple[str, Mode, str]:
        """(metric, mode, where the mode came from: "given" | "experiment" | "guessed")."""
        metric = metric or self.metric
        if mode is not None:
            return metric, mode, "given"
        if metric == self.metric:
            return metric, self.mode, "experiment"
        lowered = metric.lower()
        guess: Mode = (
            "min"
            if any(w in lowered for w in ("loss", "error", "err", "perplexity", "mse", "mae", "rmse", "time"))
            else "max"
        )
        return metric, guess, "guessed"

    def values(self, metric: str | None = None, value: Literal["best", "final"] = "best") -> pl.Series:
        """The per-trial value the statistics use: ``best.<metric>``, or ``final.<metric>`` where
        a result has no best value for it (``value="final"``: the final one only)."""
        metric = metric or self.metric
        best, final = BEST_PREFIX + metric, FINAL_PREFIX + metric
        cols = [c for c in ((best, final) if value == "best" else (final,)) if c in self.trials.columns]
        if not cols:
            return pl.Series("value", [None] * self.trials.height, dtype=pl.Float64)
        return self.trials.select(pl.coalesce([pl.col(c).cast(pl.Float64) for c in cols]).alias("value"))[
            "value"
        ]

    def best(
        self,
        k: int = 10,
        metric: str | None = None,
        mode: Mode | None = None,
        value: Literal["best", "final"] = "best",
    ) -> pl.DataFrame:
        """The ``k`` best finished trials by ``metric`` (direction-aware), with a ``value`` column."""
        metric, mode, _ = self.direction(metric, mode)
        frame = self.trials.with_columns(self.values(metric, value)).filter(
            pl.col("status").is_in(list(DONE_STATUSES))
            & pl.col("value").is_not_null()
            & pl.col("value").is_finite()
        )
        return frame.sort("value", descending=mode == "max", maintain_order=True).head(k)

    def status_counts(self) -> dict[str, int]:
        """Trials per status, in ``reader.STATUSES`` order, zero counts left out."""
        counts = dict(self.trials.group_by("status").len().iter_rows())
        return {s: int(counts[s]) for s in reader.STATUSES if counts.get(s)}

    def factors(self) -> list[Factor]:
        """The experiment's factors: the ablation's variants, or each searched config path."""
        from ablator.analysis.effects import factors_of

        return factors_of(self)

    def effects(
        self,
        metric: str | None = None,
        *,
        mode: Mode | None = None,
        value: Literal["best", "final"] = "best",
        statuses: Sequence[str] = ("completed", "early_stopped"),
        confidence: float = 0.95,
    ) -> Effects:
        """Per factor and level: n, mean, std, CI, difference from the baseline (or the best
        level) with Welch's CI and p-value, relative change, rank; for numeric factors Spearman's
        rho and a trend. Seeds are the replicates. See :mod:`ablator.analysis.effects`."""
        from ablator.analysis.effects import compute_effects

        return compute_effects(self, metric, mode=mode, value=value, statuses=statuses, confidence=confidence)

    def report(
        self, out: str | os.PathLike[str], metric: str | None = None, mode: Mode | None = None
    ) -> ReportFiles:
        """Write figures, ``report.md``, a self-contained ``report.html`` and ``effects.json``
        into ``out``."""
        from ablator.analysis.report import write_report

        return write_report(self, out, metric=metric, mode=mode)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.status_counts().items())
        return f"Results({self.name!r}, {self.trials.height} trials: {counts or 'none'}; {self.history.height} history rows)"


# --- load ------------------------------------------------------------------------------------


def _read_spec(store: Store) -> records.ExperimentSpec:
    data = store.get(layout.EXPERIMENT)
    if data is None:
        raise AnalysisError(
            f"{store.url} holds no {layout.EXPERIMENT}: not an ablator store, or not launched yet "
            "(create it with `python -m ablator launch EXP --store URL`)"
        )
    return records.decode_json(data, records.ExperimentSpec, layout.EXPERIMENT)


def _records_under(store: Store, prefix: str, type_: type[records.R]) -> list[records.R]:
    out = []
    for e in store.list(prefix):
        data = store.get(e.key)
        if data is not None and (rec := records.try_decode(data, type_, e.key)) is not None:
            out.append(rec)
    return out


def _trial_indices(store: Store) -> list[int]:
    out = []
    for name in store.list_dirs(layout.TRIALS_DIR):
        if name.isdigit() and layout.trial_dir(int(name)) == f"{layout.TRIALS_DIR}{name}/":
            out.append(int(name))
    return sorted(out)


def _writable(url: str | os.PathLike[str] | Store) -> Store | None:
    """A handle that may create snapshots in the store, or None when it takes no writes: a
    Store object passed in is used as it is (opened read-only: no writes); a URL is opened
    again for writing, and a store that then refuses the write (a read-only mount, a bucket
    policy) falls back to the local folder."""
    if isinstance(url, Store):
        return None if url.read_only else url
    try:
        handle = open_store(url)
    except StoreError:
        return None
    return None if handle.read_only else handle


def _read_trials(
    store: Store, indices: list[int], ctx: reader.Context, workers: int | None
) -> list[TrialData]:
    """Read ``indices`` record by record, in parallel where reads are round trips."""
    if workers is None:
        from ablator.store.memory import MemoryStore
        from ablator.store.posix import PosixStore

        # Local reads are fast and decoding holds the GIL: threads would only add overhead.
        workers = 1 if isinstance(store, (PosixStore, MemoryStore)) else 16
    if workers > 1 and len(indices) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ablator-load") as pool:
            return list(pool.map(lambda i: reader.read_trial(store, i, ctx), indices))
    return [reader.read_trial(store, i, ctx) for i in indices]


def _should_snapshot(covered: int, new_done: int, settled: bool) -> bool:
    """Write a new snapshot when it saves real work: the experiment has settled, or the finished
    trials outside the current snapshot reach a quarter of it (at most 2,000). Snapshots thus
    grow geometrically and a live experiment does not leave hundreds of them behind."""
    if new_done == 0:
        return False
    return settled or new_done >= max(1, min(2000, covered // 4))


def load(
    store: str | os.PathLike[str] | Store,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> Results:
    """Read a store into :class:`Results` without touching the experiment's records.

    Works on a live store, a finished one, or a plain copy. Finished trials come from a snapshot
    when one covers them (see :mod:`ablator.analysis.snapshot`); ``cache=False`` reads every
    record and writes no snapshot. ``cache_dir`` is the local snapshot folder for stores that take
    no writes (default ``$ABLATOR_CACHE_DIR`` or ``~/.cache/ablator``). ``workers``: trials read
    in parallel (default: 1 for local folders, where decoding holds the GIL; 16 for remote stores,
    where each read is a round trip).
    """
    started = time.perf_counter()
    reading = store if isinstance(store, Store) else open_store(store, read_only=True)
    spec = _read_spec(reading)
    exp = spec.experiment
    design = exp.get("design") or {}
    limits = exp.get("limits") or {}
    retries = _records_under(reading, layout.RETRY_DIR, records.Retry)
    forgiven: dict[int, int] = {}
    for r in retries:
        for trial, epoch in r.epochs.items():
            forgiven[trial] = max(forgiven.get(trial, -1), epoch)
    ctx = reader.Context(
        ablation=design.get("kind") == "ablation",
        max_attempts=int(limits.get("max_attempts", 3)),
        forgiven=forgiven,
    )
    extensions = sum(e.trials for e in _records_under(reading, layout.EXTEND_DIR, records.Extension))
    budget = _budget(exp, extensions)
    indices = _trial_indices(reading)

    snaps: SnapshotCache | None = None
    loaded = None
    if cache:
        snaps = SnapshotCache(
            reading, spec.nonce, writable=lambda: _writable(store), local=cache_root(cache_dir)
        )
        loaded = snaps.best(set(indices))
    covered = set(loaded.trials) if loaded is not None else set()
    todo = [i for i in indices if i not in covered]

    fresh = _read_trials(reading, todo, ctx, workers)
    done = [t for t in fresh if t.done]
    others = [t for t in fresh if not t.done]
    base_rows = [loaded.rows] if loaded is not None else []
    base_history = [loaded.history] if loaded is not None else []
    done_rows = _concat([*base_rows, rows_frame([t.row for t in done])])
    done_history = _concat([*base_history, history_frame(done)])

    written: tuple[str, str] | None = None
    settled = all(t.row.get("status") == "failed" for t in others) and (
        budget is None or len(indices) >= budget
    )
    if snaps is not None and _should_snapshot(len(covered), len(done), settled):
        pairs = sorted(
            [
                *(zip(loaded.trials, loaded.result_nonces, strict=True) if loaded is not None else ()),
                *((t.index, t.result_nonce or "") for t in done),
            ]
        )
        written = snaps.write(
            [i for i, _ in pairs],
            [nonce for _, nonce in pairs],
            done_rows.sort("index"),
            done_history.sort("trial", maintain_order=True),
        )

    rows_all = _concat([done_rows, rows_frame([t.row for t in others])])
    history_all = _concat([done_history, history_frame(others)])
    if history_all.width == 0:
        history_all = pl.DataFrame(schema=HISTORY_SCHEMA)
    if fresh and history_all.height:
        # Snapshot rows come sorted; freshly read trials interleave with them by index.
        history_all = history_all.sort("trial", maintain_order=True)

    info = LoadInfo(
        url=reading.url,
        trials_listed=len(indices),
        from_snapshot=len(covered),
        read=len(todo),
        snapshot_read=loaded.key if loaded is not None else None,
        snapshot_read_from=loaded.location if loaded is not None else None,
        snapshot_written=written[0] if written else None,
        snapshot_written_to=written[1] if written else None,
        seconds=time.perf_counter() - started,
    )
    return Results(spec, rows_all, history_all, budget=budget, info=info)


__all__ = ["LoadInfo", "Results", "load"]
