"""Figures checked from the artists matplotlib drew: colours, line styles, labels, order, bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ablator.analysis import compute_effects, figures, load, text
from ablator.store import open_store
from analysis.synthstore import StoreBuilder, ablation_experiment, search_experiment
from analysis.test_analysis_effects import ablation_store, search_store


def _curve_lines(fig: object) -> list[Line2D]:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_learning_curves_have_one_colour_per_line_and_a_dashed_reference(tmp_path: Path) -> None:
    ablation_store(tmp_path / "s")
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    factor = eff.factors[0]
    fig = figures.curves_figure(res, eff, factor)
    assert fig is not None
    lines = _curve_lines(fig)
    colours = [to_hex(ln.get_color()) for ln in lines]
    assert len(lines) == 4 and len(set(colours)) == 4, colours
    styles = {str(ln.get_label()).split(" (")[0]: ln.get_linestyle() for ln in lines}
    assert styles == {"baseline": "--", "no_dropout": "-", "gelu": "-", "no_batchnorm": "-"}
    # Drawn (and so listed in the legend) in the table's order.
    assert [str(ln.get_label()).split(" (")[0] for ln in lines] == eff.factor("variant")["level"].to_list()
    leg = fig.axes[0].get_legend()
    assert leg is not None
    legend = [t.get_text() for t in leg.get_texts()]
    assert legend[0] == "baseline (n=4) reference"


def test_search_legends_name_the_factor(tmp_path: Path) -> None:
    search_store(tmp_path / "s", n=30)
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    dropout = next(f for f in eff.factors if f.name == "model.dropout")
    fig = figures.curves_figure(res, eff, dropout)
    assert fig is not None
    labels = [str(ln.get_label()) for ln in _curve_lines(fig)]
    assert [lab.split(" (")[0] for lab in labels] == ["dropout=0", "dropout=0.2", "dropout=0.5"]
    assert len({to_hex(ln.get_color()) for ln in _curve_lines(fig)}) == 3
    box = figures.categorical_figure(res, eff, dropout)
    assert box is not None
    leg = box.axes[0].get_legend()
    assert leg is not None
    legend = [t.get_text() for t in leg.get_texts()]
    assert "dropout=0.2: mean (reference)" in legend and not any(t.endswith(" mean") for t in legend)


def test_ablation_chart_follows_the_table_colours_by_adjusted_p_and_prints_its_p(tmp_path: Path) -> None:
    ablation_store(tmp_path / "s")
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    fig = figures.ablation_figure(eff, eff.factors[0])
    assert fig is not None
    ax = fig.axes[0]
    table = [r for r in eff.factor("variant").to_dicts() if not r["reference"]]
    ticks = [t.get_text().split(" (n=")[0] for t in ax.get_yticklabels()]
    ys = [t.get_position()[1] for t in ax.get_yticklabels()]
    top_down = [name for _, name in sorted(zip(ys, ticks, strict=True), reverse=True)]
    assert top_down == [r["level"] for r in table]  # the table's first row on top
    assert all(isinstance(p, Rectangle) for p in ax.patches)  # bars
    bars = {round(p.get_y() + p.get_height() / 2): p for p in ax.patches if isinstance(p, Rectangle)}
    for y, name in zip(ys, ticks, strict=True):
        row = next(r for r in table if r["level"] == name)
        colour = to_hex(bars[round(y)].get_facecolor())
        expected = {"better": figures.BETTER, "worse": figures.WORSE, "unclear": figures.NEUTRAL}[
            row["verdict"]
        ]
        assert colour == expected, (name, row["verdict"])
    labels = [t.get_text() for t in ax.texts]
    for row in table:
        assert any(text.p_label(row, eff.adjust) in lab for lab in labels), row["level"]
        # The same p text as the table cells.
        cells = text.level_cells(row)
        raw = cells[9] if cells[9].startswith("<") else "= " + cells[9]
        assert f"p {raw}, holm {cells[10]}" == text.p_label(row, "holm")
    # Scaled to the effects: the largest difference spans most of the axis.
    left, right = ax.get_xlim()
    biggest = max(abs(r["diff"]) for r in table)
    assert biggest > 0.25 * (right - left)


def test_ablation_chart_without_enough_seeds_is_hatched_and_says_why(tmp_path: Path) -> None:
    exp = ablation_experiment(repeats=2)
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        for r in range(2):
            b.finished(i, overrides, 0.8 + 0.01 * i + 0.003 * r * r, variant=name, repeat=r, n_steps=3)
            i += 1
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    fig = figures.ablation_figure(eff, eff.factors[0])
    assert fig is not None
    ax = fig.axes[0]
    assert {p.get_hatch() for p in ax.patches} == {"///"}
    assert {to_hex(p.get_facecolor()) for p in ax.patches} == {figures.NO_VERDICT}
    assert all("no verdict: n < 3" in t.get_text() for t in ax.texts)


def test_parallel_coordinates_have_a_colour_scale_and_full_labels(tmp_path: Path) -> None:
    exp = search_experiment(trials=20)
    exp["design"]["space"]["train.optimizer.weight_decay_long_name"] = {"range": [0.0, 1.0]}
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    rng = np.random.default_rng(0)
    for i in range(20):
        ov = {
            "model.dropout": [0.0, 0.2, 0.5][i % 3],
            "train.optimizer.lr": float(10 ** rng.uniform(-4, -1)),
            "model.activation": ["relu", "gelu"][i % 2],
            "train.optimizer.weight_decay_long_name": float(rng.uniform(0, 1)),
        }
        b.finished(i, ov, float(rng.uniform(0.2, 0.6)), metric="val_loss", n_steps=3)
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    fig = figures.parallel_figure(res, eff)
    assert fig is not None
    assert len(fig.axes) == 2  # the plot and its colour bar
    bar = fig.axes[1]
    assert "val_loss" in bar.get_ylabel()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "train.optimizer.weight_decay_long_name" in labels and "train.optimizer.lr (log)" in labels
    colours = {
        to_hex(ln.get_color()) for ln in fig.axes[0].get_lines() if len(np.asarray(ln.get_xdata())) > 2
    }
    assert len(colours) > 10  # coloured by value, not one colour per rank bucket


def test_bounded_metric_bands_are_clipped_and_the_figure_says_so(tmp_path: Path) -> None:
    exp = ablation_experiment(repeats=3)
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        for r, final in enumerate([0.96, 0.999, 1.0]):
            b.finished(i, overrides, final, variant=name, repeat=r, n_steps=5)
            i += 1
    res = load(tmp_path / "s")
    assert res.bounds() == (0.0, 1.0, "guessed")
    assert res.bounds("train_loss") is None
    eff = compute_effects(res)
    fig = figures.curves_figure(res, eff, eff.factors[0])
    assert fig is not None
    ax = fig.axes[0]
    tops = [float(np.max(np.asarray(c.get_paths()[0].vertices)[:, 1])) for c in ax.collections]
    assert tops and max(tops) <= 1.0
    # Unclipped, mean + std of the last step would pass 1.
    last = np.array([0.96, 0.999, 1.0])
    assert last.mean() + last.std(ddof=1) > 1.0
    notes = [t for t in ax.texts if "bands clipped to [0, 1]" in t.get_text()]
    assert len(notes) == 1
    # the note sits below the axes and their "step" label, inside the figure: it can collide
    # with neither the legend nor the curves
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    note = notes[0].get_window_extent(renderer)
    legend = ax.get_legend()
    assert legend is not None and not note.overlaps(legend.get_window_extent(renderer))
    assert note.y1 <= ax.get_window_extent(renderer).y0
    assert note.y1 <= ax.xaxis.label.get_window_extent(renderer).y0
    assert note.y0 >= 0 and note.x0 >= 0 and note.x1 <= fig.bbox.x1


def test_declared_bounds_and_a_percent_accuracy(tmp_path: Path) -> None:
    exp = ablation_experiment(repeats=2)
    exp["metric"]["bounds"] = [0, 100]
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    b.finished(0, {}, 97.0, n_steps=3)
    res = load(tmp_path / "s")
    assert res.bounds() == (0.0, 100.0, "experiment")
    exp2 = ablation_experiment(repeats=2)
    b2 = StoreBuilder(open_store(tmp_path / "p"), exp2)
    b2.finished(0, {}, 97.0, n_steps=3)  # an accuracy in percent: not a proportion
    assert load(tmp_path / "p").bounds() is None


def test_numeric_figure_prints_the_trend_tables_p_values(tmp_path: Path) -> None:
    search_store(tmp_path / "s", n=30)
    res = load(tmp_path / "s")
    eff = compute_effects(res)
    lr = next(f for f in eff.factors if f.name == "train.optimizer.lr")
    fig = figures.numeric_figure(res, eff, lr)
    assert fig is not None
    row = eff.trends.filter(eff.trends["factor"] == lr.name).row(0, named=True)
    cells = text.trend_cells(row)  # factor, n, rho, p, p adj., ...
    raw = cells[3] if cells[3].startswith("<") else "= " + cells[3]
    notes = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"(p {raw}, holm {cells[4]})" in notes
