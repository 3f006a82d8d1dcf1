"""Number formatting and the effects tables as text (terminal) and rows (markdown, HTML)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ablator.analysis.stats import MIN_N

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


ADJUST_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def level_headers(effects: Effects) -> list[str]:
    """The header row of a levels table."""
    pc = f"{effects.confidence:.0%}"
    return [
        "level",
        "n",
        "mean",
        "std",
        f"{pc} CI",
        "diff",
        f"diff {pc} CI",
        "rel.",
        "test",
        "p",
        f"p adj. ({effects.adjust})",
        "g",
        "verdict",
        "rank",
    ]


def level_cells(row: dict[str, Any]) -> list[str]:
    """One level row of ``Effects.levels`` as table cells (:func:`level_headers` order)."""
    baseline = row["vs"] == "baseline" and row["reference"] and row["level"] != "baseline"
    level = row["level"] + (" (baseline)" if baseline else "")
    level += " (best)" if row["vs"] == "best" and row["reference"] else ""
    if row["n_excluded"]:
        level += f" [{row['n_excluded']} excl.]"
    ref = bool(row["reference"])
    verdict = row.get("verdict")
    return [
        level,
        str(row["n"]),
        num(row["mean"]),
        num(row["std"]),
        interval(row["ci_low"], row["ci_high"]),
        "ref" if ref else signed(row["diff"]),
        DASH if ref else interval(row["diff_ci_low"], row["diff_ci_high"]),
        DASH if ref else pct(row["rel_change"]),
        DASH if ref else (row.get("test") or DASH),
        DASH if ref else pval(row["p_value"]),
        DASH if ref else pval(row.get("p_adjusted")),
        DASH if ref else signed(row.get("hedges_g"), 2),
        DASH if ref else (verdict or ("none*" if row.get("note") else DASH)),
        num(row["rank"]),
    ]


def level_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``* level: why`` for every level row with a note (no verdict, no test, Welch for partly
    paired seeds)."""
    return [f"* {r['level']}: {r['note']}" for r in rows if r.get("note")]


def p_label(row: dict[str, Any], adjust: str) -> str:
    """The p-values of a level as the figures print them: the same text as the tables'."""
    if row.get("p_value") is None:
        return "no test"
    raw, adj = pval(row["p_value"]), pval(row.get("p_adjusted"))
    return f"p {raw if raw.startswith('<') else '= ' + raw}, {adjust} {adj}"


TREND_HEADERS = ["factor", "n", "spearman rho", "p", "p adj.", "slope", "slope CI", "x"]


def trend_cells(row: dict[str, Any]) -> list[str]:
    """One row of ``Effects.trends`` as table cells (TREND_HEADERS order)."""
    return [
        row["factor"] + (" *" if row.get("note") else ""),
        str(row["n"]),
        num(row["spearman_rho"], 3),
        pval(row["spearman_p"]) + (" (exact)" if row.get("spearman_exact") else ""),
        pval(row.get("spearman_p_adjusted")),
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
        f"{effects.confidence:.0%} intervals; paired t-test where both levels ran the same seeds, else Welch's"
    )


def describe_comparisons(effects: Effects) -> str:
    """How many comparisons were made and how their p-values were adjusted."""
    name = ADJUST_NAMES.get(effects.adjust, effects.adjust)
    what = "family-wise error" if effects.adjust == "holm" else "false discovery rate"
    return (
        f"{effects.n_comparisons} comparison(s) in these tables; p adj. = {name}-adjusted over all of them "
        f"({what} at {effects.alpha:g}); verdicts (better / worse / unclear) follow the adjusted p; "
        f"no verdict below {MIN_N} trials per level; g = Hedges' g"
    )


def render_effects(effects: Effects) -> str:
    """The effects tables as plain text for a terminal."""
    out = [describe(effects), describe_comparisons(effects)]
    if not effects.factors:
        out.append("\nno factors: the design varies nothing")
    for factor in effects.factors:
        rows = effects.levels.filter(effects.levels["factor"] == factor.name).to_dicts()
        vs = rows[0]["vs"] if rows else "best"
        out.append(f"\n{factor.name} ({factor.kind}; diff vs the {vs})")
        out.append(table(level_headers(effects), [level_cells(r) for r in rows]) if rows else "  no data")
        out += ["  " + note for note in level_notes(rows)]
    if effects.trends.height:
        out.append("\ntrends of numeric factors")
        trends = effects.trends.to_dicts()
        out.append(table(TREND_HEADERS, [trend_cells(r) for r in trends]))
        out += [f"  * {r['factor']}: {r['note']}" for r in trends if r.get("note")]
    return "\n".join(out)


__all__ = [
    "describe",
    "describe_comparisons",
    "level_cells",
    "level_headers",
    "level_notes",
    "markdown_table",
    "num",
    "p_label",
    "render_effects",
    "table",
    "trend_cells",
]
