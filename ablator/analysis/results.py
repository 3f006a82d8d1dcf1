"""``load(store) -> Results``: a store (live, finished, or a plain copy) as polars tables.

>>> from ablator.analysis import load
>>> res = load("./runs/digits")                 # or "s3://bucket/exp", or an rsync'd folder
>>> res.trials.filter(pl.col("status") == "completed").select("index", "variant", "best.val_accuracy")
>>> res.history.filter(pl.col("metric") == "val_accuracy")
>>> print(res.effects().render())
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import polars as pl

from ablator import layout, records
from ablator.analysis import reader
from ablator.analysis.reader import BEST_PREFIX, CONFIG_PREFIX, DONE_STATUSES, FINAL_PREFIX, TrialData
from ablator.analysis.snapshot import SnapshotCache, cache_root, compact_history, read_summaries
from ablator.errors import AnalysisError, StoreError
from ablator.lease.state import budget_of
from ablator.samplers import locate
from ablator.spec import read_spec
from ablator.store import open_store
from ablator.store.base import Store

if TYPE_CHECKING:
    from ablator.analysis.effects import Effects

Mode = Literal["min", "max"]
Value = Literal["best", "final"]
#: Metric name words that mark a proportion (guessed bounds [0, 1], see ``Results.bounds``).
_PROPORTIONS = frozenset({"accuracy", "acc", "f1", "auc", "auroc", "precision", "recall", "iou", "dice"})

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
    "resumed_from": pl.Int64(),
    "steps": pl.Int64(),
    "best_step": pl.Int64(),
    "duration_s": pl.Float64(),
    "setup_s": pl.Float64(),
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
    read: int  # trials not in a snapshot: from_summaries of them from summaries, the rest record by record
    snapshot_read: str | None  # key of the snapshot reused, if any
    snapshot_read_from: str | None  # "store" or the local folder
    snapshot_written: str | None
    snapshot_written_to: str | None
    seconds: float
    from_summaries: int = 0


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


MAX_PENDING_ROWS = 100_000
"""Never-started trials beyond this many get no row in ``Results.trials``: they are counted in
``Results.unlisted_pending`` (readers scale with the trials that exist, not the budget)."""


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
    # a negative extension (``launch --extend -N``) is a correction: never below the launched budget
    return None if base is None else max(base, base + extensions)


# --- the public object -----------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """An experiment's trials and histories as polars frames: data that
    :func:`~ablator.analysis.effects.compute_effects`, :mod:`~ablator.analysis.figures` and
    :func:`~ablator.analysis.report.write_report` take. Build one with :func:`load`.

    ``trials``: one row per trial: ``index``, ``variant``, ``seed``, ``repeat``, ``status`` (a
    result's status, or failed/retryable/released/running/pending), ``attempts``, ``failures``,
    ``takeovers``, ``epoch`` (the attempt whose lineage is canonical), ``resumed_from``, ``steps``,
    ``best_step``, ``duration_s``, ``setup_s``, ``host``, ``gpu``, ``config_hash``, ``error`` (the
    newest failure), then ``final.<metric>`` and ``best.<metric>`` from the result (null until
    there is one), then every config value under its dotted path (``model.dropout``;
    ``config.<path>`` if that name is taken).

    ``history``: (trial, variant, step, metric, value) of finished trials along their result's
    lineage and of running trials along their newest attempt's (provisional); never a failed
    attempt's orphaned rows.
    """

    spec: records.ExperimentSpec
    trials: pl.DataFrame
    history: pl.DataFrame
    config_columns: dict[str, str]
    budget: int | None
    info: LoadInfo
    #: never-started trials of a budget too large to list one row each (``MAX_PENDING_ROWS``)
    unlisted_pending: int = 0

    # -- what the experiment says ------------------------------------------------------------
    @property
    def experiment(self) -> dict[str, Any]:
        """The launched experiment file as plain data."""
        return dict(self.spec.experiment)

    @property
    def name(self) -> str:
        return self.spec.name or str(self.spec.experiment.get("name", ""))

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def design(self) -> dict[str, Any]:
        return dict(self.spec.experiment.get("design") or {})

    @property
    def metric(self) -> str:
        """The experiment's metric."""
        return str((self.spec.experiment.get("metric") or {}).get("name", ""))

    @property
    def mode(self) -> Mode:
        """The experiment metric's direction."""
        return "min" if (self.spec.experiment.get("metric") or {}).get("mode") == "min" else "max"

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

    def bounds(self, metric: str | None = None) -> tuple[float, float, str] | None:
        """The range a metric's values can take, as (low, high, source), or None when unknown.

        ``source`` is "experiment" when the experiment's ``metric.bounds`` says so (for its own
        metric), or "guessed" for a name that is a proportion (accuracy, acc, f1, auc,
        precision, recall, iou, dice) whose every recorded value lies in [0, 1] (an accuracy in
        percent is then not clipped to 1). Figures clip drawn bands to it and say so."""
        metric = metric or self.metric
        declared = (self.spec.experiment.get("metric") or {}).get("bounds")
        if metric == self.metric and isinstance(declared, (list, tuple)) and len(declared) == 2:
            return float(declared[0]), float(declared[1]), "experiment"
        words = re.split(r"[^a-z0-9]+", metric.lower())
        if not any(w in _PROPORTIONS for w in words):
            return None
        seen = [self.values(metric, "best"), self.values(metric, "final")]
        hist = self.history.filter(pl.col("metric") == metric)["value"] if self.history.height else None
        if hist is not None:
            seen.append(hist)
        finite = [s.drop_nulls().filter(s.drop_nulls().is_finite()) for s in seen]
        if any(f.len() and (f.min() < 0.0 or f.max() > 1.0) for f in finite):
            return None
        return 0.0, 1.0, "guessed"

    def values(self, metric: str | None = None, value: Value = "best") -> pl.Series:
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
        value: Value = "best",
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
        counts["pending"] = counts.get("pending", 0) + self.unlisted_pending
        return {s: int(counts[s]) for s in reader.STATUSES if counts.get(s)}

    def effects(self, metric: str | None = None, **options: Any) -> Effects:
        """Shorthand for :func:`ablator.analysis.effects.compute_effects(self, metric, ...)
        <ablator.analysis.effects.compute_effects>`: per factor and level n, mean, CI, the
        difference from the reference with its test (paired when seeds pair, else Welch), raw
        and adjusted p-values, Hedges' g; Spearman trends of numeric factors."""
        from ablator.analysis.effects import compute_effects  # the one call back into effects

        return compute_effects(self, metric, **options)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.status_counts().items())
        return f"Results({self.name!r}, {self.trials.height} trials: {counts or 'none'}; {self.history.height} history rows)"


