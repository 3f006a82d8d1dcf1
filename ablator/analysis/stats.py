"""The statistics behind :func:`ablator.analysis.effects.compute_effects`, on ``scipy.stats``.

The field's library does the distributions and the tests: Student's t quantiles, Welch's and the
paired t-test with their confidence intervals, Spearman's rank correlation (an exact permutation
test for small n), least squares, and Benjamini-Hochberg (``false_discovery_control``). What is
written here by hand is only what takes a few lines: Holm's step-down adjustment and Hedges' g
with its large-sample interval. ``tests/analysis/test_analysis_stats.py`` checks every function
against scipy and statsmodels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.stats as ss

FloatArray = npt.NDArray[np.float64]
Adjust = Literal["holm", "bh"]
#: Below this many trials per level no verdict is given (two points have no useful spread).
MIN_N = 3
#: Spearman's p-value is exact (every pairing enumerated) up to this many points.
EXACT_SPEARMAN_N = 7


def _as_array(values: Sequence[float] | npt.ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def t_ppf(q: float, df: float) -> float:
    """The quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    return float(ss.t.ppf(q, df))


# --- summaries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """n, mean, sample standard deviation (ddof=1) and the t confidence interval of the mean.

    ``std`` and the interval are None when n < 2.
    """

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def summarize(values: Sequence[float] | npt.ArrayLike, confidence: float = 0.95) -> Summary:
    """Mean with its ``confidence`` interval from the t distribution with n - 1 degrees of freedom."""
    x = _as_array(values)
    n = int(x.size)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


# --- two-sample comparisons --------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) with its test: ``test`` is "welch" (independent groups) or "paired"
    (``a[i]`` and ``b[i]`` share a seed: the t-test of the differences).

    ``p_value`` is two-sided; ``df`` the test's degrees of freedom. ``t``, ``p_value`` and the
    interval are None when the difference has no spread to judge it by (both groups constant,
    or every paired difference equal).
    """

    test: Literal["welch", "paired"]
    diff: float
    df: float | None
    t: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None


def welch(
    a: Sequence[float] | npt.ArrayLike, b: Sequence[float] | npt.ArrayLike, confidence: float = 0.95
) -> Comparison | None:
    """Welch's t-test (``scipy.stats.ttest_ind(a, b, equal_var=False)``) and the ``confidence``
    interval of mean(a) - mean(b); None when either group has fewer than two values."""
    xa, xb = _as_array(a), _as_array(b)
    if xa.size < 2 or xb.size < 2:
        return None
    diff = float(xa.mean() - xb.mean())
    if float(xa.var(ddof=1)) + float(xb.var(ddof=1)) == 0.0:
        return Comparison("welch", diff, None, None, None, None, None)
    res = ss.ttest_ind(xa, xb, equal_var=False)
    ci = res.confidence_interval(confidence)
    return Comparison(
        "welch", diff, float(res.df), float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)
    )


def paired(
    a: Sequence[float] | npt.ArrayLike, b: Sequence[float] | npt.ArrayLike, confidence: float = 0.95
) -> Comparison | None:
    """The paired t-test (``scipy.stats.ttest_rel(a, b)``: ``a[i]`` and ``b[i]`` ran with the
    same seed) and the ``confidence`` interval of the mean difference; None with fewer than two
    pairs."""
    xa, xb = _as_array(a), _as_array(b)
    if xa.size != xb.size:
        raise ValueError(f"paired samples differ in size: {xa.size} and {xb.size}")
    if xa.size < 2:
        return None
    d = xa - xb
    diff = float(d.mean())
    if float(d.var(ddof=1)) == 0.0:
        return Comparison("paired", diff, None, None, None, None, None)
    res = ss.ttest_rel(xa, xb)
    ci = res.confidence_interval(confidence)
    return Comparison(
        "paired", diff, float(res.df), float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)
    )


