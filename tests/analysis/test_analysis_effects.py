"""``Results.effects`` on synthetic stores, its numbers checked against scipy.stats."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import scipy.stats as ss

from ablator.analysis import load
from ablator.errors import AnalysisError
from ablator.store import open_store
from analysis.synthstore import StoreBuilder, ablation_experiment, search_experiment

TOL: dict[str, Any] = {"rel": 1e-6, "abs": 1e-12}
MEANS = {"baseline": 0.90, "no_dropout": 0.88, "gelu": 0.905, "no_batchnorm": 0.80}


def ablation_store(
    path: Path, mode: str = "max", repeats: int = 4
) -> tuple[StoreBuilder, dict[str, list[float]]]:
    exp = ablation_experiment(repeats=repeats)
    exp["metric"]["mode"] = mode
    b = StoreBuilder(open_store(path), exp)
    rng = random.Random(11)
    values: dict[str, list[float]] = {}
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        level = name or "baseline"
        for r in range(repeats):
            v = MEANS[level] + rng.gauss(0, 0.004 + 0.01 * r)
            values.setdefault(level, []).append(v)
            b.finished(i, overrides, v, variant=name, repeat=r)
            i += 1
    return b, values


def test_ablation_effects_match_scipy(tmp_path: Path) -> None:
    _, values = ablation_store(tmp_path / "s")
    eff = load(tmp_path / "s").effects()
    assert (eff.metric, eff.mode, eff.value, eff.n_used) == ("val_accuracy", "max", "best", 16)
    rows = {r["level"]: r for r in eff.factor("variant").to_dicts()}
    assert list(rows) == ["baseline", "no_dropout", "gelu", "no_batchnorm"]
    base = np.array(values["baseline"])
    assert rows["baseline"]["reference"] and rows["baseline"]["vs"] == "baseline"
    for level, row in rows.items():
        x = np.array(values[level])
        lo, hi = ss.t.interval(0.95, x.size - 1, loc=x.mean(), scale=ss.sem(x))
        assert row["n"] == 4 and row["n_excluded"] == 0
        assert row["mean"] == pytest.approx(x.mean(), **TOL)
        assert row["std"] == pytest.approx(x.std(ddof=1), **TOL)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, **TOL), pytest.approx(hi, **TOL))
        if level == "baseline":
            assert row["diff"] == 0.0 and row["p_value"] is None
            continue
        test = ss.ttest_ind(x, base, equal_var=False)
        ci = test.confidence_interval(0.95)
        assert row["diff"] == pytest.approx(x.mean() - base.mean(), **TOL)
        assert row["p_value"] == pytest.approx(test.pvalue, **TOL)
        assert row["diff_ci_low"] == pytest.approx(ci.low, **TOL)
        assert row["diff_ci_high"] == pytest.approx(ci.high, **TOL)
        assert row["rel_change"] == pytest.approx((x.mean() - base.mean()) / base.mean(), **TOL)
        assert row["better"] is bool(x.mean() > base.mean())
    by_rank = sorted(rows, key=lambda lv: rows[lv]["rank"])
    assert by_rank == sorted(rows, key=lambda lv: -np.mean(values[lv]))  # max: highest mean first
    assert rows["no_batchnorm"]["p_value"] < 1e-3 and rows["no_batchnorm"]["better"] is False
    text = eff.render()
    assert "no_batchnorm" in text and "diff 95% CI" in text


def test_ranking_follows_the_direction(tmp_path: Path) -> None:
    _, values = ablation_store(tmp_path / "s", mode="min")
    eff = load(tmp_path / "s").effects()
    rows = {r["level"]: r for r in eff.factor("variant").to_dicts()}
    assert rows["no_batchnorm"]["rank"] == 1 and rows["no_batchnorm"]["better"] is True
    assert max(rows, key=lambda lv: rows[lv]["rank"]) == max(values, key=lambda lv: np.mean(values[lv]))


def test_failed_and_diverged_trials_are_excluded_and_counted(tmp_path: Path) -> None:
    b, values = ablation_store(tmp_path / "s")
    gelu = b.spec_for(16, {"model.activation": "gelu"}, variant="gelu", repeat=4)
    b.claim(16, 0, gelu)
    b.attempt(16, 0)
    b.result(16, 0, {"val_accuracy": math.nan}, status="diverged", steps=3)
    b.claim(17, 0, b.spec_for(17, {"model.activation": "gelu"}, variant="gelu", repeat=5))
    for e in range(3):
        if e:
            b.claim(17, e)
        b.failed(17, e)
    b.claim(18, 0, b.spec_for(18, {"model.activation": "gelu"}, variant="gelu", repeat=6))  # running
    eff = load(tmp_path / "s").effects()
    gelu_row = eff.factor("variant").filter(pl.col("level") == "gelu").row(0, named=True)
    assert gelu_row["n"] == 4 and gelu_row["n_excluded"] == 2  # the running one is neither
    assert gelu_row["mean"] == pytest.approx(np.mean(values["gelu"]), **TOL)
    assert eff.n_used == 16 and eff.n_finished == 18
    # A diverged trial counts when its status is asked for (its value is still not finite).
    wide = load(tmp_path / "s").effects(statuses=("completed", "diverged"))
    assert wide.factor("variant").filter(pl.col("level") == "gelu")["n"].item() == 4


def search_store(path: Path, n: int = 60) -> tuple[list[dict[str, Any]], list[float]]:
    exp = search_experiment(trials=n)
    exp["design"]["space"]["model.hidden"] = {"choice": [32, 128]}  # base 64 is not a level
    b = StoreBuilder(open_store(path), exp)
    rng = random.Random(5)
    configs, losses = [], []
    for i in range(n):
        ov: dict[str, Any] = {
            "model.dropout": rng.choice([0.0, 0.2, 0.5]),
            "train.optimizer.lr": 10 ** rng.uniform(-4, -1),
            "model.activation": rng.choice(["relu", "gelu"]),
            "model.hidden": rng.choice([32, 128]),
        }
        loss = (
            0.3 - 0.05 * math.log10(ov["train.optimizer.lr"]) + 0.2 * ov["model.dropout"] + rng.gauss(0, 0.03)
        )
        b.finished(i, ov, loss, metric="val_loss")
        configs.append(ov)
        losses.append(loss)
    return configs, losses


def test_search_factors_levels_and_trends_match_scipy(tmp_path: Path) -> None:
    configs, losses = search_store(tmp_path / "s")
    res = load(tmp_path / "s")
    eff = res.effects()
    assert eff.mode == "min" and eff.metric == "val_loss"
    kinds = {f.name: (f.kind, f.numeric, f.log) for f in eff.factors}
    assert kinds == {
        "model.dropout": ("categorical", True, False),
        "train.optimizer.lr": ("numeric", True, True),
        "model.activation": ("categorical", False, False),
        "model.hidden": ("categorical", True, False),
    }
    y = np.array(losses)
    # dropout: the base config's 0.2 is a level, so it is the reference.
    drop = {r["level"]: r for r in eff.factor("model.dropout").to_dicts()}
    assert list(drop) == ["0", "0.2", "0.5"] and drop["0.2"]["reference"] and drop["0.2"]["vs"] == "baseline"
    d = np.array([c["model.dropout"] for c in configs])
    test = ss.ttest_ind(y[d == 0.5], y[d == 0.2], equal_var=False)
    assert drop["0.5"]["p_value"] == pytest.approx(test.pvalue, **TOL)
    assert drop["0"]["rank"] == 1 and drop["0"]["better"] is True  # lower loss without dropout
    # hidden: base 64 is not a level, so each level is compared with the best one.
    hidden = eff.factor("model.hidden").to_dicts()
    assert {r["vs"] for r in hidden} == {"best"} and [r["reference"] for r in hidden].count(True) == 1
    assert next(r for r in hidden if r["reference"])["rank"] == 1
    # lr: a wide log range, cut into quantile bins that hold every trial once.
    lr = eff.factor("train.optimizer.lr")
    assert lr.height >= 2 and lr["n"].sum() == len(configs) and lr["level"][0].startswith("[")
    trends = {r["factor"]: r for r in eff.trends.to_dicts()}
    assert set(trends) == {"model.dropout", "train.optimizer.lr", "model.hidden"}
    x = np.array([c["train.optimizer.lr"] for c in configs])
    rho = ss.spearmanr(x, y)
    fit = ss.linregress(np.log10(x), y)
    t = trends["train.optimizer.lr"]
    assert t["x_scale"] == "log10" and t["n"] == len(configs)
    assert t["spearman_rho"] == pytest.approx(rho.statistic, **TOL)
    assert t["spearman_p"] == pytest.approx(rho.pvalue, **TOL)
    assert t["slope"] == pytest.approx(fit.slope, **TOL) and t["intercept"] == pytest.approx(
        fit.intercept, **TOL
    )
    assert t["slope_p"] == pytest.approx(fit.pvalue, **TOL)
    assert trends["model.dropout"]["x_scale"] == "linear"
    assert res.best(3)["value"].to_list() == sorted(losses)[:3]


def test_other_metric_direction_and_errors(tmp_path: Path) -> None:
    ablation_store(tmp_path / "s")
    res = load(tmp_path / "s")
    eff = res.effects("train_loss")
    assert (eff.mode, eff.mode_source) == ("min", "guessed")
    assert "guessed" in eff.render()
    assert res.effects("train_loss", mode="max").mode_source == "given"
    with pytest.raises(AnalysisError, match="val_accuracy"):
        res.effects("bleu")
    with pytest.raises(AnalysisError, match="confidence"):
        res.effects(confidence=1.5)
    with pytest.raises(AnalysisError, match="no factor"):
        eff.factor("nope")
    data = eff.to_dict()
    assert data["levels"][0]["factor"] == "variant" and len(data["levels"]) == 4


def test_no_finished_trials_gives_empty_tables(tmp_path: Path) -> None:
    b = StoreBuilder(open_store(tmp_path / "s"), ablation_experiment())
    b.claim(0, 0, b.spec_for(0, {}))
    eff = load(tmp_path / "s").effects()
    assert eff.n_used == 0 and eff.levels["n"].sum() == 0 and eff.levels["rank"].null_count() == 4
