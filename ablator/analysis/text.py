"""Number formatting and the effects tables as text (terminal) and rows (markdown, HTML)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablator.analysis.effects import Effects

DASH = "-"


def num(x: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; None/NaN as a dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def signed(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:+.{digits}g}"


def pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{100.0 * x:+.1f}%"


def pval(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return DASH
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"


def interval(lo: Any, hi: Any, digits: int = 4) -> str:
    if lo is None or hi is None:
        return DASH
    return f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


LEVEL_HEADERS = ["level", "n", "mean", "std", "95% CI", "diff", "diff 95% CI", "rel.", "p", "rank"]


def level_cells(row: dict[str, Any], confidence: float = 0.95) -> list[str]:
    """One level row of ``Effects.levels`` as table cells (LEVEL_HEADERS order)."""
    baseline = row["vs"] == "baseline" and row["reference"] and row["level"] != "baseline"
    level = row["level"] + (" (baseline)" if baseline else "")
    level += " (best)" if row["vs"] == "best" and row["reference"] else ""
    if row["n_excluded"]:
        level += f" [{row['n_excluded']} excl.]"
    ref = bool(row["reference"])
    return [
        level,
        str(row["n"]),
        num(row["mean"]),
        num(row["std"]),
        interval(row["ci_low"], row["ci_high"]),
        "ref" if ref else signed(row["diff"]),
        DASH if ref else interval(row["diff_ci_low"], row["diff_ci_high"]),
        DASH if ref else pct(row["rel_change"]),
        DASH if ref else pval(row["p_value"]),
        num(row["rank"]),
    ]


TREND_HEADERS = ["factor", "n", "spearman rho", "p", "slope", "slope 95% CI", "x"]


def trend_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["factor"],
        str(row["n"]),
        num(row["spearman_rho"], 3),
        pval(row["spearman_p"]),
        signed(row["slope"]),
        interval(row["slope_ci_low"], row["slope_ci_high"]),
        "per decade" if row["x_scale"] == "log10" else "per unit",
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Columns padded to their widest cell; the first left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def describe(effects: Effects) -> str:
    """One line saying what the numbers are."""
    direction = "higher is better" if effects.mode == "max" else "lower is better"
    guessed = (
        ", direction guessed from the name: pass --mode to set it" if effects.mode_source == "guessed" else ""
    )
    return (
        f"{effects.metric} ({effects.mode}: {direction}{guessed}); each trial's {effects.value} value; "
        f"{effects.n_used} of {effects.n_finished} finished trials used (status {', '.join(effects.statuses)}); "
        f"{effects.confidence:.0%} intervals, Welch's t-test"
    )


def render_effects(effects: Effects) -> str:
    out = [describe(effects)]
    if not effects.factors:
        out.append("\nno factors: the design varies nothing")
    for factor in effects.factors:
        rows = effects.levels.filter(effects.levels["factor"] == factor.name).to_dicts()
        vs = rows[0]["vs"] if rows else "best"
        out.append(f"\n{factor.name} ({factor.kind}; diff vs the {vs})")
        out.append(
            table(LEVEL_HEADERS, [level_cells(r, effects.confidence) for r in rows]) if rows else "  no data"
        )
    if effects.trends.height:
        out.append("\ntrends of numeric factors")
        out.append(table(TREND_HEADERS, [trend_cells(r) for r in effects.trends.to_dicts()]))
    return "\n".join(out)


__all__ = ["describe", "markdown_table", "num", "render_effects", "table"]
