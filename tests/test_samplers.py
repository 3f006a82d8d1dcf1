"""Designs as pure functions: determinism (also across processes), coverage, seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.toy import ToyConfig
from hypothesis import given, settings
from hypothesis import strategies as st
from testkit import TESTS, child_env

from ablator.config import canonical_json
from ablator.errors import ConfigError
from ablator.samplers import grid, locate, quasi_random, random, repeat_seed, trial_seed
from ablator.space import Range, Space, load_space

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "identity_v1.json"

SPACE = {
    "model.dropout": {"range": [0.0, 0.5]},
    "model.hidden": {"range": [8, 512], "log": True},
    "model.activation": {"choice": ["relu", "gelu", "tanh"]},
    "train.optimizer": {
        "choice": [
            {
                "name": "sgd",
                "lr": {"range": [1e-3, 1e-1], "log": True},
                "args": {"momentum": {"choice": [0.0, 0.9]}},
            },
            {"name": "adam", "lr": {"range": [1e-4, 1e-2], "log": True}},
        ]
    },
}


def space() -> Space:
    return load_space(SPACE, ToyConfig)


# --- seeds and indexes -------------------------------------------------------------------------


def test_trial_seed_golden_and_range() -> None:
    golden = json.loads(GOLDEN.read_text())["seeds"]
    assert len(golden) >= 5
    for design_seed, index, repeat, expected in golden:
        assert trial_seed(design_seed, index, repeat) == expected
    seeds = {trial_seed(0, i, r) for i in range(200) for r in range(3)}
    assert len(seeds) == 600  # distinct (a collision here would be a 1-in-3500 fluke of sha256)
    assert all(0 <= s < 2**31 for s in seeds)


def test_repeat_seed_golden_and_range() -> None:
    # Paired seeds are part of the store's meaning: they must never change between versions.
    assert repeat_seed(0, 0) == 464413143 and repeat_seed(7, 2) == 1627616900
    seeds = {repeat_seed(d, r) for d in range(20) for r in range(30)}
    assert len(seeds) == 600 and all(0 <= s < 2**31 for s in seeds)
    assert repeat_seed(0, 0) not in {trial_seed(0, i, 0) for i in range(100)}


def test_locate() -> None:
    # grid / ablation: round by round (every point once, then the next repeat)
    assert [locate("ablation", i, repeats=2, points=3) for i in range(7)] == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2),
    ]  # fmt: skip
    assert locate("grid", 5, repeats=1, points=5) == (0, 1)  # an extension: another round
    # sampled designs: a point's repeats together
    assert [locate("random", i, repeats=3) for i in range(7)] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0),
    ]  # fmt: skip
    with pytest.raises(ConfigError):
        locate("random", -1, repeats=1)
    with pytest.raises(ConfigError):
        locate("grid", 0, repeats=1, points=None)


# --- determinism -------------------------------------------------------------------------------


def test_random_golden() -> None:
    for case in json.loads(GOLDEN.read_text())["random"]:
        sp = load_space(case["space"], ToyConfig)
        assert random(sp, case["seed"], case["point"]) == case["overrides"]


@pytest.mark.parametrize("sampler", [random, quasi_random])
def test_sampled_points_are_pure_functions(sampler: Any) -> None:
    sp = space()
    first = [sampler(sp, 3, i) for i in range(12)]
    assert [sampler(sp, 3, i) for i in reversed(range(12))] == list(reversed(first))  # any order
    assert first != [sampler(sp, 4, i) for i in range(12)]  # the seed matters
    assert len({canonical_json(p) for p in first}) == 12
    for p in first:
        assert set(p) == set(SPACE)
        assert 0.0 <= p["model.dropout"] <= 0.5 and 8 <= p["model.hidden"] <= 512
        opt = p["train.optimizer"]
        if opt["name"] == "sgd":
            assert set(opt) == {"name", "lr", "args"} and 1e-3 <= opt["lr"] <= 1e-1
        else:
            assert set(opt) == {"name", "lr"} and 1e-4 <= opt["lr"] <= 1e-2


def test_quasi_random_matches_the_sequential_sobol_sequence() -> None:
    import torch
    from torch.quasirandom import SobolEngine

    sp = load_space({"model.dropout": {"range": [0.0, 1.0]}, "extra.depth": {"range": [0, 7]}}, ToyConfig)
    engine = SobolEngine(dimension=sp.n_coords, scramble=True, seed=11)
    rows = engine.draw(16, dtype=torch.float64)
    for i in range(16):
        u0, u1 = (float(x) for x in rows[i])
        assert quasi_random(sp, 11, i) == {
            "model.dropout": pytest.approx(u0, abs=1e-11),
            "extra.depth": int(u1 * 8),
        }


def test_quasi_random_covers_evenly() -> None:
    # The first 2^k points of a (scrambled) Sobol sequence put exactly one point in each of
    # 2^k equal bins of every coordinate: better than random at the same budget.
    sp = load_space(
        {"model.dropout": {"range": [0.0, 1.0]}, "train.grad_clip": {"range": [0.0, 1.0]}}, ToyConfig
    )
    pts = [quasi_random(sp, 5, i) for i in range(32)]
    for path in ("model.dropout", "train.grad_clip"):
        assert sorted(int(p[path] * 32) for p in pts) == list(range(32))


@pytest.mark.procs
def test_samplers_are_deterministic_in_another_process() -> None:
    code = """
