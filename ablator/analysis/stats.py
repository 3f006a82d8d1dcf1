"""The statistics behind :meth:`Results.effects`, in plain Python and numpy.

scipy is only a test dependency, so the Student t distribution is computed here: its tail through
the regularised incomplete beta function (a continued fraction, Lentz's method) and its quantile
by a safeguarded Newton iteration on that tail. ``tests/analysis/test_stats.py`` checks every
function against ``scipy.stats`` to 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_TINY = 1e-300
_EPS = 1e-16


def _as_array(values: Sequence[float] | npt.ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


# --- Student t ---------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    # Convergence takes O(sqrt(max(a, b))) terms; the cap covers df up to ~1e8.
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    ``y`` is 1 - x when the caller knows it more precisely than ``1 - x`` computes it.
    """
    if y is None:
        y = 1.0 - x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    front = math.exp(log_front)
    # The continued fraction converges fast on one side of the mean a / (a + b) only.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def t_pdf(t: float, df: float) -> float:
    """Density of Student's t with ``df`` degrees of freedom (``math.inf``: the normal)."""
    if math.isinf(df):
        return math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    log_pdf = (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )
    return math.exp(log_pdf)


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` > 0 degrees of freedom (``math.inf``: the normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if t < 0:
        return 1.0 - t_sf(-t, df)
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    tt = t * t
    # x = df / (df + t^2) and 1 - x = t^2 / (df + t^2), both without cancellation.
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + tt), tt / (df + tt))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t."""
    return t_sf(-t, df)


def t_ppf(q: float, df: float) -> float:
    """The quantile of Student's t: the t with P(T <= t) = q, for 0 < q < 1."""
    if not 0.0 < q < 1.0:
        if q == 0.0:
            return -math.inf
        if q == 1.0:
            return math.inf
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    if q == 0.5:
        return 0.0
    # Solve for the upper tail directly: 1 - q would lose the digits of a small lower tail.
    return -_upper_quantile(q, df) if q < 0.5 else _upper_quantile(1.0 - q, df)


# Acklam's rational approximation of the normal quantile (relative error < 1.2e-9): only the
# starting point of the Newton iteration below, which does the exact work.
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _normal_upper(alpha: float) -> float:
    """Approximately the z with P(Z > z) = alpha, for 0 < alpha < 0.5."""
    if alpha < 0.02425:
        q = math.sqrt(-2.0 * math.log(alpha))
        num = ((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]
        den = (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        return -num / den
    q = 0.5 - alpha
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
    return num / den


def _t_guess(alpha: float, df: float) -> float:
    """A starting point for the upper quantile: exact for 1 and 2 degrees of freedom, else Hill's
    (1970) expansion around the normal quantile."""
    if df == 1.0:
        return math.tan(math.pi * (0.5 - alpha))
    if df == 2.0:
        p = 1.0 - alpha
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * alpha)
    z = _normal_upper(alpha)
    if math.isinf(df):
        return z
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    guess = z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    return guess if math.isfinite(guess) and guess > 0.0 else z


def _upper_quantile(alpha: float, df: float) -> float:
    """The t > 0 with P(T > t) = alpha, for 0 < alpha < 0.5."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    lo, hi = 0.0, math.inf
    t = _t_guess(alpha, df)
    # Newton on sf(t) - alpha (its derivative is -pdf) from a close guess; a step that leaves
    # the bracket known so far falls back to bisection (or doubling while there is no upper
    # end yet). sf is monotone, so the bracket always holds the root.
    for _ in range(400):
        f = t_sf(t, df) - alpha
        if f == 0.0:
            return t
        if f > 0.0:
            lo = t
        else:
            hi = t
        pdf = t_pdf(t, df)
        step = t + f / pdf if pdf > 0.0 else math.nan
        if not lo < step < hi:
            step = 0.5 * (lo + hi) if math.isfinite(hi) else 2.0 * t + 1.0
        if abs(step - t) <= 1e-12 * max(1.0, abs(t)):  # sf itself is good to ~1e-12
            return step
        if step > 1e300:
            return math.inf
        t = step
    return t


# --- summaries and tests ---------------------------------------------------------------


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


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance comparison of mean(a) - mean(b).

    ``p_value`` is two-sided; ``df`` the Welch-Satterthwaite degrees of freedom. ``t``, ``p_value``
    and the interval are None when the difference has no spread to judge it by (both groups
    constant), as scipy's ``nan``.
    """

    diff: float
    se: float
    df: float | None
    t: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None


def welch(
    a: Sequence[float] | npt.ArrayLike, b: Sequence[float] | npt.ArrayLike, confidence: float = 0.95
) -> Welch | None:
    """Welch's t-test and the ``confidence`` interval of mean(a) - mean(b); None when either
    group has fewer than two values. Matches ``scipy.stats.ttest_ind(a, b, equal_var=False)``."""
    xa, xb = _as_array(a), _as_array(b)
    na, nb = int(xa.size), int(xb.size)
    if na < 2 or nb < 2:
        return None
    va = float(xa.var(ddof=1)) / na
    vb = float(xb.var(ddof=1)) / nb
    diff = float(xa.mean() - xb.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Welch(diff, 0.0, None, None, None, None, None)
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    t = diff / se
    p = min(1.0, 2.0 * t_sf(abs(t), df))
    half = t_ppf(0.5 + confidence / 2.0, df) * se
    return Welch(diff, se, df, t, p, diff - half, diff + half)


def rankdata(values: Sequence[float] | npt.ArrayLike) -> FloatArray:
    """Ranks from 1, ties given their average rank (scipy's ``rankdata(method="average")``)."""
    x = _as_array(values)
    if x.size == 0:
        return np.empty(0, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Runs of equal values share the mean of the positions they span.
    starts = np.concatenate(([True], sorted_x[1:] != sorted_x[:-1]))
    group = np.cumsum(starts) - 1
    counts = np.bincount(group)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation and its two-sided p-value (t approximation, n - 2 df)."""

    n: int
    rho: float
    p_value: float


def spearman(x: Sequence[float] | npt.ArrayLike, y: Sequence[float] | npt.ArrayLike) -> Correlation | None:
    """Spearman's rho as ``scipy.stats.spearmanr``; None when n < 3 or either side is constant."""
    xa, ya = _as_array(x), _as_array(y)
    n = int(xa.size)
    if n < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return None
    rx, ry = rankdata(xa), rankdata(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    rho = float((rx * ry).sum() / math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum())))
    rho = max(-1.0, min(1.0, rho))
    if abs(rho) == 1.0:
        return Correlation(n, rho, 0.0)
    t = rho * math.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
    return Correlation(n, rho, min(1.0, 2.0 * t_sf(abs(t), n - 2)))


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
    """Ordinary least squares as ``scipy.stats.linregress``; None when n < 3 or x is constant."""
    xa, ya = _as_array(x), _as_array(y)
    n = int(xa.size)
    if n < 3 or np.all(xa == xa[0]):
        return None
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy, sxy = float((dx * dx).sum()), float((dy * dy).sum()), float((dx * dy).sum())
    slope = sxy / sxx
    intercept = float(ya.mean()) - slope * float(xa.mean())
    r = 0.0 if syy == 0.0 else max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    stderr = math.sqrt(max(0.0, (1.0 - r * r) * syy / sxx / (n - 2)))
    if stderr == 0.0:
        return Trend(n, slope, intercept, r, 0.0, None, None, None)
    p = min(1.0, 2.0 * t_sf(abs(slope / stderr), n - 2))
    half = t_ppf(0.5 + confidence / 2.0, n - 2) * stderr
    return Trend(n, slope, intercept, r, stderr, p, slope - half, slope + half)


__all__ = [
    "Correlation",
    "Summary",
    "Trend",
    "Welch",
    "betainc",
    "rankdata",
    "spearman",
    "summarize",
    "t_cdf",
    "t_pdf",
    "t_ppf",
    "t_sf",
    "trend",
    "welch",
]
