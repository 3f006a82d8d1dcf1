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
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ablator.analysis import stats
from ablator.analysis.effects import Effects, Factor, assign_levels, factor_xy

if TYPE_CHECKING:
    from ablator.analysis.results import Results

REFERENCE = "#f28e2b"
LEVEL = "#4e79a7"
BETTER = "#59a14f"
WORSE = "#e15759"
NEUTRAL = "#9c9c9c"
BEST = "#b07aa1"
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
            float(rows[ref]["mean"]), color=REFERENCE, linestyle="--", linewidth=1, label=f"{ref} mean"
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
    corr = stats.spearman(x, y)
    notes = []
    if fit is not None:
        grid = np.linspace(float(x.min()), float(x.max()), 100)
        if log:
            grid = np.logspace(math.log10(float(x.min())), math.log10(float(x.max())), 100)
        line = fit.intercept + fit.slope * (np.log10(grid) if log else grid)
        ax.plot(grid, line, color=REFERENCE, linewidth=2, label="trend")
        notes.append(f"slope {fit.slope:+.3g} per {'decade' if log else 'unit'}")
    if corr is not None:
        notes.append(f"Spearman rho = {corr.rho:.2f} (p = {corr.p_value:.2g})")
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
    """Each level's difference from the reference with its confidence interval, best at the
    top; green when the interval says better, red when it says worse, grey when it cannot tell."""
    rows = [r for r in effects.factor(factor.name).to_dicts() if not r["reference"] and r["diff"] is not None]
    ref = next((r for r in effects.factor(factor.name).to_dicts() if r["reference"]), None)
    if not rows or ref is None:
        return None
    sign = 1.0 if effects.mode == "max" else -1.0
    rows.sort(key=lambda r: sign * r["diff"])  # worst first: barh draws bottom-up, so best on top
    fig = _figure(7.5, 1.2 + 0.5 * len(rows))
    ax = fig.add_subplot()
    ys = np.arange(len(rows))
    diffs = np.array([r["diff"] for r in rows])
    # No interval (fewer than two trials on a side): no error bar at all, rather than a flat one.
    lo = np.array([r["diff"] - r["diff_ci_low"] if r["diff_ci_low"] is not None else np.nan for r in rows])
    hi = np.array([r["diff_ci_high"] - r["diff"] if r["diff_ci_high"] is not None else np.nan for r in rows])
    colors = []
    for r in rows:
        known = r["diff_ci_low"] is not None
        if known and sign * r["diff_ci_low"] > 0 and sign * r["diff_ci_high"] > 0:
            colors.append(BETTER)
        elif known and sign * r["diff_ci_low"] < 0 and sign * r["diff_ci_high"] < 0:
            colors.append(WORSE)
        else:
            colors.append(NEUTRAL)
    ax.barh(ys, diffs, xerr=np.vstack([lo, hi]), color=colors, alpha=0.85, capsize=4, height=0.6)
    ax.axvline(0.0, color="black", linewidth=1)
    left = float(np.min(np.concatenate([diffs - np.nan_to_num(lo), [0.0]])))
    right = float(np.max(np.concatenate([diffs + np.nan_to_num(hi), [0.0]])))
    span = (right - left) or 1.0
    for y, r, d, h in zip(ys, rows, diffs, np.nan_to_num(hi), strict=True):
        p = r["p_value"]
        label = f"{d:+.3g}"
        if r["rel_change"] is not None:
            label += f" ({100 * r['rel_change']:+.1f}%)"
        label += f", p={p:.2g}" if p is not None else ", n<2: no interval"
        # Every label right of both its bar and zero, so none runs into the variant names.
        ax.annotate(
            label, (max(0.0, d + h), y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8
        )
    ax.set_xlim(left - 0.08 * span, right + 0.9 * span)
    ax.set_yticks(ys, [f"{_short(r['level'], 24)} (n={r['n']})" for r in rows], fontsize=9)
    what = "baseline" if ref["vs"] == "baseline" else f"best level {ref['level']}"
    ax.set_xlabel(
        f"Δ {effects.metric} vs {what} (mean {ref['mean']:.4g}); {_better(effects)}; {effects.confidence:.0%} CI",
        fontsize=9,
    )
    ax.set_title(
        f"Effect of each {factor.name if factor.kind != 'variant' else 'variant'} ({effects.metric})"
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def curves_figure(res: Results, effects: Effects, factor: Factor) -> Figure | None:
    """The metric over steps, one line per level (mean across its trials, seeds included) with a
    band of one standard deviation; at most the 8 best levels."""
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
        hist.join(level_of, on="trial", how="inner")
        .group_by("level", "step")
        .agg(pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"), pl.len().alias("n"))
        .sort("level", "step")
    )
    if stepwise.height == 0:
        return None
    ranked = effects.factor(factor.name).filter(pl.col("rank").is_not_null()).sort("rank")["level"].to_list()
    shown = [name for name in ranked if name in set(stepwise["level"].to_list())][:MAX_CURVES]
    ref = next((r["level"] for r in effects.factor(factor.name).to_dicts() if r["reference"]), None)
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    counts = dict(level_of.group_by("level").len().iter_rows())
    for k, name in enumerate(shown):
        part = stepwise.filter(pl.col("level") == name)
        steps = part["step"].to_numpy()
        mean = part["mean"].to_numpy()
        std = np.nan_to_num(part["std"].to_numpy().astype(np.float64), nan=0.0)
        color = REFERENCE if name == ref else palette(k % 10)
        ax.plot(
            steps,
            mean,
            color=color,
            linewidth=2 if name == ref else 1.4,
            # A curve of a few evaluations (or one) is invisible as a bare line: mark its points.
            marker="o" if len(steps) <= 20 else None,
            markersize=4,
            label=f"{_short(name)} (n={counts.get(name, 0)})",
        )
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{effects.metric} ({_better(effects)})", fontsize=9)
    title = f"{effects.metric} during training by {factor.name}: mean ± 1 std across trials"
    if len(ranked) > len(shown):
        title += f" (best {len(shown)} of {len(ranked)} levels)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def parallel_figure(res: Results, effects: Effects, k: int = 20) -> Figure | None:
    """Parallel coordinates of the ``k`` best trials over every searched factor and the metric
    (each axis scaled to the range of all finished trials; log axes in log10)."""
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
        else:
            lv = assign_levels(res.trials, f, usable)
            names = lv.order
            pos = {n: (i / (len(names) - 1) if len(names) > 1 else 0.5) for i, n in enumerate(names)}
            scale = np.array([pos.get(lab, np.nan) if lab is not None else np.nan for lab in lv.labels])
            ticks = [(p, _short(n, 12)) for n, p in pos.items()]
        axes_data.append((f.name, scale, ticks))
    vlo, vhi = float(values[idx].min()), float(values[idx].max())
    vscale = (values - vlo) / (vhi - vlo) if vhi > vlo else np.full_like(values, 0.5)
    axes_data.append((effects.metric, vscale, [(0.0, f"{vlo:.4g}"), (1.0, f"{vhi:.4g}")]))
    fig = _figure(max(7.0, 1.6 * len(axes_data)), 4.8)
    ax = fig.add_subplot()
    xs_axis = np.arange(len(axes_data))
    cmap = matplotlib.colormaps["viridis"]
    ranks = np.linspace(1.0, 0.0, order.size) if order.size > 1 else np.array([1.0])
    for row, shade in zip(order[::-1], ranks[::-1], strict=True):  # best drawn last, on top
        ys = [a[1][row] for a in axes_data]
        ax.plot(xs_axis, ys, color=cmap(float(shade)), alpha=0.85, linewidth=1.6 if shade == 1.0 else 1.0)
    for x, (_name, _scale, ticks) in zip(xs_axis.tolist(), axes_data, strict=True):
        ax.axvline(x, color="0.4", linewidth=1)
        for p, text in ticks:
            ax.annotate(text, (x, p), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
    ax.set_xticks(xs_axis, [_short(a[0], 20) for a in axes_data], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(axes_data) - 0.5)
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
                        "Each variant's mean difference from the baseline with its Welch confidence interval; "
                        "green: better, red: worse, grey: the interval includes no change.",
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
                    "Mean over the trials of each level (seeds are replicates), band: one standard deviation.",
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