@dataclass(frozen=True)
class EffectSize:
    """Hedges' g (a bias-corrected standardised mean difference) with its ``confidence`` interval
    (the large-sample normal approximation of Hedges & Olkin, 1985)."""

    g: float
    ci_low: float
    ci_high: float


def _hedges_j(df: float) -> float:
    """The small-sample correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2))."""
    return math.exp(math.lgamma(df / 2.0) - math.lgamma((df - 1.0) / 2.0)) / math.sqrt(df / 2.0)


def hedges_g(
    a: Sequence[float] | npt.ArrayLike,
    b: Sequence[float] | npt.ArrayLike,
    *,
    pairs: bool = False,
    confidence: float = 0.95,
) -> EffectSize | None:
    """Hedges' g of mean(a) - mean(b).

    Independent groups: d = diff / pooled standard deviation, g = J(na + nb - 2) d, variance
    J^2 ((na + nb) / (na nb) + d^2 / (2 (na + nb))). Paired (``pairs=True``, same seeds): the
    differences' own standardised mean d_z = mean(a - b) / sd(a - b), g = J(n - 1) d_z, variance
    J^2 (1 / n + d_z^2 / (2 n)). None when a group has fewer than two values (pairs: fewer than
    three) or there is no spread."""
    xa, xb = _as_array(a), _as_array(b)
    z = float(ss.norm.ppf(0.5 + confidence / 2.0))
    if pairs:
        if xa.size != xb.size or xa.size < 3:
            return None  # J(1) = 0: two pairs give no usable standardised difference
        d_ = xa - xb
        n = int(d_.size)
        sd = float(d_.std(ddof=1))
        if sd == 0.0:
            return None
        dz = float(d_.mean()) / sd
        j = _hedges_j(n - 1.0)
        var = j * j * (1.0 / n + dz * dz / (2.0 * n))
        g = j * dz
    else:
        na, nb = int(xa.size), int(xb.size)
        if na < 2 or nb < 2:
            return None
        pooled = math.sqrt(
            ((na - 1) * float(xa.var(ddof=1)) + (nb - 1) * float(xb.var(ddof=1))) / (na + nb - 2)
        )
        if pooled == 0.0:
            return None
        d = float(xa.mean() - xb.mean()) / pooled
        j = _hedges_j(na + nb - 2.0)
        var = j * j * ((na + nb) / (na * nb) + d * d / (2.0 * (na + nb)))
        g = j * d
    half = z * math.sqrt(var)
    return EffectSize(g, g - half, g + half)


# --- multiple comparisons ----------------------------------------------------------------


def _p_array(p_values: Sequence[float | None] | npt.ArrayLike) -> FloatArray:
    """p-values as floats, a missing one (None) as NaN."""
    if isinstance(p_values, np.ndarray):
        return p_values.astype(np.float64)
    return np.array([math.nan if v is None else float(v) for v in p_values], dtype=np.float64)  # type: ignore[union-attr, arg-type]


