"""What each factor does to the metric, with honest uncertainty.

A *factor* is an ablation's variant (levels: the baseline and each variant) or a searched config
path (levels: its values; a continuous range is cut into quantile bins). Repeats over seeds are
the replicates. Per level: n, mean, standard deviation and the t interval of the mean; its
difference from the reference level (the baseline; for a searched path the base config's value
when it is one of the levels, else the best level) with its interval and two-sided p-value: the
paired t-test when the two levels ran the same seeds (common random numbers, the default of
ablation designs), else Welch's; Hedges' g with its interval; the relative change; the level's
rank (1 = best, direction-aware). Numeric factors also get Spearman's rank correlation with the
metric and a least-squares trend (against log10 of the value when the space was log).

Every p-value the tables print is one *comparison*; they are adjusted together (Holm by
default, Benjamini-Hochberg on request) and a level's verdict (better / worse / unclear) follows
the adjusted p-value. Below 3 trials on either side there is no verdict, and the ``note`` says why.

Only trials whose result status is in ``statuses`` (completed and early-stopped by default) and
whose value is finite count; ``n_excluded`` says how many other finished trials of the level
(failed, diverged, pruned, non-finite) were left out, so that a variant that often diverges does
not hide behind its survivors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from ablator.analysis import stats, text
from ablator.analysis.reader import DONE_STATUSES
from ablator.analysis.stats import Adjust
from ablator.errors import AnalysisError

if TYPE_CHECKING:  # for annotations only: results calls back into effects (Results.effects)
    from ablator.analysis.results import Mode, Results, Value

FactorKind = Literal["variant", "categorical", "numeric"]
#: A numeric range with more distinct values than this is cut into quantile bins.
MAX_LEVELS = 8

LEVEL_SCHEMA: dict[str, pl.DataType] = {
    "factor": pl.String(),
    "kind": pl.String(),
    "level": pl.String(),
    "reference": pl.Boolean(),
    "vs": pl.String(),  # what ``diff`` compares with: "baseline" or "best"
    "n": pl.Int64(),
    "n_excluded": pl.Int64(),
    "mean": pl.Float64(),
    "std": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "diff": pl.Float64(),
    "diff_ci_low": pl.Float64(),
    "diff_ci_high": pl.Float64(),
    "rel_change": pl.Float64(),
    "test": pl.String(),  # "paired" (same seeds on both sides) or "welch"
    "n_pairs": pl.Int64(),
    "p_value": pl.Float64(),
    "p_adjusted": pl.Float64(),
    "hedges_g": pl.Float64(),
    "g_ci_low": pl.Float64(),
    "g_ci_high": pl.Float64(),
    "rank": pl.Int64(),
    "better": pl.Boolean(),  # the mean beats the reference's in the metric's direction
    "verdict": pl.String(),  # "better" | "worse" | "unclear" by the adjusted p; null: none given
    "note": pl.String(),  # why there is no verdict or no test
}
TREND_SCHEMA: dict[str, pl.DataType] = {
    "factor": pl.String(),
    "n": pl.Int64(),
    "spearman_rho": pl.Float64(),
    "spearman_p": pl.Float64(),
    "spearman_p_adjusted": pl.Float64(),
    "spearman_exact": pl.Boolean(),
    "x_scale": pl.String(),  # "log10" or "linear": what ``slope`` is per unit of
    "slope": pl.Float64(),
    "slope_ci_low": pl.Float64(),
    "slope_ci_high": pl.Float64(),
    "slope_p": pl.Float64(),
    "intercept": pl.Float64(),
    "note": pl.String(),
}


@dataclass(frozen=True)
class Factor:
    """One thing the experiment varied."""

    name: str  # "variant" or a dotted config path
    column: str  # its column in ``Results.trials``
    kind: FactorKind
    numeric: bool = False  # numbers: a rank correlation and a trend are computed
    log: bool = False  # the space was log-scaled
    levels: tuple[Any, ...] | None = None  # declared levels in order (choices, variants)
    baseline: Any = None  # the reference level's value (the base config's), None if none
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> its overrides


def format_level(value: Any) -> str:
    """A level as text: ``true``, ``0.001``, ``relu``, ``[64, 64]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return str(value)