def make_results(
    spec: records.ExperimentSpec,
    rows: pl.DataFrame,
    history: pl.DataFrame,
    *,
    budget: int | None,
    info: LoadInfo,
) -> Results:
    """:class:`Results` from internal trial rows: pending rows added for the budget's unclaimed
    trials (with their variant when the design names it), config columns renamed to their paths,
    the history given its ``variant`` column."""
    if rows.width == 0:
        rows = rows_frame([])
    present = set(rows["index"].to_list())
    variants = _variant_of(spec.experiment)
    n_missing = (budget or 0) - sum(1 for i in present if i < (budget or 0))
    unlisted = 0
    if n_missing > MAX_PENDING_ROWS:
        # A huge budget with few trials run: one row per never-started index would cost memory
        # and time in proportion to the budget. They are counted instead (status_counts).
        unlisted = n_missing
    elif n_missing:
        missing = [
            {"index": i, "status": "pending", "variant": variants(i)}
            for i in range(budget or 0)
            if i not in present
        ]
        rows = _concat([rows, rows_frame(missing)])
    rows = rows.sort("index").with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in BASE_COLUMNS.items()
        if name not in rows.columns
    )
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
    trials = rows.rename(renames).select(order)
    if history.width == 0:
        history = pl.DataFrame(schema=HISTORY_SCHEMA)
    lookup = trials.select(pl.col("index").alias("trial"), "variant")
    history = history.join(lookup, on="trial", how="left", maintain_order="left").select(
        "trial", "variant", "step", "metric", "value"
    )
    return Results(spec, trials, history, config_columns, budget, info, unlisted_pending=unlisted)


def _variant_of(experiment: dict[str, Any]) -> Callable[[int], str | None]:
    """Trial index -> its variant for an ablation (where :func:`ablator.samplers.locate` puts
    it); None for other designs."""
    design = experiment.get("design") or {}
    if design.get("kind") != "ablation":
        return lambda i: None
    names = ["baseline", *(design.get("ablations") or {})]
    repeats = max(1, int(design.get("repeats") or 1))
    return lambda i: names[locate("ablation", i, repeats=repeats, points=len(names))[0]]


# --- load ------------------------------------------------------------------------------------


def _read_spec(store: Store) -> tuple[records.ExperimentSpec, bool]:
    """The experiment and whether the store is a private ``ablator run`` store."""
    for key, private in ((layout.EXPERIMENT, False), (layout.PRIVATE_EXPERIMENT, True)):
        # verified: an edited experiment.json is refused; one an older ablator launched with more
        # than MAX_TRIALS trials is read (analysis scales with the trials that exist)
        spec = read_spec(store, key, over_limit_ok=True)
        if spec is not None:
            return spec, private
    hint = (
        "it holds trials but no experiment: a private `ablator run` store from before ablator recorded "
        "it there; run one trial there again with `python -m ablator run EXP --store URL` to record it"
        if store.list_dirs(layout.TRIALS_DIR)
        else "not an ablator store, or not launched yet (create it with `python -m ablator launch EXP --store URL`)"
    )
    raise AnalysisError(f"{store.url} holds no {layout.EXPERIMENT}: {hint}")


def _records_under(store: Store, prefix: str, type_: type[records.R]) -> list[records.R]:
    out = []
    for e in store.list(prefix):
        if (rec := records.read(store, e.key, type_)) is not None:
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


