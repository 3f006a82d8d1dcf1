"""Figures of an experiment, drawn with matplotlib's Agg canvas (no pyplot, no display, no global
state: safe in threads, on headless machines and inside notebooks alike).

Each function returns a :class:`matplotlib.figure.Figure` (or None when there is nothing to draw);
:func:`write_figures` saves all of them as PNG files.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ablator.analysis import stats, text
from ablator.analysis.effects import Effects, Factor, assign_levels, factor_xy
from ablator.analysis.results import Results

REFERENCE = "#f28e2b"
LEVEL = "#4e79a7"
BETTER = "#59a14f"
WORSE = "#e15759"
NEUTRAL = "#9c9c9c"
BEST = "#b07aa1"
NO_VERDICT = "#ffffff"  # hatched grey: too few seeds to judge
#: Learning-curve colours: one per level, none repeated (tab10 holds 10; at most 8 are drawn).
PALETTE = "tab10"
MAX_CURVES = 8
DPI = 110


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: its file, a title and a one-line caption for reports."""

    name: str
    path: Path
    title: str
    caption: str
    factor: str | None = None


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _better(effects: Effects) -> str:
    return "higher is better" if effects.mode == "max" else "lower is better"


def _ylabel(effects: Effects) -> str:
    return f"{effects.metric} ({effects.value} of each trial; {_better(effects)})"


def _usable(res: Results, effects: Effects) -> tuple[np.ndarray, np.ndarray]:
    values = (
        res.values(effects.metric, effects.value).cast(pl.Float64).to_numpy().astype(np.float64, copy=False)
    )
    ok = res.trials["status"].is_in(list(effects.statuses)).to_numpy() & np.isfinite(
        np.nan_to_num(values, nan=np.inf)
    )
    return values, ok


def _best_index(values: np.ndarray, mask: np.ndarray, mode: str) -> int | None:
    if not mask.any():
        return None
    candidates = np.flatnonzero(mask)
    pick = np.argmax(values[candidates]) if mode == "max" else np.argmin(values[candidates])
    return int(candidates[pick])


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def level_label(factor: Factor, level: str) -> str:
    """How a level is named in legends: ``dropout=0`` for a searched path (its last part; the
    full path is in the title), the variant's own name for an ablation."""
    if factor.kind == "variant":
        return level
    return f"{factor.name.rsplit('.', 1)[-1]}={level}"


def _bounds_note(bounds: tuple[float, float, str] | None) -> str:
    if bounds is None:
        return ""
    lo, hi, source = bounds
    how = "the experiment's metric.bounds" if source == "experiment" else "guessed from the metric's name"
    return f"bands clipped to [{lo:g}, {hi:g}] ({how})"