def _lookup(data: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _space_spec(spec: Any) -> tuple[str, tuple[Any, ...] | None, bool]:
    """(kind, declared levels, log) of one space entry; kind is "categorical", "numeric" or
    "unknown" (infer from the values)."""
    if isinstance(spec, list):
        return "categorical", tuple(spec), False
    if isinstance(spec, dict):
        for key in ("choice", "choices", "values"):
            if isinstance(spec.get(key), list):
                return "categorical", tuple(spec[key]), bool(spec.get("log"))
        if any(k in spec for k in ("range", "low", "high", "min", "max")):
            return "numeric", None, bool(spec.get("log"))
    return "unknown", None, False


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and dtype != pl.Boolean


def factors_of(res: Results) -> list[Factor]:
    """The factors of ``res``'s design: ``variant`` for an ablation, else one per space path
    (a path whose value is a sub-config, as in a conditional space, gives one per leaf)."""
    design = res.design
    trials = res.trials
    if design.get("kind") == "ablation":
        ablations = dict(design.get("ablations") or {})
        return [
            Factor(
                "variant",
                "variant",
                "variant",
                levels=("baseline", *ablations),
                baseline="baseline",
                overrides={str(k): dict(v or {}) for k, v in ablations.items()},
            )
        ]
    base = res.experiment.get("config") or {}
    out: list[Factor] = []
    space = dict(design.get("space") or {})
    if not space:  # no declared space (e.g. a hand-made store): what varies is what was searched
        space = {p: None for p, c in res.config_columns.items() if trials[c].drop_nulls().n_unique() > 1}
    for path, spec in space.items():
        kind, levels, log = _space_spec(spec)
        if path in res.config_columns:
            leaves = [(path, kind, levels, log)]
        else:
            leaves = [(p, "unknown", None, log) for p in res.config_columns if p.startswith(path + ".")]
        for leaf, leaf_kind, leaf_levels, leaf_log in leaves:
            column = res.config_columns[leaf]
            dtype = trials[column].dtype
            numeric = _is_numeric(dtype)
            if leaf_kind == "unknown":
                distinct = trials[column].drop_nulls().n_unique()
                leaf_kind = "numeric" if numeric and distinct > MAX_LEVELS else "categorical"
            found, base_value = _lookup(base, leaf)
            out.append(
                Factor(
                    leaf,
                    column,
                    "numeric" if leaf_kind == "numeric" and numeric else "categorical",
                    numeric=numeric,
                    log=leaf_log,
                    levels=leaf_levels,
                    baseline=base_value if found else None,
                )
            )
    return out


@dataclass(frozen=True)
class Levels:
    """Trials assigned to a factor's levels: ``labels[i]`` is trial row i's level (None: none)."""

    order: list[str]
    labels: list[str | None]
    baseline: str | None


def assign_levels(trials: pl.DataFrame, factor: Factor, usable: np.ndarray | None = None) -> Levels:
    """Each trial's level of ``factor``, and the levels in display order: declared order (the
    baseline first for variants), ascending numbers, or quantile bins of a wide numeric range
    (bin edges from the ``usable`` trials' values)."""
    column = trials[factor.column]
    baseline = format_level(factor.baseline) if factor.baseline is not None else None
    if factor.kind == "numeric":
        xs = column.cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=False)
        present = np.isfinite(xs)
        finite = present if usable is None else (present & usable)
        distinct = np.unique(xs[finite])
        if distinct.size <= MAX_LEVELS:
            names = {float(v): format_level(float(v)) for v in distinct.tolist()}
            labels = [
                names.get(x) or format_level(x) if ok else None
                for x, ok in zip(xs.tolist(), present.tolist(), strict=True)
            ]
            order = list(names.values())
            return Levels(order, labels, baseline if baseline in order else None)
        n_bins = int(min(5, max(2, round(math.sqrt(int(finite.sum())) / 2))))
        edges = np.unique(np.quantile(xs[finite], np.linspace(0.0, 1.0, n_bins + 1)))
        bins = [
            f"[{edges[b]:.3g}, {edges[b + 1]:.3g}{']' if b == edges.size - 2 else ')'}"
            for b in range(edges.size - 1)
        ]
        where = np.searchsorted(edges[1:-1], xs, side="right")
        labels = [bins[w] if ok else None for w, ok in zip(where.tolist(), present.tolist(), strict=True)]
        return Levels(bins, labels, None)
    seen_labels: dict[Any, str] = {}
    labels = []
    for v in column.to_list():
        if v is None:
            labels.append(None)
            continue
        try:
            label = seen_labels.get(v)
            if label is None:
                label = seen_labels[v] = format_level(v)
        except TypeError:  # unhashable (a list-valued config): format each
            label = format_level(v)
        labels.append(label)
    seen = [format_level(v) for v in factor.levels] if factor.levels is not None else []
    extra = sorted({lab for lab in labels if lab is not None} - set(seen))
    if factor.numeric:
        extra = sorted(extra, key=lambda s: float(s) if _floaty(s) else math.inf)
    order = seen + extra
    if factor.kind == "variant" and "baseline" in order:
        order = ["baseline", *(o for o in order if o != "baseline")]
    return Levels(order, labels, baseline if baseline in order else None)


