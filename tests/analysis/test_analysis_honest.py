"""Honest statistics on real stores: paired seeds, adjusted p-values for every comparison,
no verdict from too few seeds, effect sizes; checked against scipy and statsmodels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats as ss
from statsmodels.stats.multitest import multipletests

from ablator.analysis import compute_effects, load
from ablator.store import open_store
from analysis.synthstore import StoreBuilder, ablation_experiment

TOL: dict[str, Any] = {"rel": 1e-6, "abs": 1e-12}
#: seed effect (shared by every variant that runs the seed) + the variant's own shift
SEED_EFFECT = [0.03, -0.02, 0.01, 0.04, -0.05]
SHIFT = {"baseline": 0.0, "no_dropout": -0.004, "gelu": 0.0005, "no_batchnorm": -0.1}
NOISE = np.random.default_rng(1).normal(0.0, 0.001, 64).tolist()  # fixed: the same store every run


def seven_variant_store(path: Path, repeats: int, *, paired: bool) -> dict[str, list[float]]:
    """An ablation of 7 variants (+ baseline): with ``paired``, repeat r runs seed 500 + r in
    every variant (common random numbers); otherwise every trial its own seed."""
    exp = ablation_experiment(repeats=repeats)
    extra = {f"v{k}": {"model.hidden": 64 + k} for k in range(4)}
    exp["design"]["ablations"].update(extra)
    b = StoreBuilder(open_store(path), exp)
    values: dict[str, list[float]] = {}
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        level = name or "baseline"
        for r in range(repeats):
            v = 0.9 + SHIFT.get(level, 0.001 * int(level[1:]) if level.startswith("v") else 0.0)
            v += SEED_EFFECT[r] + NOISE[i]
            values.setdefault(level, []).append(v)
            seed = 500 + r if paired else 1000 + i
            b.finished(i, overrides, v, variant=name, repeat=r, seed=seed, n_steps=4)
            i += 1
    return values


def test_paired_seeds_use_the_paired_test_and_holm_over_every_comparison(tmp_path: Path) -> None:
    values = seven_variant_store(tmp_path / "s", 5, paired=True)
    eff = load(tmp_path / "s").effects()
    rows = {r["level"]: r for r in eff.factor("variant").to_dicts()}
    assert eff.adjust == "holm" and eff.n_comparisons == 7
    base = np.array(values["baseline"])
    raw = []
    for level, row in rows.items():
        if level == "baseline":
            assert row["test"] is None and row["p_adjusted"] is None and row["verdict"] is None
            continue
        x = np.array(values[level])
        test = ss.ttest_rel(x, base)
        ci = test.confidence_interval(0.95)
        assert row["test"] == "paired" and row["n_pairs"] == 5
        assert row["p_value"] == pytest.approx(test.pvalue, **TOL)
        assert (row["diff_ci_low"], row["diff_ci_high"]) == (
            pytest.approx(ci.low, **TOL),
            pytest.approx(ci.high, **TOL),
        )
        raw.append(row["p_value"])
    holm = multipletests(raw, method="holm")[1]
    adjusted = [r["p_adjusted"] for lv, r in rows.items() if lv != "baseline"]
    np.testing.assert_allclose(adjusted, holm, rtol=1e-9)
    # The seed effect is shared, so pairing sees a small shift that Welch's test cannot.
    assert rows["no_dropout"]["p_value"] < 0.01
    welch = ss.ttest_ind(values["no_dropout"], base, equal_var=False).pvalue
    assert welch > 0.3
    assert rows["no_dropout"]["verdict"] == "worse" and rows["no_batchnorm"]["verdict"] == "worse"
    for level, row in rows.items():
        if level == "baseline":
            continue
        expected = "unclear" if row["p_adjusted"] >= 0.05 else ("better" if row["better"] else "worse")
        assert row["verdict"] == expected, level
    # Hedges' g of the paired differences: J(n-1) * mean(d) / sd(d).
    d = np.array(values["no_dropout"]) - base
    from scipy.special import gamma

    j = gamma(4 / 2) / (np.sqrt(4 / 2) * gamma(3 / 2))
    assert rows["no_dropout"]["hedges_g"] == pytest.approx(j * d.mean() / d.std(ddof=1), **TOL)
    assert rows["no_dropout"]["g_ci_low"] < rows["no_dropout"]["hedges_g"] < rows["no_dropout"]["g_ci_high"]


def test_benjamini_hochberg_and_unpaired_option(tmp_path: Path) -> None:
    values = seven_variant_store(tmp_path / "s", 5, paired=True)
    res = load(tmp_path / "s")
    bh = compute_effects(res, adjust="bh", paired=False)
    rows = [r for r in bh.factor("variant").to_dicts() if not r["reference"]]
    assert {r["test"] for r in rows} == {"welch"}
    base = values["baseline"]
    raw = [ss.ttest_ind(values[r["level"]], base, equal_var=False).pvalue for r in rows]
    np.testing.assert_allclose([r["p_value"] for r in rows], raw, rtol=1e-9)
    np.testing.assert_allclose(
        [r["p_adjusted"] for r in rows], multipletests(raw, method="fdr_bh")[1], rtol=1e-9
    )
    assert "Benjamini-Hochberg" in bh.render() and "p adj. (bh)" in bh.render()


def test_unpaired_seeds_use_welch(tmp_path: Path) -> None:
    values = seven_variant_store(tmp_path / "s", 3, paired=False)
    eff = load(tmp_path / "s").effects()
    row = eff.factor("variant").filter(eff.levels["level"] == "no_batchnorm").row(0, named=True)
    test = ss.ttest_ind(values["no_batchnorm"], values["baseline"], equal_var=False)
    assert row["test"] == "welch" and row["n_pairs"] is None
    assert row["p_value"] == pytest.approx(test.pvalue, **TOL)


def test_too_few_seeds_give_no_verdict_and_say_why(tmp_path: Path) -> None:
    seven_variant_store(tmp_path / "s", 2, paired=True)
    eff = load(tmp_path / "s").effects()
    rows = [r for r in eff.factor("variant").to_dicts() if not r["reference"]]
    assert all(r["p_value"] is not None for r in rows)  # a test is still run and shown ...
    assert all(r["verdict"] is None for r in rows)  # ... but nothing is judged by it
    assert all("too few seeds for a verdict" in r["note"] for r in rows)
    text = eff.render()
    assert "none*" in text and "* no_batchnorm: n = 2 < 3 on a side" in text


def test_partly_paired_seeds_fall_back_to_welch_with_a_note(tmp_path: Path) -> None:
    exp = ablation_experiment(repeats=3)
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        for r in range(3):
            seed = 900 + i if (name == "gelu" and r == 2) else 500 + r
            b.finished(i, overrides, 0.9 + 0.01 * r + 0.001 * i, variant=name, repeat=r, seed=seed, n_steps=3)
            i += 1
    eff = load(tmp_path / "s").effects()
    rows = {r["level"]: r for r in eff.factor("variant").to_dicts()}
    assert rows["no_dropout"]["test"] == "paired"
    assert rows["gelu"]["test"] == "welch" and "seeds pair for 2 of 3" in rows["gelu"]["note"]
    assert rows["gelu"]["verdict"] is not None  # a note about the test is not a missing verdict