def categorical_figure(res: Results, effects: Effects, factor: Factor) -> Figure | None:
    """Box (or violin, with many points) per level with every trial as a point; the reference
    level in orange with a dashed line at its mean; each level's mean marked and labelled; the
    best trial starred."""
    values, usable = _usable(res, effects)
    lv = assign_levels(res.trials, factor, usable)
    labels = np.array(lv.labels, dtype=object)
    rows = {r["level"]: r for r in effects.factor(factor.name).to_dicts()}
    order = [name for name in lv.order if rows.get(name, {}).get("n")]
    if not order:
        return None
    data = [values[usable & (labels == name)] for name in order]
    fig = _figure(max(6.0, 1.15 * len(order) + 2.5), 4.8)
    ax = fig.add_subplot()
    positions = np.arange(1, len(order) + 1)
    ref = next((name for name in order if rows[name]["reference"]), None)
    colors = [REFERENCE if name == ref else LEVEL for name in order]
    if max(d.size for d in data) >= 8:
        parts = ax.violinplot(data, positions=positions, widths=0.7, showextrema=False)
        bodies: list[Any] = parts["bodies"]  # type: ignore[assignment]  # typed as a bare Collection
        for body, color in zip(bodies, colors, strict=True):
            body.set_facecolor(color)
            body.set_alpha(0.25)
    boxes = ax.boxplot(
        data,
        positions=positions,
        widths=0.45,
        patch_artist=True,
        showfliers=False,
        medianprops={"color": "black", "linewidth": 1},
    )
    for patch, color in zip(boxes["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.35)
    rng = np.random.default_rng(0)  # fixed jitter: the same store draws the same figure
    for pos, d, color in zip(positions, data, colors, strict=True):
        ax.scatter(pos + rng.uniform(-0.12, 0.12, d.size), d, s=18, color=color, alpha=0.85, zorder=3)
    means = [float(rows[name]["mean"]) for name in order]
    ax.scatter(positions, means, marker="D", s=36, color="black", zorder=4, label="mean")
    spread = float(np.nanmax(np.concatenate(data)) - np.nanmin(np.concatenate(data))) or 1.0
    for pos, mean in zip(positions, means, strict=True):
        ax.annotate(
            f"{mean:.4g}",
            (pos, mean),
            xytext=(14, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            zorder=5,
        )
    if ref is not None:
        ax.axhline(
            float(rows[ref]["mean"]),
            color=REFERENCE,
            linestyle="--",
            linewidth=1,
            label=f"{level_label(factor, ref)}: mean (reference)",
        )
    mask = usable & np.isin(labels, order)
    best = _best_index(values, mask, effects.mode)
    if best is not None:
        bx = positions[order.index(str(labels[best]))]
        ax.scatter(
            [bx],
            [values[best]],
            marker="*",
            s=180,
            color=BEST,
            edgecolor="black",
            zorder=6,
            label="best trial",
        )
        ax.annotate(
            f"best {values[best]:.4g} (#{res.trials['index'][best]})",
            (bx, values[best]),
            xytext=(0, 10 if effects.mode == "max" else -14),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ticks = []
    for name in order:
        tag = ""
        if name == ref and name != "baseline":
            tag = "\n(baseline)" if rows[name]["vs"] == "baseline" else "\n(best level)"
        ticks.append(f"{_short(name)}{tag}\nn={rows[name]['n']}")
    ax.set_xticks(positions, ticks, rotation=30 if len(order) > 6 else 0, fontsize=8)
    ax.set_xlim(0.4, len(order) + 0.8)
    lo = float(np.nanmin(np.concatenate(data)))
    hi = float(np.nanmax(np.concatenate(data)))
    ax.set_ylim(lo - 0.12 * spread, hi + 0.18 * spread)
    ax.set_xlabel(factor.name)
    ax.set_ylabel(_ylabel(effects), fontsize=9)
    ax.set_title(f"{effects.metric} by {factor.name}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def numeric_figure(res: Results, effects: Effects, factor: Factor) -> Figure | None:
    """Every trial as a point against the factor's value, the least-squares trend (against
    log10 of the value on a log axis when the space was log) and Spearman's rho."""
    values, usable = _usable(res, effects)
    x, y = factor_xy(res.trials, factor, values, usable)
    if x.size == 0:
        return None
    fig = _figure(6.5, 4.6)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=18, color=LEVEL, alpha=0.7, label="trial")
    log = factor.log and bool(np.all(x > 0))
    if log:
        ax.set_xscale("log")
    fit = stats.trend(np.log10(x) if log else x, y)
    # The trend table's numbers, so that figure and table print the same p-values.
    trend = next((r for r in effects.trends.to_dicts() if r["factor"] == factor.name), None)
    notes = []
    if fit is not None:
        grid = np.linspace(float(x.min()), float(x.max()), 100)
        if log:
            grid = np.logspace(math.log10(float(x.min())), math.log10(float(x.max())), 100)
        line = fit.intercept + fit.slope * (np.log10(grid) if log else grid)
        ax.plot(grid, line, color=REFERENCE, linewidth=2, label="trend")
        notes.append(f"slope {fit.slope:+.3g} per {'decade' if log else 'unit'}")
    if trend is not None and trend.get("spearman_rho") is not None:
        raw, adj = text.pval(trend["spearman_p"]), text.pval(trend.get("spearman_p_adjusted"))
        notes.append(
            f"Spearman rho = {trend['spearman_rho']:.3g} "
            f"(p {raw if raw.startswith('<') else '= ' + raw}, {effects.adjust} {adj})"
        )
    best = _best_index(y, np.ones(y.size, dtype=bool), effects.mode)
    if best is not None:
        ax.scatter(
            [x[best]],
            [y[best]],
            marker="*",
            s=180,
            color=BEST,
            edgecolor="black",
            zorder=5,
            label="best trial",
        )
    if notes:
        ax.text(
            0.02,
            0.03 if effects.mode == "max" else 0.97,
            "\n".join(notes),
            transform=ax.transAxes,
            va="bottom" if effects.mode == "max" else "top",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
        )
    ax.set_xlabel(factor.name + (" (log scale)" if log else ""))
    ax.set_ylabel(_ylabel(effects), fontsize=9)
    ax.set_title(f"{effects.metric} against {factor.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def ablation_figure(effects: Effects, factor: Factor) -> Figure | None:
    """Each level's difference from the reference with its confidence interval, top to bottom in
    the table's order. The colour is the verdict of the adjusted p-value: green better, red
    worse, grey unclear, hatched white no verdict (fewer than 3 trials on a side). The axis is
    scaled to the differences; an interval that runs far past them is cut at the edge and
    marked with an arrow. Each label prints the same p-values as the table."""
    table = effects.factor(factor.name).to_dicts()
    rows = [r for r in table if not r["reference"] and r["diff"] is not None]
    ref = next((r for r in table if r["reference"]), None)
    if not rows or ref is None:
        return None
    fig = _figure(8.5, 1.3 + 0.5 * len(rows))
    ax = fig.add_subplot()
    ys = np.arange(len(rows))[::-1]  # the table's first row on top
    diffs = np.array([r["diff"] for r in rows], dtype=np.float64)
    lows = np.array([np.nan if r["diff_ci_low"] is None else r["diff_ci_low"] for r in rows])
    highs = np.array([np.nan if r["diff_ci_high"] is None else r["diff_ci_high"] for r in rows])
    # Scale to the effects: the differences set the axis; intervals may widen it up to 3x the
    # largest difference (two seeds give t quantiles of 12.7, which would flatten every bar).
    reach = float(np.max(np.abs(diffs))) or float(np.nanmax(np.abs(np.concatenate([lows, highs, [1e-12]]))))
    limit = 3.0 * reach
    lo_edge = max(float(np.nanmin(np.concatenate([lows, diffs, [0.0]]))), -limit)
    hi_edge = min(float(np.nanmax(np.concatenate([highs, diffs, [0.0]]))), limit)
    pad = 0.06 * ((hi_edge - lo_edge) or 1.0)
    left, right = lo_edge - pad, hi_edge + pad
    colors, hatches = [], []
    for r in rows:
        verdict = r.get("verdict")
        colors.append({"better": BETTER, "worse": WORSE, "unclear": NEUTRAL}.get(verdict or "", NO_VERDICT))
        hatches.append("" if verdict else "///")
    bars = ax.barh(ys, diffs, color=colors, alpha=0.85, height=0.6, edgecolor=NEUTRAL, linewidth=1)
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    for y, lo, hi in zip(ys.tolist(), lows.tolist(), highs.tolist(), strict=True):
        if math.isnan(lo) or math.isnan(hi):
            continue  # no interval (fewer than two trials on a side): no bar at all, not a flat one
        a, b = max(lo, left), min(hi, right)
        ax.plot([a, b], [y, y], color="black", linewidth=1.2)
        for end, cut, marker in ((a, lo < left, "<"), (b, hi > right, ">")):
            if cut:
                ax.plot([end], [y], marker=marker, color="black", markersize=6)
            else:
                ax.plot([end, end], [y - 0.15, y + 0.15], color="black", linewidth=1.2)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlim(left, right)
    for y, r in zip(ys.tolist(), rows, strict=True):
        label = f"{r['diff']:+.3g}"
        if r["rel_change"] is not None:
            label += f" ({100 * r['rel_change']:+.1f}%)"
        label += f"; {text.p_label(r, effects.adjust)}"
        if r.get("verdict") is None and r.get("note"):
            label += "; no verdict: n < 3" if "too few seeds" in r["note"] else "; no verdict"
        # Labels live right of the axes, so the axis can be scaled to the effects alone.
        ax.annotate(
            label,
            (1.01, y),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=8,
            annotation_clip=False,
        )
    ax.set_yticks(ys, [f"{_short(r['level'], 24)} (n={r['n']})" for r in rows], fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    what = "baseline" if ref["vs"] == "baseline" else f"best level {ref['level']}"
    ax.set_xlabel(
        f"Δ {effects.metric} vs {what} (mean {ref['mean']:.4g}); {_better(effects)}; {effects.confidence:.0%} CI",
        fontsize=9,
    )
    ax.set_title(
        f"Effect of each {factor.name if factor.kind != 'variant' else 'variant'} ({effects.metric}); "
        f"colour: {text.ADJUST_NAMES.get(effects.adjust, effects.adjust)}-adjusted p over "
        f"{effects.n_comparisons} comparisons",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def curves_figure(res: Results, effects: Effects, factor: Factor) -> Figure | None:
    """The metric over steps, one line per level (mean across its trials, seeds included) with a
    band of one standard deviation, at most the 8 best levels. Every line has its own colour;
    the reference level is set apart by a dashed, thicker line. Bands are clipped to the
    metric's range when it is known (:meth:`Results.bounds`), and the figure says so."""
    if res.history.height == 0:
        return None
    hist = res.history.filter(pl.col("metric") == effects.metric)
    if hist.height == 0:
        return None
    _, usable = _usable(res, effects)
    lv = assign_levels(res.trials, factor, usable)
    level_of = pl.DataFrame(
        {"trial": res.trials["index"], "level": lv.labels, "usable": usable},
        schema={"trial": pl.Int64, "level": pl.String, "usable": pl.Boolean},
    ).filter(pl.col("usable") & pl.col("level").is_not_null())
    stepwise = (
        hist.select("trial", "step", "value")
        .join(level_of, on="trial", how="inner")
        .group_by("level", "step")
        .agg(pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"), pl.len().alias("n"))
        .sort("level", "step")
    )
    if stepwise.height == 0:
        return None
    table = effects.factor(factor.name)
    ranked = table.filter(pl.col("rank").is_not_null()).sort("rank")["level"].to_list()
    present = set(stepwise["level"].to_list())
    best = set([name for name in ranked if name in present][:MAX_CURVES])
    # Drawn in the table's order (and so the legend), the best MAX_CURVES levels only.
    shown = [name for name in table["level"].to_list() if name in best]
    ref = next((r["level"] for r in table.to_dicts() if r["reference"]), None)
    bounds = res.bounds(effects.metric)
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    palette = matplotlib.colormaps[PALETTE]
    counts = dict(level_of.group_by("level").len().iter_rows())
    for k, name in enumerate(shown):
        part = stepwise.filter(pl.col("level") == name)
        steps = part["step"].to_numpy()
        mean = part["mean"].to_numpy()
        std = np.nan_to_num(part["std"].to_numpy().astype(np.float64), nan=0.0)
        color = palette(k % palette.N)
        is_ref = name == ref
        ax.plot(
            steps,
            mean,
            color=color,
            linewidth=2.4 if is_ref else 1.4,
            linestyle="--" if is_ref else "-",
            # A curve of a few evaluations (or one) is invisible as a bare line: mark its points.
            marker="o" if len(steps) <= 20 else None,
            markersize=4,
            label=f"{_short(level_label(factor, name), 28)} (n={counts.get(name, 0)})"
            + (" reference" if is_ref else ""),
        )
        low, high = mean - std, mean + std
        if bounds is not None:
            low, high = np.clip(low, bounds[0], bounds[1]), np.clip(high, bounds[0], bounds[1])
        ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{effects.metric} ({_better(effects)})", fontsize=9)
    title = f"{effects.metric} during training by {factor.name}: mean ± 1 std across trials"
    if len(ranked) > len(shown):
        title += f" (best {len(shown)} of {len(ranked)} levels)"
    ax.set_title(title, fontsize=10)
    note = _bounds_note(bounds)
    if note:
        # Under the axes (right-aligned, below the "step" label), never inside them: there the
        # legend ("best" place) and the curves could cover it. The layout makes room for it.
        ax.annotate(
            note,
            xy=(1.0, 0.0),
            xycoords=("axes fraction", ax.xaxis.label),
            xytext=(0, -2),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=7,
            color="0.35",
            annotation_clip=False,
        )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def parallel_figure(res: Results, effects: Effects, k: int = 20) -> Figure | None:
    """Parallel coordinates of the ``k`` best trials over every searched factor and the metric
    (each axis scaled to the range of all finished trials; log axes in log10), each line
    coloured by its metric value with a colour bar; axes carry their full names."""
    factors = [f for f in effects.factors if f.kind != "variant"]
    if len(factors) < 2:
        return None
    values, usable = _usable(res, effects)
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return None
    order = idx[np.argsort(-values[idx] if effects.mode == "max" else values[idx], kind="stable")][:k]
    axes_data: list[tuple[str, np.ndarray, list[tuple[float, str]]]] = []
    for f in factors:
        raw = res.trials[f.column].to_list()
        if f.kind == "numeric":
            xs = np.array([np.nan if v is None else float(v) for v in raw], dtype=np.float64)
            log = f.log and bool(np.all(xs[usable] > 0))
            t = np.log10(xs) if log else xs
            lo, hi = float(np.nanmin(t[usable])), float(np.nanmax(t[usable]))
            scale = (t - lo) / (hi - lo) if hi > lo else np.full_like(t, 0.5)
            fmt = (lambda v: f"{10**v:.3g}") if log else (lambda v: f"{v:.3g}")
            ticks = [(0.0, fmt(lo)), (1.0, fmt(hi))] if hi > lo else [(0.5, fmt(lo))]
            name = f.name + (" (log)" if log else "")
        else:
            lv = assign_levels(res.trials, f, usable)
            names = lv.order
            pos = {n: (i / (len(names) - 1) if len(names) > 1 else 0.5) for i, n in enumerate(names)}
            scale = np.array([pos.get(lab, np.nan) if lab is not None else np.nan for lab in lv.labels])
            ticks = [(p, _short(n, 14)) for n, p in pos.items()]
            name = f.name
        axes_data.append((name, scale, ticks))
    vlo, vhi = float(values[idx].min()), float(values[idx].max())
    vscale = (values - vlo) / (vhi - vlo) if vhi > vlo else np.full_like(values, 0.5)
    axes_data.append((effects.metric, vscale, [(0.0, f"{vlo:.4g}"), (1.0, f"{vhi:.4g}")]))
    fig = _figure(max(8.0, 1.9 * len(axes_data)), 5.0)
    ax = fig.add_subplot()
    xs_axis = np.arange(len(axes_data))
    # Colour by the metric itself: bright is best in either direction.
    cmap = matplotlib.colormaps["viridis" if effects.mode == "max" else "viridis_r"]
    norm = Normalize(vmin=vlo, vmax=vhi if vhi > vlo else vlo + 1.0)
    for row in order[::-1]:  # best drawn last, on top
        ys = [a[1][row] for a in axes_data]
        ax.plot(
            xs_axis, ys, color=cmap(norm(values[row])), alpha=0.85, linewidth=1.6 if row == order[0] else 1.0
        )
    for x, (_name, _scale, ticks) in zip(xs_axis.tolist(), axes_data, strict=True):
        ax.axvline(x, color="0.4", linewidth=1)
        for p, label in ticks:
            ax.annotate(label, (x, p), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
    ax.set_xticks(xs_axis, [a[0] for a in axes_data], fontsize=8, rotation=15 if len(axes_data) > 4 else 0)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(axes_data) - 0.5)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
    bar.set_label(f"{effects.metric} ({_better(effects)})", fontsize=8)
    ax.set_title(f"Top {order.size} trials by {effects.metric} (bright = best)", fontsize=10)
    return fig


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "factor"


def figures(res: Results, effects: Effects) -> list[tuple[str, Figure, str, str, str | None]]:
    """Every figure of ``res``: (file name, figure, title, caption, factor)."""
    out: list[tuple[str, Figure, str, str, str | None]] = []
    for f in effects.factors:
        if f.kind == "variant":
            fig = ablation_figure(effects, f)
            if fig is not None:
                out.append(
                    (
                        "ablation.png",
                        fig,
                        "Ablation: difference from the baseline",
                        "Each variant's mean difference from the baseline with its confidence interval (paired "
                        "t where seeds pair, else Welch), in the table's order; colour by the adjusted p: "
                        "green better, red worse, grey unclear, hatched no verdict (fewer than 3 seeds).",
                        f.name,
                    )
                )
        name = slug(f.name)
        if f.kind == "numeric":
            fig = numeric_figure(res, effects, f)
            caption = "Each finished trial against the factor's value, with the least-squares trend."
        else:
            fig = categorical_figure(res, effects, f)
            caption = "Every finished trial as a point; boxes span the quartiles; diamonds mark means; the star the best trial."
        if fig is not None:
            out.append((f"factor-{name}.png", fig, f"{effects.metric} by {f.name}", caption, f.name))
        fig = curves_figure(res, effects, f)
        if fig is not None:
            out.append(
                (
                    f"curves-{name}.png",
                    fig,
                    f"Learning curves by {f.name}",
                    "Mean over the trials of each level (seeds are replicates), band: one standard deviation"
                    + (
                        f"; {_bounds_note(res.bounds(effects.metric))}."
                        if res.bounds(effects.metric)
                        else "."
                    ),
                    f.name,
                )
            )
    fig = parallel_figure(res, effects)
    if fig is not None:
        out.append(
            (
                "parallel.png",
                fig,
                "Parallel coordinates of the best trials",
                "One line per trial across every searched value and the metric.",
                None,
            )
        )
    return out


def write_figures(res: Results, effects: Effects, out_dir: str | os.PathLike[str]) -> list[FigureFile]:
    """Save every figure of ``res`` as PNG into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig, title, caption, factor in figures(res, effects):
        path = out / name
        fig.savefig(path, dpi=DPI)
        files.append(FigureFile(name, path, title, caption, factor))
    return files


__all__ = [
    "FigureFile",
    "ablation_figure",
    "categorical_figure",
    "curves_figure",
    "figures",
    "numeric_figure",
    "parallel_figure",
    "write_figures",
]