def holm(p_values: Sequence[float | None] | npt.ArrayLike) -> FloatArray:
    """Holm's step-down adjustment (strong family-wise error control); NaN entries (no test)
    stay NaN and do not count as comparisons. Matches statsmodels' ``multipletests(p, "holm")``."""
    p = _p_array(p_values)
    out = np.full(p.size, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = present.size
    if m == 0:
        return out
    order = present[np.argsort(p[present], kind="stable")]
    # The k-th smallest p (k from 0) is multiplied by m - k; adjusted values never decrease.
    scaled = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(scaled, 1.0)
    return out


def adjust(p_values: Sequence[float | None] | npt.ArrayLike, method: Adjust = "holm") -> FloatArray:
    """Adjusted p-values of one family of tests: ``"holm"`` (family-wise error) or ``"bh"``
    (Benjamini-Hochberg false discovery rate, ``scipy.stats.false_discovery_control``)."""
    if method == "holm":
        return holm(p_values)
    if method != "bh":
        raise ValueError(f"adjustment must be 'holm' or 'bh', got {method!r}")
    p = _p_array(p_values)
    out = np.full(p.size, math.nan)
    present = ~np.isnan(p)
    if present.any():
        out[present] = ss.false_discovery_control(p[present], method="bh")
    return out


# --- trends ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation and its two-sided p-value: exact (every pairing of the
    values enumerated by ``scipy.stats.permutation_test``) for n <= ``EXACT_SPEARMAN_N``, else
    scipy's t approximation. ``min_p`` is the smallest p-value the exact test could reach (2 /
    n! without ties), None when the approximation was used."""

    n: int
    rho: float
    p_value: float
    exact: bool
    min_p: float | None


def _rank_corr(x: FloatArray, y: FloatArray, axis: int = -1) -> FloatArray:
    rx = ss.rankdata(x, axis=axis)
    ry = ss.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))
    return np.asarray(num / den, dtype=np.float64)


def spearman(x: Sequence[float] | npt.ArrayLike, y: Sequence[float] | npt.ArrayLike) -> Correlation | None:
    """Spearman's rho (``scipy.stats.spearmanr``); None with fewer than 3 distinct x values or a
    constant y: a rank correlation over two x values is a two-group comparison, not a trend."""
    xa, ya = _as_array(x), _as_array(y)
    n = int(xa.size)
    if n < 3 or np.unique(xa).size < 3 or np.all(ya == ya[0]):
        return None
    rho = float(ss.spearmanr(xa, ya).statistic)
    if n <= EXACT_SPEARMAN_N:
        # One sample under "pairings": its order is permuted against the fixed y, n! ways.
        test = ss.permutation_test(
            (xa,),
            lambda u, axis: _rank_corr(u, np.broadcast_to(ya, u.shape), axis),
            permutation_type="pairings",
            vectorized=True,
            n_resamples=math.factorial(EXACT_SPEARMAN_N),
        )
        # Every distinct pairing is enumerated: the null distribution's extremes bound p.
        null = np.asarray(test.null_distribution)
        top = float(null.max())
        min_p = min(1.0, 2.0 * float(np.mean(null >= top - 1e-12)))
        return Correlation(n, rho, float(test.pvalue), True, min_p)
    return Correlation(n, rho, float(ss.spearmanr(xa, ya).pvalue), False, None)


@dataclass(frozen=True)
class Trend:
    """Least-squares line y = intercept + slope * x with the slope's standard error, its
    ``confidence`` interval and the two-sided p-value of slope != 0 (n - 2 df)."""

    n: int
    slope: float
    intercept: float
    r: float
    stderr: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None


def trend(
    x: Sequence[float] | npt.ArrayLike, y: Sequence[float] | npt.ArrayLike, confidence: float = 0.95
) -> Trend | None:
    """Ordinary least squares (``scipy.stats.linregress``); None when n < 3 or x is constant."""
    xa, ya = _as_array(x), _as_array(y)
    n = int(xa.size)
    if n < 3 or np.all(xa == xa[0]):
        return None
    if np.all(ya == ya[0]):
        return Trend(n, 0.0, float(ya[0]), 0.0, 0.0, None, None, None)
    fit = ss.linregress(xa, ya)
    stderr = float(fit.stderr)
    if stderr == 0.0 or not math.isfinite(stderr):
        return Trend(n, float(fit.slope), float(fit.intercept), float(fit.rvalue), 0.0, None, None, None)
    half = t_ppf(0.5 + confidence / 2.0, n - 2) * stderr
    return Trend(
        n,
        float(fit.slope),
        float(fit.intercept),
        float(fit.rvalue),
        stderr,
        float(fit.pvalue),
        float(fit.slope) - half,
        float(fit.slope) + half,
    )


__all__ = [
    "EXACT_SPEARMAN_N",
    "MIN_N",
    "Adjust",
    "Comparison",
    "Correlation",
    "EffectSize",
    "Summary",
    "Trend",
    "adjust",
    "hedges_g",
    "holm",
    "paired",
    "spearman",
    "summarize",
    "t_ppf",
    "trend",
    "welch",
]