def _workers(store: Store, workers: int | None) -> int:
    if workers is not None:
        return workers
    from ablator.store.memory import MemoryStore
    from ablator.store.posix import PosixStore

    # Local reads are fast and decoding holds the GIL: threads would only add overhead.
    return 1 if isinstance(store, (PosixStore, MemoryStore)) else 16


def _read_trials(store: Store, indices: list[int], ctx: reader.Context, workers: int) -> list[TrialData]:
    """Read ``indices`` record by record, in parallel where reads are round trips."""
    if workers > 1 and len(indices) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ablator-load") as pool:
            return list(pool.map(lambda i: reader.read_trial(store, i, ctx), indices))
    return [reader.read_trial(store, i, ctx) for i in indices]


def _by_trial(history: pl.DataFrame) -> pl.DataFrame:
    """``history`` in trial order, each trial's rows as they were (a stable sort); parts read in
    index order often already are, and checking is far cheaper than sorting 2,000,000 rows."""
    trials = history["trial"].to_numpy()
    if trials.size < 2 or bool(np.all(trials[1:] >= trials[:-1])):
        return history
    return history.sort("trial", maintain_order=True)


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
    when one covers them, else from their one-file summaries (see
    :mod:`ablator.analysis.snapshot`); ``cache=False`` reads every record (neither snapshots nor
    summaries) and writes no snapshot. ``cache_dir`` is the local snapshot folder for stores that take
    no writes (default ``$ABLATOR_CACHE_DIR`` or ``~/.cache/ablator``). ``workers``: trials read
    in parallel (default: 1 for local folders, where decoding holds the GIL; 16 for remote stores,
    where each read is a round trip).
    """
    started = time.perf_counter()
    reading = store if isinstance(store, Store) else open_store(store, read_only=True)
    spec, private = _read_spec(reading)
    exp = spec.experiment
    design = exp.get("design") or {}
    limits = exp.get("limits") or {}
    retries = _records_under(reading, layout.RETRY_DIR, records.Retry)
    forgiven: dict[int, int] = {}
    for r in retries:
        for trial, epoch in r.epochs.items():
            forgiven[trial] = max(forgiven.get(trial, -1), epoch)
    ctx = reader.Context(
        variant_of=_variant_of(exp),
        ablation=design.get("kind") == "ablation",
        max_attempts=int(limits.get("max_attempts", 3)),
        forgiven=forgiven,
    )
    extensions = budget_of(reading, 0).extended  # warns about an unreadable extension
    if private:
        budget = None  # a private store runs single trials
    elif spec.budget is not None:  # what launch planned (the planner knows every design)
        budget = max(spec.budget, spec.budget + extensions)
    else:
        budget = _budget(exp, extensions)
    indices = _trial_indices(reading)
    if budget is not None and indices and indices[-1] >= budget:
        # trials exist up to there (a corrupt extension counted as 0, warned): the budget was at least that
        budget = indices[-1] + 1

    snaps: SnapshotCache | None = None
    loaded = None
    if cache:
        snaps = SnapshotCache(
            reading, spec.nonce, writable=lambda: _writable(store), local=cache_root(cache_dir)
        )
        loaded = snaps.best(set(indices))
    covered = set(loaded.trials) if loaded is not None else set()
    todo = [i for i in indices if i not in covered]

    n_workers = _workers(reading, workers)
    # A finished trial's summary (one file, written by its holder) before its records.
    compact, rest = read_summaries(reading, todo, n_workers) if cache else ([], todo)
    fresh = _read_trials(reading, rest, ctx, n_workers)
    done = [t for t in fresh if t.done]
    others = [t for t in fresh if not t.done]
    base_rows = [loaded.rows] if loaded is not None else []
    base_history = [loaded.history] if loaded is not None else []
    done_rows = _concat([*base_rows, rows_frame([*(c.row for c in compact), *(t.row for t in done)])])
    done_history = _concat([*base_history, compact_history(compact, HISTORY_SCHEMA), history_frame(done)])

    written: tuple[str, str] | None = None
    settled = all(t.row.get("status") == "failed" for t in others) and (
        budget is None or len(indices) >= budget
    )
    if snaps is not None and _should_snapshot(len(covered), len(done) + len(compact), settled):
        pairs = sorted(
            [
                *(zip(loaded.trials, loaded.result_nonces, strict=True) if loaded is not None else ()),
                *((c.index, c.result_nonce) for c in compact),
                *((t.index, t.result_nonce or "") for t in done),
            ]
        )
        written = snaps.write(
            [i for i, _ in pairs],
            [nonce for _, nonce in pairs],
            done_rows.sort("index"),
            _by_trial(done_history),
        )

    rows_all = _concat([done_rows, rows_frame([t.row for t in others])])
    history_all = _concat([done_history, history_frame(others)])
    if history_all.width == 0:
        history_all = pl.DataFrame(schema=HISTORY_SCHEMA)
    if (fresh or compact) and history_all.height:
        # Snapshot rows come sorted; freshly read trials interleave with them by index.
        history_all = _by_trial(history_all)

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
        from_summaries=len(compact),
    )
    return make_results(spec, rows_all, history_all, budget=budget, info=info)


__all__ = ["LoadInfo", "Mode", "Results", "Value", "load", "make_results"]
