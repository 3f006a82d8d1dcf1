"""The statistics against scipy.stats and statsmodels (independent implementations), to 1e-6."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from ablator.analysis import stats

TOL: dict[str, Any] = {"rel": 1e-6, "abs": 1e-9}


def _welch_vs_scipy(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> None:
    ours = stats.welch(a, b, confidence)
    ref = ss.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(confidence)
    assert ours is not None and ours.test == "welch"
    assert ours.diff == pytest.approx(a.mean() - b.mean(), **TOL)
    assert ours.t == pytest.approx(ref.statistic, **TOL)
    assert ours.df == pytest.approx(ref.df, **TOL)
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)
    assert ours.ci_low == pytest.approx(ci.low, **TOL)
    assert ours.ci_high == pytest.approx(ci.high, **TOL)


def test_welch_matches_scipy_on_unequal_groups() -> None:
    rng = np.random.default_rng(7)
    for na, nb, sa, sb, shift in [(3, 3, 0.01, 0.01, 0.02), (2, 9, 1.0, 0.1, 0.5), (30, 5, 2.0, 5.0, -1.0)]:
        _welch_vs_scipy(rng.normal(shift, sa, na), rng.normal(0.0, sb, nb))
    _welch_vs_scipy(rng.normal(0, 1, 6), rng.normal(1, 1, 7), confidence=0.9)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12),
)
def test_welch_property_matches_scipy(a: list[float], b: list[float]) -> None:
    xa, xb = np.array(a), np.array(b)
    # Spreads that vanish against the values are rounding noise; scipy and we may disagree there.
    if xa.std() < 1e-6 * (1 + abs(xa).max()) or xb.std() < 1e-6 * (1 + abs(xb).max()):
        return
    _welch_vs_scipy(xa, xb)


def test_welch_degenerate_groups() -> None:
    assert stats.welch([1.0], [1.0, 2.0]) is None
    flat = stats.welch([1.0, 1.0], [2.0, 2.0])
    assert flat is not None and flat.diff == -1.0 and flat.p_value is None and flat.ci_low is None


def test_paired_matches_ttest_rel() -> None:
    seed_effect = np.array([0.5, -0.3, 0.1, 0.9, -0.7])  # shared by both sides: what pairing removes
    a = 0.9 + seed_effect + np.array([0.021, 0.019, 0.024, 0.018, 0.022])
    b = 0.9 + seed_effect + np.array([0.001, -0.002, 0.003, 0.0, -0.001])
    ours = stats.paired(a, b, 0.95)
    ref = ss.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert ours is not None and ours.test == "paired"
    assert ours.diff == pytest.approx((a - b).mean(), **TOL)
    assert ours.t == pytest.approx(ref.statistic, **TOL) and ours.df == ref.df == 4
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low, **TOL), pytest.approx(ci.high, **TOL))
    # The same numbers unpaired: the seed-to-seed spread swamps the difference.
    welch = stats.welch(a, b)
    assert ours.p_value is not None
    assert welch is not None and welch.p_value is not None and ours.p_value < 0.05 < welch.p_value
    assert stats.paired([1.0], [2.0]) is None
    same = stats.paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert same is not None and same.diff == 0.5 and same.p_value is None
    with pytest.raises(ValueError, match="differ in size"):
        stats.paired([1.0, 2.0], [1.0, 2.0, 3.0])


def _hedges_reference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """g and its standard error, from the textbook formulas with scipy's gamma function."""
    from scipy.special import gamma

    na, nb = a.size, b.size
    df = na + nb - 2
    sp = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / df)
    d = (a.mean() - b.mean()) / sp
    j = gamma(df / 2) / (math.sqrt(df / 2) * gamma((df - 1) / 2))
    return j * d, j * math.sqrt((na + nb) / (na * nb) + d * d / (2 * (na + nb)))


