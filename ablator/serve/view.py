"""What the dashboard shows, computed from the store through ``ablator.analysis`` only.

:class:`StoreView` holds the newest :class:`~ablator.analysis.Results` of one store and re-reads it
in a background thread every ``interval`` seconds while somebody is looking (a request came within
``idle_after`` seconds). Requests never wait for the store: they are answered from the newest
read, and every answer says when that read happened. A load reuses the analysis snapshot of the
finished trials, so a re-read costs one snapshot, a listing of ``trials/`` and the trials the
snapshot does not cover (running ones and recent results): see ``docs/analysis.md``, "Speed".

Read-only by construction: the store is opened with ``read_only=True`` (every write raises), and
``load`` is given that handle, so its snapshots go to the local cache folder, never to the store.

Agents are judged the way agents judge each other (:class:`ablator.lease.Liveness`): on this
process's own clock, by whether each heartbeat's counter changes within its lease. A fresh server
therefore calls an agent "checking" until it has seen its counter move (alive) or a lease has
passed without a change (dead); wall clocks of other machines are never compared.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ablator import layout, records
from ablator.analysis import Results, load
from ablator.analysis.effects import Factor, assign_levels, factors_of
from ablator.analysis.reader import DONE_STATUSES, STATUSES
from ablator.errors import AblatorError, AnalysisError
from ablator.lease import LeaseLimits, Liveness, default_clock, read_budget
from ablator.store import Store

#: Columns of the trial table besides metrics and factors, in order.
TABLE_COLUMNS = ("index", "variant", "status", "steps", "attempts", "takeovers", "host", "gpu", "duration_s")
#: Statuses that will not change by themselves (the denominator of progress).
FINISHED = (*DONE_STATUSES, "failed", "needs_repair")
#: At most this many points per curve are sent to the browser (steps are thinned evenly).
MAX_POINTS = 400
#: At most this many groups (or single trials) are drawn in one chart.
MAX_LINES = 24


@dataclass
class Snapshot:
    """One read of the store: everything a page needs, immutable once published."""

    results: Results
    read_at: float  # wall time of the read (for display only)
    seconds: float  # how long the read took
    version: str  # changes when anything shown changes
    agents: list[dict[str, Any]]
    extensions: int
    finished: int
    unheld: list[int]  # running trials no live agent has listed for a lease
    problems: list[str]  # warnings of the read (corrupt records, by key)
    derived: dict[Any, Any] = field(default_factory=dict)  # per-snapshot cache of computed answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.derived:
                return self.derived[key]
        value = make()
        with self.lock:
            self.derived[key] = value
        return value


class StoreView:
    """The newest read of one store, refreshed in the background while somebody looks."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 5.0,
        idle_after: float = 120.0,
        cache_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not store.read_only:
            raise AblatorError(
                f"serve: {store.url} must be opened read-only (open_store(url, read_only=True))"
            )
        self.store = store
        self.url = store.url
        self.interval = interval
        self.idle_after = idle_after
        self.cache_dir = cache_dir
        self.clock = clock or default_clock()
        self.current: Snapshot | None = None
        self.error: str | None = None  # the last read's error, if it failed
        self.error_at: float | None = None
        self.reads = 0
        self._liveness: Liveness | None = None
        self._first_sight: dict[str, float] = {}
        self._progress: deque[tuple[float, int]] = deque(maxlen=720)  # (our clock, finished)
        self._extension_cache: dict[str, records.Extension | None] = {}
        self._last_request = self.clock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._unheld_since: dict[int, float] = {}  # running trial -> first read that found it unlisted

    # -- the refresher ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the background refresher (a daemon thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ablator-serve-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)  # a daemon that only reads: do not hold up shutdown

    def touched(self) -> None:
        """A request came in: keep refreshing (and refresh at once after an idle spell)."""
        idle = self.clock() - self._last_request > self.idle_after
        self._last_request = self.clock()
        if idle:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.current is None or self.clock() - self._last_request <= self.idle_after:
                self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()

    def refresh(self) -> Snapshot | None:
        """Read the store once and publish the read; on an error keep the previous one."""
        with self._read_lock:
            started = time.perf_counter()
            try:
                snap = self._read(started)
            except AblatorError as exc:
                self.error, self.error_at = str(exc), time.time()
                return None
            except Exception as exc:  # a bug must not kill the refresher: show it on the page
                self.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                self.error_at = time.time()
                return None
            self.error = self.error_at = None
            self.current = snap
            self.reads += 1
            return snap

    def _read(self, started: float) -> Snapshot:
        # Corrupt records are skipped with a warning (analysis reads on): collect them for the
        # page, as `ablator status` does. Only this thread reads the whole store.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", records.CorruptRecordWarning)
            res = load(self.store, cache_dir=self.cache_dir)
            agents = self._agents(res)
        problems = list(dict.fromkeys(str(w.message) for w in caught))
        extensions = read_budget(self.store, 0, self._extension_cache)
        counts = res.status_counts()
        finished = sum(counts.get(s, 0) for s in FINISHED)
        self._progress.append((self.clock(), finished))
        held_live = {t for a in agents if a.get("live") is not False for t, _ in a.get("held", [])}
        running = res.trials.filter(pl.col("status") == "running")["index"].to_list()
        unheld = self._unheld(running, held_live, res)
        version = _fingerprint(res, agents)
        derived: dict[Any, Any] = {}
        prev = self.current
        if prev is not None and prev.version == version:
            # Nothing shown changed: keep what was computed from the previous read, except what
            # depends on time (progress: ages, throughput) or on records outside the tables
            # (trial pages: their logs).
            with prev.lock:
                derived = {
                    k: v
                    for k, v in prev.derived.items()
                    if k != "progress" and not (isinstance(k, tuple) and k[0] == "trial")
                }
        return Snapshot(
            results=res,
            read_at=time.time(),
            seconds=time.perf_counter() - started,
            version=version,
            agents=agents,
            extensions=extensions,
            finished=finished,
            unheld=unheld,
            problems=problems,
            derived=derived,
        )

    def _agents(self, res: Results) -> list[dict[str, Any]]:
        if self._liveness is None:
            limits = res.experiment.get("limits") or {}
            lease = float(limits.get("lease_seconds", LeaseLimits.lease_seconds))
            self._liveness = Liveness(lease, clock=self.clock)
        liveness = self._liveness
        now = self.clock()
        out: list[dict[str, Any]] = []
        for e in self.store.list(layout.AGENTS_DIR):
            agent_id = layout.parse_agent(e.key)
            if agent_id is None:
                continue
            hb = records.read(self.store, e.key, records.Heartbeat)
            liveness.observe(agent_id, hb)
            first = self._first_sight.setdefault(agent_id, now)
            view = liveness.agents.get(agent_id)
            if hb is None or view is None:
                out.append({"agent_id": agent_id, "state": "corrupt", "live": None, "held": []})
                continue
            dead = liveness.is_dead(agent_id)
            if hb.state == "exited":
                state = "exited"
            elif dead:
                state = "dead"
            elif view.first_seen > first:
                state = "draining" if hb.state == "draining" else "alive"
            else:
                state = "checking"  # not seen to beat yet, and not a lease without a beat either
            out.append(
                {
                    "agent_id": agent_id,
                    "host": hb.host,
                    "pid": hb.pid,
                    "state": state,
                    "live": None if state == "checking" else state in ("alive", "draining"),
                    "unchanged_s": round(now - view.first_seen, 1),
                    "lease_s": hb.lease_s,
                    "heartbeat_s": hb.heartbeat_s,
                    "gpus": [g.name or f"gpu{g.index}" for g in hb.gpus],
                    "slots": hb.slots,
                    "held": [[int(t), int(ep)] for t, ep in hb.held] if state != "exited" else [],
                    "versions": dict(hb.versions),
                    "beat_wall_time": hb.wall_time,
                }
            )
        order = {"alive": 0, "draining": 1, "checking": 2, "dead": 3, "exited": 4, "corrupt": 5}
        out.sort(key=lambda a: (order.get(a["state"], 9), a["agent_id"]))
        return out

    # -- answers ---------------------------------------------------------------------------
    def require(self) -> Snapshot:
        snap = self.current
        if snap is None:
            raise NotReady(self.error or "reading the store for the first time")
        return snap

    def state(self) -> dict[str, Any]:
        """What every page polls: whether there is a read, its version and age, the last error."""
        snap = self.current
        return {
            "url": self.url,
            "ready": snap is not None,
            "version": snap.version if snap is not None else None,
            "read_at": snap.read_at if snap is not None else None,
            "read_seconds": snap.seconds if snap is not None else None,
            "now": time.time(),
            "interval": self.interval,
            "error": self.error,
            "error_at": self.error_at,
            "experiment": snap.results.name if snap is not None else None,
        }

    def progress(self) -> dict[str, Any]:
        """Trials by state, budget and extensions, agents, throughput and ETA."""
        snap = self.require()
        return snap.cached("progress", lambda: self._progress_of(snap))

    def _progress_of(self, snap: Snapshot) -> dict[str, Any]:
        res = snap.results
        counts = res.status_counts()
        total = res.budget if res.budget is not None else res.trials.height
        remaining = max(0, total - snap.finished)
        running = counts.get("running", 0)
        durations = res.trials.filter(pl.col("status").is_in(list(DONE_STATUSES)))["duration_s"].drop_nulls()
        median = float(np.median(durations.to_numpy())) if durations.len() else None
        rate, window = self._observed_rate()
        eta: float | None = None
        eta_basis = None
        if remaining == 0:
            eta, eta_basis = 0.0, "done"
        elif rate is not None and rate > 0:
            eta, eta_basis = remaining / rate, "observed"
        elif median is not None and running > 0:
            # Before this server has watched trials finish: the typical duration, as many at
            # once as run now.
            eta, eta_basis = remaining * median / running, "estimated"
        return {
            "experiment": res.name,
            "url": res.url,
            "design": res.design.get("kind"),
            "metric": res.metric,
            "mode": res.mode,
            "counts": {s: counts.get(s, 0) for s in STATUSES},
            "trials": res.trials.height,
            "budget": res.budget,
            "base_budget": None if res.budget is None else res.budget - snap.extensions,
            "extensions": snap.extensions,
            "finished": snap.finished,
            "fraction": snap.finished / total if total else None,
            "agents": snap.agents,
            "agents_live": sum(1 for a in snap.agents if a.get("live")),
            "running_unheld": snap.unheld,
            "problems": snap.problems,
            "throughput_per_min": None if rate is None else rate * 60.0,
            "throughput_window_s": window,
            "median_duration_s": median,
            "eta_s": eta,
            "eta_basis": eta_basis,
            "load": {
                "from_snapshot": res.info.from_snapshot,
                "read": res.info.read,
                "seconds": res.info.seconds,
                "snapshot": res.info.snapshot_read,
            },
            "best": _clean_rows(
                res.best(5).select(["index", "variant", "seed", "status", "value"]).to_dicts()
                if res.metric
                else []
            ),
        }

    def _unheld(self, running: list[int], held: set[int], res: Results) -> list[int]:
        """Running trials that no live agent has listed for a whole lease on our clock (a fresh
        claim is listed only at its holder's next heartbeat: not flagged before then). Called by
        the reader thread only."""
        now = self.clock()
        limits = res.experiment.get("limits") or {}
        lease = float(limits.get("lease_seconds", LeaseLimits.lease_seconds))
        unheld = {i for i in running if i not in held}
        for i in list(self._unheld_since):
            if i not in unheld:
                del self._unheld_since[i]
        for i in unheld:
            self._unheld_since.setdefault(i, now)
        return sorted(i for i, since in self._unheld_since.items() if now - since >= lease)

    def _observed_rate(self) -> tuple[float | None, float | None]:
        """Finished trials per second over this server's own observations (up to 15 min)."""
        if len(self._progress) < 2:
            return None, None
        t1, n1 = self._progress[-1]
        t0, n0 = self._progress[0]
        for t, n in self._progress:
            if t1 - t <= 900:
                t0, n0 = t, n
                break
        if t1 - t0 < 30 or n1 <= n0:
            return None, t1 - t0
        return (n1 - n0) / (t1 - t0), t1 - t0

    # -- the trial table -------------------------------------------------------------------
    def factors(self, snap: Snapshot) -> list[Factor]:
        return snap.cached("factors", lambda: factors_of(snap.results))

    def _levels(self, snap: Snapshot, factor: Factor) -> tuple[list[str], list[str | None]]:
        def make() -> tuple[list[str], list[str | None]]:
            lv = assign_levels(snap.results.trials, factor)
            return lv.order, lv.labels

        return snap.cached(("levels", factor.name), make)

    def columns(self) -> dict[str, Any]:
        """The table's columns, metrics, factors and the levels each filter offers."""
        snap = self.require()
        return snap.cached("columns", lambda: self._columns_of(snap))

    def _columns_of(self, snap: Snapshot) -> dict[str, Any]:
        res = snap.results
        metrics = res.metrics or ([res.metric] if res.metric else [])
        history_metrics = (
            sorted(res.history["metric"].cast(pl.String).unique().to_list()) if res.history.height else []
        )
        factors = []
        for f in self.factors(snap):
            order, _ = self._levels(snap, f)
            factors.append({"name": f.name, "column": f.column, "kind": f.kind, "levels": order})
        return {
            "metric": res.metric,
            "mode": res.mode,
            "metrics": metrics,
            "history_metrics": sorted(set(history_metrics) | set(metrics)),
            "statuses": list(STATUSES),
            "factors": factors,
            "ablation": res.design.get("kind") == "ablation",
        }

    def trials(
        self,
        *,
        status: str | None = None,
        filters: dict[str, str] | None = None,
        metric: str | None = None,
        sort: str = "index",
        descending: bool = False,
        offset: int = 0,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of the trial table, filtered (``status``, factor name -> level label) and
        sorted (any shown column) on the server, so that 10,000 trials cost one small answer."""
        snap = self.require()
        res = snap.results
        metric = metric or res.metric
        frame = res.trials
        mask = np.ones(frame.height, dtype=bool)
        if status:
            wanted = set(status.split(","))
            mask &= frame["status"].is_in(list(wanted)).to_numpy()
        factors = {f.name: f for f in self.factors(snap)}
        for name, level in (filters or {}).items():
            factor = factors.get(name)
            if factor is None:
                raise AnalysisError(f"no factor {name!r}; factors: {', '.join(factors) or 'none'}")
            _, labels = self._levels(snap, factor)
            mask &= np.array([lab == level for lab in labels], dtype=bool)
        frame = frame.filter(pl.Series(mask))
        best, final = f"best.{metric}", f"final.{metric}"
        so_far = self._so_far(snap, metric)
        frame = frame.join(so_far, on="index", how="left")
        shown: list[pl.Expr] = [pl.col(c) for c in TABLE_COLUMNS]
        # A running trial has no result: its best and latest values so far stand in (flagged).
        for name, col, fallback in (("best", best, "so_far_best"), ("final", final, "so_far_last")):
            result = pl.col(col) if col in frame.columns else pl.lit(None, pl.Float64)
            shown.append(
                pl.when(pl.col("status") == "running").then(pl.col(fallback)).otherwise(result).alias(name)
            )
        shown.append((pl.col("status") == "running").alias("provisional"))
        factor_cols = [f for f in factors.values() if f.column != "variant"]
        shown.extend(pl.col(f.column).alias(f"f:{f.name}") for f in factor_cols)
        shown.append(pl.col("error").str.split("\n").list.first().alias("error"))
        table = frame.select(shown)
        if sort not in table.columns:
            raise AnalysisError(f"cannot sort by {sort!r}; columns: {', '.join(table.columns)}")
        table = table.sort(sort, descending=descending, nulls_last=True, maintain_order=True)
        page = table.slice(max(0, offset), max(1, min(limit, 1000)))
        return {
            "metric": metric,
            "total": res.trials.height,
            "matched": table.height,
            "offset": offset,
            "columns": page.columns,
            "rows": _clean_rows(page.to_dicts()),
        }

    def _so_far(self, snap: Snapshot, metric: str) -> pl.DataFrame:
        """Per running trial: the best (in the metric's direction) and the latest value of
        ``metric`` in its provisional history."""

        def make() -> pl.DataFrame:
            res = snap.results
            _, mode, _ = res.direction(metric)
            running = res.trials.filter(pl.col("status") == "running")["index"]
            hist = res.history.filter(pl.col("trial").is_in(running.implode()) & (pl.col("metric") == metric))
            best = pl.col("value").max() if mode == "max" else pl.col("value").min()
            return (
                hist.sort("trial", "step")
                .group_by("trial")
                .agg(best.alias("so_far_best"), pl.col("value").last().alias("so_far_last"))
                .rename({"trial": "index"})
            )

        return snap.cached(("so_far", metric), make)

    # -- learning curves -------------------------------------------------------------------
    def curves(self, metric: str | None = None, group: str = "") -> dict[str, Any]:
        """Learning curves of ``metric``: per level of factor ``group`` the mean over its trials
        at each step with a band of one standard deviation (seeds are the replicates); with
        ``group="trial"`` one line per trial (running trials first, then the best)."""
        snap = self.require()
        res = snap.results
        metric = metric or res.metric
        factors = {f.name: f for f in self.factors(snap)}
        if not group:
            group = next(iter(factors), "trial")
        if group != "trial" and group not in factors:
            raise AnalysisError(
                f"cannot group curves by {group!r}; choose 'trial' or a factor: {', '.join(factors)}"
            )
        return snap.cached(
            ("curves", metric, group), lambda: self._curves_of(snap, metric, group, factors.get(group))
        )

    def _curves_of(self, snap: Snapshot, metric: str, group: str, factor: Factor | None) -> dict[str, Any]:
        res = snap.results
        hist = res.history.filter(pl.col("metric") == metric).select("trial", "step", "value")
        lines: list[dict[str, Any]] = []
        if factor is None:
            running = res.trials.filter(pl.col("status") == "running")["index"].to_list()
            best = res.best(MAX_LINES, metric)["index"].to_list() if metric in res.metrics else []
            chosen = list(dict.fromkeys([*running, *best]))[:MAX_LINES]
            if len(chosen) < MAX_LINES:
                rest = hist["trial"].unique().sort().to_list()
                chosen += [t for t in rest if t not in chosen][: MAX_LINES - len(chosen)]
            status = dict(zip(res.trials["index"].to_list(), res.trials["status"].to_list(), strict=True))
            for t in chosen:
                part = hist.filter(pl.col("trial") == t).sort("step")
                steps, values = _thin(part["step"].to_list(), part["value"].to_list())
                lines.append(
                    {"label": f"#{t}", "trial": t, "status": status.get(t), "steps": steps, "mean": values}
                )
            return {"metric": metric, "group": group, "lines": lines}
        order, labels = self._levels(snap, factor)
        level_of = pl.DataFrame(
            {"trial": res.trials["index"], "level": pl.Series(labels, dtype=pl.String)}
        ).drop_nulls()
        agg = (
            hist.join(level_of, on="trial", how="inner")
            .group_by("level", "step")
            .agg(
                pl.col("value").mean().alias("mean"),
                pl.col("value").std().alias("std"),
                pl.col("value").count().alias("n"),
            )
            .sort("level", "step")
        )
        trials_per_level = level_of.join(hist.select("trial").unique(), on="trial").group_by("level").len()
        n_trials = dict(trials_per_level.iter_rows())
        for level in order[:MAX_LINES]:
            part = agg.filter(pl.col("level") == level)
            if not part.height:
                continue
            steps, mean = _thin(part["step"].to_list(), part["mean"].to_list())
            _, std = _thin(part["step"].to_list(), part["std"].to_list())
            _, n = _thin(part["step"].to_list(), part["n"].to_list())
            lo = [None if s is None or m is None else m - s for m, s in zip(mean, std, strict=True)]
            hi = [None if s is None or m is None else m + s for m, s in zip(mean, std, strict=True)]
            lines.append(
                {
                    "label": level,
                    "trials": n_trials.get(level, 0),
                    "steps": steps,
                    "mean": mean,
                    "lo": lo,
                    "hi": hi,
                    "n": n,
                }
            )
        return {"metric": metric, "group": group, "lines": _clean_rows(lines)}

    # -- effects -----------------------------------------------------------------------------
    def effects(
        self, metric: str | None = None, *, value: str = "best", adjust: str = "holm"
    ) -> dict[str, Any]:
        """``Results.effects(metric, value=..., adjust=...).to_dict()``: the numbers ``ablator
        analyze --metric M --value V --adjust A`` prints (AnalysisError for a bad choice)."""
        snap = self.require()
        metric = metric or snap.results.metric

        def make() -> dict[str, Any]:
            eff = snap.results.effects(metric, value=value, adjust=adjust)
            return {"ablation": snap.results.design.get("kind") == "ablation", **eff.to_dict()}

        return snap.cached(("effects", metric, value, adjust), make)


class NotReady(AblatorError):
    """No read of the store has succeeded yet."""


def _fingerprint(res: Results, agents: list[dict[str, Any]]) -> str:
    """Changes when anything a page shows changes (a row, a history row, an agent)."""
    rows = int(res.trials.hash_rows().sum() or 0) if res.trials.height else 0
    tail = res.history.tail(1).rows() if res.history.height else []
    beats = tuple((a["agent_id"], a["state"], tuple(map(tuple, a.get("held", [])))) for a in agents)
    return f"{res.trials.height}-{rows:x}-{res.history.height}-{hash((tuple(tail), beats)) & 0xFFFFFFFF:x}"


def _thin(steps: list[Any], values: list[Any]) -> tuple[list[Any], list[Any]]:
    """At most MAX_POINTS evenly spaced points, always keeping the last (the newest step)."""
    n = len(steps)
    if n <= MAX_POINTS:
        return steps, values
    keep = sorted({round(i * (n - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)})
    return [steps[i] for i in keep], [values[i] for i in keep]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if isinstance(v, list):
                v = [_clean(x) for x in v]
            clean[k] = _clean(v)
        out.append(clean)
    return out


__all__ = ["NotReady", "Snapshot", "StoreView"]
