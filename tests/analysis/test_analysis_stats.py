"""The statistics against scipy.stats (an independent implementation), to 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as st

from ablator.analysis import stats

TOL = {"rel": 1e-6, "abs": 1e-9}

DFS = [0.7, 1.0, 2.0, 2.5, 3.0, 5.3, 10.0, 29.0, 100.0, 1234.5, 1e5]


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_matches_scipy(df: float) -> None:
    for q in [1e-9, 1e-4, 0.001, 0.025, 0.05, 0.2, 0.5, 0.8, 0.95, 0.975, 0.999, 1 - 1e-7]:
        assert stats.t_ppf(q, df) == pytest.approx(ss.t.ppf(q, df), **TOL), (q, df)


@pytest.mark.parametrize("df", DFS)
def test_t_tail_matches_scipy(df: float) -> None:
    for t in [-40.0, -3.0, -1.0, -0.01, 0.0, 0.3, 1.0, 1.96, 4.0, 12.0, 300.0]:
        assert stats.t_sf(t, df) == pytest.approx(ss.t.sf(t, df), rel=1e-6, abs=1e-300), (t, df)
        assert stats.t_cdf(t, df) == pytest.approx(ss.t.cdf(t, df), **TOL), (t, df)
        assert stats.t_pdf(t, df) == pytest.approx(ss.t.pdf(t, df), rel=1e-6, abs=1e-300), (t, df)


def test_t_quantile_edges_and_normal_limit() -> None:
    assert stats.t_ppf(0.5, 3.0) == 0.0
    assert stats.t_ppf(0.0, 3.0) == -math.inf and stats.t_ppf(1.0, 3.0) == math.inf
    assert stats.t_ppf(0.975, math.inf) == pytest.approx(ss.norm.ppf(0.975), **TOL)
    with pytest.raises(ValueError, match="quantile"):
        stats.t_ppf(1.5, 3.0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_sf(1.0, 0.0)


def test_betainc_matches_scipy() -> None:
    import scipy.special as sp

    for a, b, x in [(0.5, 0.5, 0.3), (5.0, 0.5, 0.99), (2.0, 3.0, 0.5), (50.0, 0.5, 0.9), (0.5, 20.0, 0.01)]:
        assert stats.betainc(a, b, x) == pytest.approx(sp.betainc(a, b, x), **TOL)


def _welch_vs_scipy(a: np.ndarray, b: np.ndarray) -> None:
    ours = stats.welch(a, b)
    ref = ss.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert ours is not None
    assert ours.diff == pytest.approx(a.mean() - b.mean(), **TOL)
    assert ours.t == pytest.approx(ref.statistic, **TOL)
    assert ours.df == pytest.approx(ref.df, **TOL)
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)
    assert ours.ci_low == pytest.approx(ci.low, **TOL)
    assert ours.ci_high == pytest.approx(ci.high, **TOL)


def test_welch_matches_scipy_on_unequal_groups() -> None:
    rng = np.random.default_rng(7)
    for na, nb, sa, sb, shift in [
        (3, 3, 0.01, 0.01, 0.02),
        (2, 9, 1.0, 0.1, 0.5),
        (30, 5, 2.0, 5.0, -1.0),
        (200, 150, 1, 1, 0),
    ]:
        _welch_vs_scipy(rng.normal(shift, sa, na), rng.normal(0.0, sb, nb))


@settings(max_examples=40, deadline=None)
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
    assert ours is not None
    assert ours.rho == pytest.approx(ref.statistic, **TOL)
    assert ours.p_value == pytest.approx(ref.pvalue, **TOL)
    np.testing.assert_allclose(stats.rankdata(x), ss.rankdata(x))
    assert stats.spearman([1, 2], [3, 4]) is None and stats.spearman([1, 1, 1], [1, 2, 3]) is None
    perfect = stats.spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert perfect is not None and perfect.rho == 1.0 and perfect.p_value == 0.0


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
