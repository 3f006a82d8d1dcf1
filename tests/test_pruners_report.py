"""A sweep with pruned trials in the report: each listed with its last value and rung, left out
of the effects (the report says so), and the compute every trial spent."""

from __future__ import annotations

from pathlib import Path

from analysis.synthstore import StoreBuilder, search_experiment

from ablator.analysis import load, write_report
from ablator.store import open_store


def test_the_report_lists_pruned_trials_and_compute(tmp_path: Path) -> None:
    exp = search_experiment(kind="random", trials=12, space={"model.dropout": {"choice": [0.0, 0.2, 0.5]}})
    exp["metric"] = {"name": "val_accuracy", "mode": "max"}
    exp["design"]["pruner"] = {"kind": "asha", "min_steps": 3, "reduction_factor": 3, "max_steps": 27}
    b = StoreBuilder(open_store(str(tmp_path / "s")), exp)
    for i in range(12):
        dropout = [0.0, 0.2, 0.5][i % 3]
        if i % 3 == 2:  # pruned at rung 1 (step 9) or rung 0 (step 3)
            steps = 9 if i % 2 else 3
            b.finished(i, {"model.dropout": dropout}, 0.4 + i / 100, n_steps=steps, status="pruned")
        else:
            b.finished(i, {"model.dropout": dropout}, 0.8 + i / 100, n_steps=27)
    res = load(tmp_path / "s")
    md = write_report(res, tmp_path / "out").markdown.read_text()
    assert "## Compute" in md
    assert "240 trial-steps over 12 finished trials: completed 216 (90%), pruned 24 (10%)." in md
    assert "4 trial(s) were pruned by ASHA" in md
    assert "left out of the effects (which count trials with status completed, early_stopped)" in md
    # every trial's compute; a pruned one with its last value and the rung where it stopped
    assert "| #0 | completed | 27 | 10.0 s | 0.8 | - |" in md
    assert "| #5 | pruned | 9 | 10.0 s | 0.45 | rung 1 (step 9) |" in md
    assert "| #2 | pruned | 3 | 10.0 s | 0.42 | rung 0 (step 3) |" in md
    assert res.effects().n_used == 8  # the 8 completed trials