def _floaty(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Effects:
    """The output of :func:`compute_effects` (and :meth:`Results.effects`).

    ``levels``: one row per (factor, level): ``factor``, ``kind``, ``level``, ``reference``,
    ``vs`` (``baseline`` or ``best``), ``n``, ``n_excluded``, ``mean``, ``std``, ``ci_low``,
    ``ci_high``, ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``rel_change``, ``test``
    (``paired`` or ``welch``), ``n_pairs``, ``p_value`` (raw), ``p_adjusted`` (by ``adjust``
    over all ``n_comparisons``), ``hedges_g``, ``g_ci_low``, ``g_ci_high``, ``rank`` (1 = best),
    ``better`` (the mean beats the reference's), ``verdict`` (``better``/``worse`` when the
    adjusted p is below 1 - confidence, else ``unclear``; null with a ``note`` when the level or
    its reference has fewer than 3 trials).
    ``trends``: one row per numeric factor: ``spearman_rho``, ``spearman_p`` (exact for small n),
    ``spearman_p_adjusted``, ``spearman_exact``, ``x_scale``, ``slope`` (metric change per unit of
    x, or per decade when ``x_scale`` is log10) with its interval and p-value, ``intercept``,
    ``note``.
    """

    metric: str
    mode: Mode
    mode_source: str
    value: Value
    confidence: float
    statuses: tuple[str, ...]
    factors: tuple[Factor, ...]
    levels: pl.DataFrame
    trends: pl.DataFrame
    n_used: int
    n_finished: int
    adjust: Adjust = "holm"
    n_comparisons: int = 0

    @property
    def alpha(self) -> float:
        """The significance level that goes with ``confidence``."""
        return 1.0 - self.confidence

    def factor(self, name: str) -> pl.DataFrame:
        """The level rows of factor ``name``."""
        if name not in {f.name for f in self.factors}:
            raise AnalysisError(
                f"no factor {name!r}; factors: {', '.join(f.name for f in self.factors) or 'none'}"
            )
        return self.levels.filter(pl.col("factor") == name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready; NaN and infinities as null)."""

        def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in rows
            ]

        return {
            "metric": self.metric,
            "mode": self.mode,
            "mode_source": self.mode_source,
            "value": self.value,
            "confidence": self.confidence,
            "adjust": self.adjust,
            "n_comparisons": self.n_comparisons,
            "statuses": list(self.statuses),
            "n_used": self.n_used,
            "n_finished": self.n_finished,
            "factors": [
                {"name": f.name, "column": f.column, "kind": f.kind, "numeric": f.numeric, "log": f.log}
                for f in self.factors
            ],
            "levels": clean(self.levels.to_dicts()),
            "trends": clean(self.trends.to_dicts()),
        }

    def render(self) -> str:
        """The tables as plain text for a terminal."""
        return text.render_effects(self)


def _pairs(
    seeds: np.ndarray, values: np.ndarray, level: np.ndarray, ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | str | None:
    """Values of ``level`` and ``ref`` aligned by seed when the two ran exactly the same seeds,
    each once (common random numbers); else None, or a note when they pair only in part."""
    a_seeds, b_seeds = seeds[level], seeds[ref]
    if a_seeds.size < 2 or b_seeds.size < 2 or np.any(a_seeds < 0) or np.any(b_seeds < 0):
        return None
    if np.unique(a_seeds).size != a_seeds.size or np.unique(b_seeds).size != b_seeds.size:
        return None  # a seed used twice on one side (a search's points): nothing to pair by
    common = np.intersect1d(a_seeds, b_seeds)
    if common.size == 0:
        return None
    if common.size != a_seeds.size or common.size != b_seeds.size:
        return f"seeds pair for {common.size} of {max(a_seeds.size, b_seeds.size)} trials: Welch's test"
    a_order = np.argsort(a_seeds, kind="stable")
    b_order = np.argsort(b_seeds, kind="stable")
    return values[level][a_order], values[ref][b_order]


def _compare(
    values: np.ndarray,
    seeds: np.ndarray,
    level: np.ndarray,
    ref: np.ndarray,
    confidence: float,
    paired: bool,
) -> tuple[dict[str, Any], bool]:
    """The test columns of one level against its reference (see ``LEVEL_SCHEMA``), and whether
    a verdict may be given."""
    a, b = values[level], values[ref]
    out: dict[str, Any] = {}
    notes: list[str] = []
    pairs = _pairs(seeds, values, level, ref) if paired else None
    if isinstance(pairs, tuple):
        comp = stats.paired(pairs[0], pairs[1], confidence)
        g = stats.hedges_g(pairs[0], pairs[1], pairs=True, confidence=confidence)
        out["n_pairs"] = int(pairs[0].size)
    else:
        if isinstance(pairs, str):
            notes.append(pairs)
        comp = stats.welch(a, b, confidence)
        g = stats.hedges_g(a, b, confidence=confidence)
    if comp is not None:
        out.update(test=comp.test, diff_ci_low=comp.ci_low, diff_ci_high=comp.ci_high, p_value=comp.p_value)
        if comp.p_value is None:
            notes.append("no spread on either side: no test")
    else:
        notes.append("fewer than 2 trials on a side: no test")
    if g is not None:
        out.update(hedges_g=g.g, g_ci_low=g.ci_low, g_ci_high=g.ci_high)
    verdict = comp is not None and comp.p_value is not None
    if verdict and min(a.size, b.size) < stats.MIN_N:
        verdict = False
        notes.append(f"n = {min(a.size, b.size)} < {stats.MIN_N} on a side: too few seeds for a verdict")
    if notes:
        out["note"] = "; ".join(notes)
    return out, verdict


def compute_effects(
    res: Results,
    metric: str | None = None,
    *,
    mode: Mode | None = None,
    value: Value = "best",
    statuses: Sequence[str] = ("completed", "early_stopped"),
    confidence: float = 0.95,
    adjust: Adjust = "holm",
    paired: bool = True,
) -> Effects:
    """Per factor and level: n, mean, std, CI, difference from the baseline (or the best
    level) with its interval and test, raw and adjusted p-values, Hedges' g, rank and verdict;
    for numeric factors Spearman's rho and a trend. See the module docstring.

    ``value``: each trial's ``best`` value of the metric or its ``final`` one. ``adjust``:
    ``"holm"`` (family-wise error, the default) or ``"bh"`` (Benjamini-Hochberg false discovery
    rate) over every p-value of the tables. ``paired=False`` uses Welch's test even where the
    seeds pair."""
    if not 0.0 < confidence < 1.0:
        raise AnalysisError(f"confidence must be between 0 and 1, got {confidence}")
    if value not in ("best", "final"):
        raise AnalysisError(f"value must be 'best' or 'final', got {value!r}")
    if adjust not in ("holm", "bh"):
        raise AnalysisError(f"adjust must be 'holm' or 'bh', got {adjust!r}")
    metric, mode, mode_source = res.direction(metric, mode)
    trials = res.trials
    finished_mask = trials["status"].is_in([*DONE_STATUSES, "failed"]).to_numpy()
    if metric not in res.metrics and bool(trials["status"].is_in(list(DONE_STATUSES)).any()):
        raise AnalysisError(
            f"no trial of {res.url} reported metric {metric!r}; metrics: {', '.join(res.metrics) or 'none'}"
        )
    values = res.values(metric, value).cast(pl.Float64).to_numpy().astype(np.float64, copy=False)
    usable = trials["status"].is_in(list(statuses)).to_numpy() & np.isfinite(
        np.nan_to_num(values, nan=np.inf)
    )
    seeds = trials["seed"].fill_null(-1).cast(pl.Int64).to_numpy()
    sign = 1.0 if mode == "max" else -1.0

    alpha = 1.0 - confidence
    level_rows: list[dict[str, Any]] = []
    judged: set[int] = set()  # level rows that may get a verdict
    trend_rows: list[dict[str, Any]] = []
    factors = factors_of(res)
    for factor in factors:
        lv = assign_levels(trials, factor, usable)
        labels = np.array(lv.labels, dtype=object)
        masks = {name: usable & (labels == name) for name in lv.order}
        per_level = {name: values[m] for name, m in masks.items()}
        excluded = {name: int((finished_mask & ~usable & (labels == name)).sum()) for name in lv.order}
        summaries = {name: stats.summarize(v, confidence) for name, v in per_level.items()}
        with_data = [name for name in lv.order if summaries[name].n > 0]
        # Rank by mean in the metric's direction; ties share the better rank.
        ordered = sorted(with_data, key=lambda name: -sign * float(summaries[name].mean or 0.0))
        ranks: dict[str, int] = {}
        for pos, name in enumerate(ordered):
            prev = ordered[pos - 1] if pos else None
            same = prev is not None and summaries[prev].mean == summaries[name].mean
            ranks[name] = ranks[prev] if same and prev is not None else pos + 1
        if lv.baseline is not None and summaries[lv.baseline].n > 0:
            ref, vs = lv.baseline, "baseline"
        elif ordered:
            ref, vs = ordered[0], "best"
        else:
            ref, vs = None, "best"
        ref_mean = summaries[ref].mean if ref is not None else None
        for name in lv.order:
            s = summaries[name]
            row: dict[str, Any] = {
                "factor": factor.name,
                "kind": factor.kind,
                "level": name,
                "reference": name == ref,
                "vs": vs,
                "n": s.n,
                "n_excluded": excluded[name],
                "mean": s.mean,
                "std": s.std,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "rank": ranks.get(name),
            }
            if name == ref:
                row.update(diff=0.0, rel_change=0.0)
            elif s.mean is not None and ref_mean is not None and ref is not None:
                cols, verdict = _compare(values, seeds, masks[name], masks[ref], confidence, paired)
                row.update(cols)
                if verdict:
                    judged.add(len(level_rows))
                diff = s.mean - ref_mean
                row.update(
                    diff=diff,
                    rel_change=diff / abs(ref_mean) if ref_mean != 0 else None,
                    better=sign * diff > 0,
                )
            level_rows.append(row)
        if factor.numeric:
            trend_rows.append(_trend_row(trials, factor, values, usable, confidence, alpha))

    # One family: every p-value the tables print (level differences and rank correlations).
    raw = [r.get("p_value") for r in level_rows] + [r.get("spearman_p") for r in trend_rows]
    adjusted = stats.adjust(raw, adjust)
    n_comparisons = int(np.count_nonzero(~np.isnan(adjusted)))
    for k, (row, p_adj) in enumerate(zip(level_rows, adjusted[: len(level_rows)].tolist(), strict=True)):
        if math.isnan(p_adj):
            continue
        row["p_adjusted"] = p_adj
        if k in judged:
            row["verdict"] = ("better" if row["better"] else "worse") if p_adj < alpha else "unclear"
    for row, p_adj in zip(trend_rows, adjusted[len(level_rows) :].tolist(), strict=True):
        if not math.isnan(p_adj):
            row["spearman_p_adjusted"] = p_adj

    n_finished = int(trials["status"].is_in([*DONE_STATUSES, "failed"]).sum())
    return Effects(
        metric=metric,
        mode=mode,
        mode_source=mode_source,
        value=value,
        confidence=confidence,
        statuses=tuple(statuses),
        factors=tuple(factors),
        levels=pl.DataFrame(level_rows, schema=LEVEL_SCHEMA, strict=False)
        if level_rows
        else pl.DataFrame(schema=LEVEL_SCHEMA),
        trends=pl.DataFrame(trend_rows, schema=TREND_SCHEMA, strict=False)
        if trend_rows
        else pl.DataFrame(schema=TREND_SCHEMA),
        n_used=int(usable.sum()),
        n_finished=n_finished,
        adjust=adjust,
        n_comparisons=n_comparisons,
    )


def factor_xy(
    trials: pl.DataFrame, factor: Factor, values: np.ndarray, usable: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The (x, metric) pairs of a numeric factor's usable trials."""
    xs = trials[factor.column].cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=False)
    keep = usable & np.isfinite(xs)
    return xs[keep], values[keep]