def test_hedges_g_and_interval() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 1.0, 8)
    g = stats.hedges_g(a, b, confidence=0.95)
    ref_g, se = _hedges_reference(a, b)
    z = ss.norm.ppf(0.975)
    assert g is not None and g.g == pytest.approx(ref_g, **TOL)
    assert (g.ci_low, g.ci_high) == (
        pytest.approx(ref_g - z * se, **TOL),
        pytest.approx(ref_g + z * se, **TOL),
    )
    # J(df) -> 1 - 3 / (4 df - 1) (Hedges' own approximation) for large df.
    big = stats.hedges_g(rng.normal(0.5, 1, 400), rng.normal(0, 1, 400))
    assert big is not None and abs(big.g - 0.5) < 0.2
    pairs = stats.hedges_g(a[:5], b[:5], pairs=True)
    d = a[:5] - b[:5]
    dz = d.mean() / d.std(ddof=1)
    from scipy.special import gamma

    j = gamma(4 / 2) / (math.sqrt(4 / 2) * gamma(3 / 2))
    assert pairs is not None and pairs.g == pytest.approx(j * dz, **TOL)
    assert stats.hedges_g([1.0], [1.0, 2.0]) is None and stats.hedges_g([1.0, 1.0], [2.0, 2.0]) is None


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_adjustments_match_statsmodels(method: str) -> None:
    rng = np.random.default_rng(4)
    for m in (1, 2, 7, 30):
        p = rng.uniform(0, 0.2, m) ** 2
        ours = stats.adjust(p, method)  # type: ignore[arg-type]
        ref = multipletests(p, method="holm" if method == "holm" else "fdr_bh")[1]
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    # Ties and ones.
    p = np.array([0.01, 0.01, 0.04, 1.0, 0.5])
    np.testing.assert_allclose(
        stats.adjust(p, method),  # type: ignore[arg-type]
        multipletests(p, method="holm" if method == "holm" else "fdr_bh")[1],
        rtol=1e-12,
    )


def test_missing_p_values_are_not_comparisons() -> None:
    adjusted = stats.holm([0.01, None, 0.04, math.nan, 0.03])
    ref = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert math.isnan(adjusted[1]) and math.isnan(adjusted[3])
    np.testing.assert_allclose(adjusted[[0, 2, 4]], ref, rtol=1e-12)
    assert np.isnan(stats.adjust([None, None], "bh")).all()
    with pytest.raises(ValueError, match="holm"):
        stats.adjust([0.1], "bonferroni")  # type: ignore[arg-type]


def test_summary_interval_matches_scipy() -> None:
    x = np.array([0.91, 0.905, 0.92, 0.899, 0.93])
    s = stats.summarize(x)
    lo, hi = ss.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=ss.sem(x))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
    assert s.ci_low == pytest.approx(lo, **TOL) and s.ci_high == pytest.approx(hi, **TOL)
    assert stats.summarize([1.0]).std is None and stats.summarize([]).mean is None


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)  # many ties
    y = x * 0.3 + rng.normal(0, 1, 40)
    ours = stats.spearman(x, y)
    ref = ss.spearmanr(x, y)
    assert ours is not None and not ours.exact and ours.min_p is None
    assert ours.rho == pytest.approx(ref.statistic, **TOL)
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)


def test_spearman_small_n_is_exact_and_needs_three_distinct_values() -> None:
    # Three points in perfect order: scipy's t approximation says p = 0; the exact test 1/3.
    perfect = stats.spearman([1, 2, 3], [10, 20, 30])
    assert ss.spearmanr([1, 2, 3], [10, 20, 30]).pvalue == 0.0
    assert perfect is not None and perfect.rho == pytest.approx(1.0) and perfect.exact
    assert perfect.p_value == pytest.approx(1 / 3) and perfect.min_p == pytest.approx(1 / 3)
    six = stats.spearman([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5])
    assert six is not None and six.min_p == pytest.approx(2 / 720)
    # The exact p equals a brute-force enumeration of the 720 pairings.
    import itertools

    y = np.array([1, 3, 2, 4, 6, 5], dtype=float)
    rho0 = ss.spearmanr(np.arange(1, 7), y).statistic
    null = [ss.spearmanr(perm, y).statistic for perm in itertools.permutations(range(1, 7))]
    greater = np.mean(np.array(null) >= rho0 - 1e-12)
    assert six.p_value == pytest.approx(min(1.0, 2 * greater), **TOL)
    assert stats.spearman([1, 1, 2, 2], [1, 2, 3, 4]) is None  # two distinct x values: no trend
    assert stats.spearman([1, 2, 3], [1, 1, 1]) is None


def test_trend_matches_linregress() -> None:
    rng = np.random.default_rng(5)
    x = np.log10(10 ** rng.uniform(-4, -1, 30))
    y = 0.5 - 0.05 * x + rng.normal(0, 0.02, 30)
    ours = stats.trend(x, y)
    ref = ss.linregress(x, y)
    assert ours is not None
    assert ours.slope == pytest.approx(ref.slope, **TOL)
    assert ours.intercept == pytest.approx(ref.intercept, **TOL)
    assert ours.r == pytest.approx(ref.rvalue, **TOL)
    assert ours.stderr == pytest.approx(ref.stderr, **TOL)
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)
    half = ss.t.ppf(0.975, len(x) - 2) * ref.stderr
    assert ours.ci_low == pytest.approx(ref.slope - half, **TOL)
    assert stats.trend([1, 1, 1], [1, 2, 3]) is None
    flat = stats.trend([1, 2, 3], [2, 2, 2])
    assert flat is not None and flat.slope == 0.0 and flat.p_value is None
