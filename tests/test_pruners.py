"""The pruners' rules against Optuna's (same (trial, step, value) reports, same decisions), the
store-backed part (a resumed trial keeps its rung decision), and the design option's checks."""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

import pytest

from ablator import layout, records
from ablator.errors import ConfigError
from ablator.experiment import experiment_from_dict, experiment_hash
from ablator.pruners import Asha, Median, Pruning, asha_promotes, median_prunes, parse_pruner, rungs
from ablator.store import open_store

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def curves(seed: int, n: int, steps: int) -> list[list[float]]:
    """Learning curves (higher is better) with different finals, noise and crossings."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        final, speed = rng.uniform(0.3, 0.95), rng.uniform(0.05, 0.5)
        out.append([final * (1 - math.exp(-speed * s)) + rng.gauss(0, 0.02) for s in range(1, steps + 1)])
    return out


def interleaved(seed: int, n: int, steps: int, width: int) -> list[tuple[int, int]]:
    """(trial, step) reports as ``width`` asynchronous workers make them: each worker runs one
    trial at a time, and the workers advance in a random order."""
    rng = random.Random(seed + 1)
    queue = list(range(n))
    running: dict[int, int] = {}  # worker -> trial
    pos: dict[int, int] = {}
    order = []
    while queue or running:
        for w in range(width):
            if w not in running and queue:
                running[w] = queue.pop(0)
                pos[running[w]] = 0
        w = rng.choice(sorted(running))
        t = running[w]
        pos[t] += 1
        order.append((t, pos[t]))
        if pos[t] == steps:
            del running[w]
    return order


def run_both(
    cfg: Asha | Median, optuna_pruner: Any, mode: str, seed: int, n: int = 30, steps: int = 27, width: int = 4
) -> tuple[dict[tuple[int, int], bool], dict[tuple[int, int], bool]]:
    """Feed the same reports to ablator's rule (over a store) and to an Optuna study; returns
    the prune decision of every report, per side. A pruned trial reports nothing more; a trial
    that reports its last step completes."""
    values = curves(seed, n, steps)
    if mode == "min":
        values = [[-v for v in c] for c in values]
    store = open_store(f"memory://prune-{uuid.uuid4().hex}")
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize", pruner=optuna_pruner)
    ours: dict[tuple[int, int], bool] = {}
    theirs: dict[tuple[int, int], bool] = {}
    pruning: dict[int, Pruning] = {}
    trials: dict[int, Any] = {}
    stopped_ours: set[int] = set()
    stopped_theirs: set[int] = set()
    for t, step in interleaved(seed, n, steps, width):
        value = values[t][step - 1]
        if t not in pruning:
            pruning[t] = Pruning(cfg, store, t, metric="m", mode=mode)  # type: ignore[arg-type]
            trials[t] = study.ask()
        if t not in stopped_ours:
            why = pruning[t].report(step, value)
            ours[(t, step)] = why is not None
            if why is not None:
                stopped_ours.add(t)
            elif step == steps:
                pruning[t].finished()
        if t not in stopped_theirs:
            trials[t].report(value, step)
            pruned = trials[t].should_prune()
            theirs[(t, step)] = pruned
            if pruned:
                study.tell(trials[t], state=optuna.trial.TrialState.PRUNED)
                stopped_theirs.add(t)
            elif step == steps:
                study.tell(trials[t], value)
    return ours, theirs


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(("min_steps", "rf"), [(1, 3), (2, 2), (3, 3), (1, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asha_decides_like_optunas_successive_halving(mode: str, min_steps: int, rf: int, seed: int) -> None:
    cfg = Asha(min_steps=min_steps, reduction_factor=rf)
    their = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_steps, reduction_factor=rf, min_early_stopping_rate=0
    )
    ours, theirs = run_both(cfg, their, mode, seed)
    assert ours == theirs
    assert sum(ours.values()) >= 5  # the comparison covered real prunes, not only promotions


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(("warmup", "min_trials"), [(0, 1), (3, 5), (10, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_rule_decides_like_optunas_median_pruner(
    mode: str, warmup: int, min_trials: int, seed: int
) -> None:
    cfg = Median(warmup_steps=warmup, min_trials=min_trials)
    their = optuna.pruners.MedianPruner(n_startup_trials=min_trials, n_warmup_steps=warmup, interval_steps=1)
    ours, theirs = run_both(cfg, their, mode, seed)
    assert ours == theirs
    assert sum(ours.values()) >= 3


def test_asha_rungs_and_promotion_rule() -> None:
    cfg = Asha(min_steps=2, reduction_factor=3, max_steps=54)
    assert rungs(cfg, 1) == [] and rungs(cfg, 2) == [0] and rungs(cfg, 17) == [0, 1]
    assert rungs(cfg, 10_000) == [0, 1, 2]  # rung 3 (step 54) is max_steps: a trial there finishes
    # top 1/3 of 6 values: the best 2
    vals = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    assert [asha_promotes(v, vals, 3, "max") for v in vals] == [False, False, True, False, True, False]
    assert [asha_promotes(v, vals, 3, "min") for v in vals] == [True, False, False, False, False, True]
    # fewer than reduction_factor values: only the best so far goes on
    assert asha_promotes(0.5, [0.4, 0.5], 3, "max") and not asha_promotes(0.4, [0.4, 0.5], 3, "max")
    assert not asha_promotes(float("nan"), [0.1, float("nan")], 3, "max")


def test_median_rule_needs_finished_trials_and_warmup() -> None:
    cfg = Median(warmup_steps=5, min_trials=2)
    assert not median_prunes(0.1, [0.5, 0.6], 1, 10, cfg, "max")  # one finished trial: too few
    assert not median_prunes(0.1, [0.5, 0.6], 2, 4, cfg, "max")  # warming up
    assert median_prunes(0.1, [0.5, 0.6], 2, 10, cfg, "max")
    assert not median_prunes(0.7, [0.5, 0.6], 2, 10, cfg, "max")
    assert not median_prunes(0.1, [], 2, 10, cfg, "max")  # nobody reported this step


def test_a_resumed_trial_keeps_its_rung_decisions() -> None:
    store = open_store(f"memory://prune-{uuid.uuid4().hex}")
    cfg = Asha(min_steps=1, reduction_factor=2)
    # trial 0 is alone at rung 0 and 1: promoted; its records say so
    first = Pruning(cfg, store, 0, metric="acc", mode="max")
    assert first.report(1, 0.2) is None and first.report(2, 0.3) is None
    rec = records.decode(store.read(layout.rung(0, 0)), records.RungValue)
    assert (rec.value, rec.step, rec.promoted) == (0.2, 1, True)
    # better trials arrive at rung 0
    for t in (1, 2, 3):
        assert Pruning(cfg, store, t, metric="acc", mode="max").report(1, 0.8 + t / 100) is None
    # a takeover of trial 0 that resumed from scratch (no checkpoint) re-reaches rung 0 with a
    # worse value: the record decides, so it goes on; its first value stays the recorded one
    again = Pruning(cfg, store, 0, metric="acc", mode="max")
    assert again.report(1, 0.1) is None and again.report(2, 0.1) is None
    assert records.decode(store.read(layout.rung(0, 0)), records.RungValue).value == 0.2
    # a pruned trial stays pruned when it is resumed (its record says so), whatever it reports
    worst = Pruning(cfg, store, 4, metric="acc", mode="max")
    why = worst.report(1, 0.0)
    assert why is not None and "rung 0" in why and "top 1/2" in why
    assert Pruning(cfg, store, 4, metric="acc", mode="max").report(1, 0.99) is not None
    # checkpointed state: a restored pruner does not read decided rungs again
    state = again.state()
    restored = Pruning(cfg, open_store(f"memory://prune-{uuid.uuid4().hex}"), 0, metric="acc", mode="max")
    restored.restore(state)
    assert restored.decided == {0: True, 1: True} and restored.report(2, 0.0) is None


def test_the_median_rule_reads_finished_curves_once() -> None:
    store = open_store(f"memory://prune-{uuid.uuid4().hex}")
    cfg = Median(warmup_steps=0, min_trials=2)
    for t, final in ((0, 0.5), (1, 0.7)):
        p = Pruning(cfg, store, t, metric="acc", mode="max")
        for s in (1, 2, 3):
            assert p.report(s, final * s / 3) is None
        p.finished()
    assert len(store.list(layout.CURVES_DIR)) == 2
    # at step 1 the finished trials had 0.1667 and 0.2333: the median is 0.2
    assert Pruning(cfg, store, 2, metric="acc", mode="max").report(1, 0.21) is None
    why = Pruning(cfg, store, 3, metric="acc", mode="max").report(1, 0.19)
    assert why is not None and "median 0.2 of 2 finished trials" in why
    # the checkpointed best carries over a resume: a trial whose best was good is not pruned
    good = Pruning(cfg, store, 4, metric="acc", mode="max")
    good.restore({"curve": [[1, 0.9]]})
    assert good.report(2, 0.2) is None


def design(**pruner: Any) -> dict[str, Any]:
    return {
        "name": "p",
        "entry": "a:b",
        "metric": {"name": "m", "mode": "max"},
        "design": {"kind": "random", "trials": 4, "space": {"x": {"range": [0, 1]}}, **pruner},
    }


def test_the_pruner_option_and_its_errors() -> None:
    exp = experiment_from_dict(design(pruner={"kind": "asha", "min_steps": 3}))
    assert parse_pruner(exp.design.pruner) == (Asha(min_steps=3), [])
    with pytest.raises(ConfigError) as e:
        experiment_from_dict(design(pruner={"kind": "asha", "min_step": 3, "reduction_factor": 1}))
    assert "$.design.pruner.min_step" in str(e.value) and "did you mean 'min_steps'" in str(e.value)
    with pytest.raises(ConfigError, match=r"\$\.design\.pruner\.kind: expected one of asha, median"):
        experiment_from_dict(design(pruner={"kind": "hyperband"}))
    with pytest.raises(ConfigError, match="reduction_factor: must be >= 2"):
        experiment_from_dict(design(pruner={"kind": "asha", "reduction_factor": 1}))
    with pytest.raises(ConfigError, match="warmup_steps: must be >= 0"):
        experiment_from_dict(design(pruner={"kind": "median", "warmup_steps": -1}))


def test_an_ablation_takes_a_pruner_only_when_asked() -> None:
    abl: dict[str, Any] = {
        "name": "a",
        "entry": "a:b",
        "metric": {"name": "m", "mode": "max"},
        "design": {"kind": "ablation", "ablations": {"v": {"x": 1}}, "pruner": {"kind": "median"}},
    }
    with pytest.raises(ConfigError, match="allow_pruning: true"):
        experiment_from_dict(abl)
    abl["design"]["allow_pruning"] = True
    assert experiment_from_dict(abl).design.allow_pruning


def test_an_experiment_without_a_pruner_keeps_its_hash() -> None:
    # the hash of this experiment before design.pruner existed (stored experiments compare it)
    exp = experiment_from_dict(design())
    assert experiment_hash(exp) == "7641b30f23c5aa6508063ce32f3b5807fbeb220a89150bc26e17049334920523"
    assert experiment_hash(experiment_from_dict(design(pruner={"kind": "median"}))) != experiment_hash(exp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hyperband_brackets_decide_like_optunas_halving_per_bracket(seed: int) -> None:
    """With ``brackets: 3`` trial ``i`` runs bracket ``i % 3``: its rungs start at rung
    ``i % 3`` and it competes only within the bracket, as a SuccessiveHalvingPruner with
    ``min_early_stopping_rate = bracket`` fed that bracket's trials alone."""
    cfg = Asha(min_steps=1, reduction_factor=3, brackets=3)
    values = curves(seed, 45, 27)
    store = open_store(f"memory://prune-{uuid.uuid4().hex}")
    studies = [
        optuna.create_study(
            direction="maximize",
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=3, min_early_stopping_rate=b
            ),
        )
        for b in range(3)
    ]
    pruning: dict[int, Pruning] = {}
    trials: dict[int, Any] = {}
    stopped: set[int] = set()
    compared = pruned = 0
    for t, step in interleaved(seed, 45, 27, 4):
        if t in stopped:
            continue
        if t not in pruning:
            pruning[t] = Pruning(cfg, store, t, metric="m", mode="max")
            trials[t] = studies[t % 3].ask()
        value = values[t][step - 1]
        ours = pruning[t].report(step, value) is not None
        trials[t].report(value, step)
        theirs = trials[t].should_prune()
        assert ours == theirs, (t, step)
        compared += 1
        if ours:
            pruned += 1
            stopped.add(t)
            studies[t % 3].tell(trials[t], state=optuna.trial.TrialState.PRUNED)
        elif step == 27:
            studies[t % 3].tell(trials[t], value)
    assert pruned >= 5 and compared > 200
    # records name their bracket; bracket 2 never recorded at rungs 0 and 1
    recs = [records.decode(store.read(e.key), records.RungValue) for e in store.list(layout.PRUNING_DIR)]
    assert {r.bracket for r in recs} == {0, 1, 2}
    assert all(r.rung >= r.bracket and r.bracket == r.trial % 3 for r in recs)


def test_brackets_must_start_below_max_steps() -> None:
    with pytest.raises(ConfigError, match="brackets: bracket 3 would start at step 27"):
        experiment_from_dict(design(pruner={"kind": "asha", "brackets": 4, "max_steps": 27}))
    assert experiment_from_dict(design(pruner={"kind": "asha", "brackets": 3, "max_steps": 27}))