def _trend_row(
    trials: pl.DataFrame,
    factor: Factor,
    values: np.ndarray,
    usable: np.ndarray,
    confidence: float,
    alpha: float,
) -> dict[str, Any]:
    x, y = factor_xy(trials, factor, values, usable)
    row: dict[str, Any] = {"factor": factor.name, "n": int(x.size)}
    corr = stats.spearman(x, y)
    distinct = int(np.unique(x).size)
    if corr is not None:
        row.update(spearman_rho=corr.rho, spearman_p=corr.p_value, spearman_exact=corr.exact)
        if corr.min_p is not None and corr.min_p >= alpha:
            row["note"] = (
                f"n = {corr.n}: the exact rank test cannot go below p = {corr.min_p:.2g}, so it cannot "
                f"show a trend at {alpha:g}"
            )
    elif distinct < 3:
        row["note"] = f"{distinct} distinct value(s): a rank correlation needs at least 3"
    log = factor.log and x.size > 0 and bool(np.all(x > 0))
    row["x_scale"] = "log10" if log else "linear"
    fit = stats.trend(np.log10(x) if log else x, y, confidence)
    if fit is not None:
        row.update(
            slope=fit.slope,
            slope_ci_low=fit.ci_low,
            slope_ci_high=fit.ci_high,
            slope_p=fit.p_value,
            intercept=fit.intercept,
        )
    return row


__all__ = ["Effects", "Factor", "Levels", "assign_levels", "compute_effects", "factors_of", "format_level"]