import json, sys
from fixtures.toy import ToyConfig
from ablator.samplers import grid, quasi_random, random
from ablator.space import load_space
space = load_space(json.loads(sys.stdin.read()), ToyConfig)
grid_space = load_space({"model.dropout": {"choice": [0.0, 0.5]}, "model.hidden": {"range": [8, 32], "step": 8}}, ToyConfig)
out = {
    "random": [random(space, 9, i) for i in range(20)],
    "quasi_random": [quasi_random(space, 9, i) for i in range(20)],
    "grid": [grid(grid_space, 9, i) for i in range(8)],
}
print(json.dumps(out))
"""
    env = child_env(TESTS, PYTHONHASHSEED="777")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(SPACE),
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    sp = space()
    gs = load_space(
        {"model.dropout": {"choice": [0.0, 0.5]}, "model.hidden": {"range": [8, 32], "step": 8}}, ToyConfig
    )
    assert theirs["random"] == [random(sp, 9, i) for i in range(20)]
    assert theirs["quasi_random"] == [quasi_random(sp, 9, i) for i in range(20)]
    assert theirs["grid"] == [grid(gs, 9, i) for i in range(8)]


# --- grid coverage (property) --------------------------------------------------------------------

choice_values = st.lists(st.integers(0, 50), min_size=1, max_size=4, unique=True)
int_ranges = st.tuples(st.integers(0, 20), st.integers(0, 5), st.integers(1, 3)).map(
    lambda t: {"range": [t[0], t[0] + t[1] * t[2]], "step": t[2]}
)
float_bins = st.tuples(st.floats(-5, 5, allow_nan=False), st.floats(0.5, 5), st.integers(1, 4)).map(
    lambda t: {"range": [t[0], t[0] + t[1]], "bins": t[2]}
)
PATHS = ["model.hidden", "extra.depth", "train.batch_size", "train.grad_accum"]


@st.composite
def grid_spaces(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True)):
        lo = 1 if path.startswith("train.") else 0  # batch_size and grad_accum must be >= 1
        kind = draw(st.sampled_from(["choice", "range"]))
        if kind == "choice":
            spec[path] = {"choice": [v + lo for v in draw(choice_values)]}
        else:
            r: dict[str, Any] = draw(int_ranges)
            spec[path] = {"range": [r["range"][0] + lo, r["range"][1] + lo], "step": r["step"]}
    if draw(st.booleans()):
        spec["model.dropout"] = draw(float_bins)
    if draw(st.booleans()):  # a conditional choice with sub-spaces of different sizes
        spec["train.optimizer"] = {
            "choice": [
                {
                    "name": "sgd",
                    "lr": {
                        "choice": draw(st.lists(st.sampled_from([0.1, 0.01, 0.001]), min_size=1, unique=True))
                    },
                },
                {"name": "adam", "lr": {"range": [1e-4, 1e-2], "log": True, "bins": draw(st.integers(1, 3))}},
                {"name": "adamw"},
            ]
        }
    return spec


@given(spec=grid_spaces())
@settings(max_examples=60, deadline=None)
def test_grid_covers_every_point_exactly_once(spec: dict[str, Any]) -> None:
    sp = load_space(spec, ToyConfig)
    size = sp.grid_size()
    points = [sp.grid_point(i) for i in range(size)]
    keys = {canonical_json(p) for p in points}
    assert len(keys) == size  # no point twice
    # ... and every combination of the dimensions' values is there (the full factorial)
    expected = 1
    for path, s in spec.items():
        dim = next(d for d in sp.dims if d.path == path)
        if isinstance(dim, Range):
            values = dim.grid_values()
            assert values is not None
            assert {p[path] for p in points} == set(values)
            expected *= len(values)
        elif "choice" in s and path != "train.optimizer":
            assert {p[path] for p in points} == set(s["choice"])
            expected *= len(s["choice"])
        else:
            opts = {canonical_json(p[path]) for p in points}
            expected *= len(opts)
    assert size == expected
    with pytest.raises(ConfigError):
        sp.grid_point(size)


@given(seed=st.integers(0, 2**32), point=st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_random_is_a_function_of_seed_and_point(seed: int, point: int) -> None:
    sp = space()
    assert random(sp, seed, point) == random(sp, seed, point)


def test_negative_seed_or_point_refused() -> None:
    with pytest.raises(ConfigError, match=r"design\.seed must be >= 0"):
        random(space(), -1, 0)
    with pytest.raises(ConfigError, match="point index must be >= 0"):
        quasi_random(space(), 0, -3)
