"""Search spaces: parsing, validation against the config type, grid values, conditional groups."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fixtures.toy import ToyConfig

from ablator.errors import ConfigError
from ablator.space import Choice, ExtremePicker, Fixed, Group, Range, UnitPicker, load_space, parse_space

OPTIMIZERS = {
    "choice": [
        {
            "name": "sgd",
            "lr": {"range": [1e-3, 1e-1], "log": True, "bins": 3},
            "args": {"momentum": {"choice": [0.0, 0.9]}},
        },
        {"name": "adam", "lr": {"range": [1e-4, 1e-2], "log": True, "step": 10}},
        {"name": "adamw", "lr": 3e-4},
    ]
}


def test_parse_dimensions() -> None:
    space = load_space(
        {
            "model.dropout": {"choice": [0.0, 0.2, 0.5]},
            "model.hidden": {"range": [16, 64], "step": 16},
            "train.grad_clip": {"range": [1e-4, 1e-2], "log": True},
            "train.epochs": {"value": 3},
            "train.optimizer": OPTIMIZERS,
        },
        ToyConfig,
    )
    dropout, hidden, lr, epochs, opt = space.dims
    assert isinstance(dropout, Choice) and dropout.options == (0.0, 0.2, 0.5)
    assert isinstance(hidden, Range) and hidden.integer and hidden.grid_values() == [16, 32, 48, 64]
    assert isinstance(lr, Range) and lr.log and not lr.integer and lr.grid_values() is None
    assert isinstance(epochs, Fixed) and epochs.value == 3
    assert isinstance(opt, Choice) and opt.labels() == ["sgd", "adam", "{name: adamw, lr: 0.0003}"]
    sgd = opt.options[0]
    assert isinstance(sgd, Group) and sgd.template == {"name": "sgd", "args": {}}
    assert [d.name for d in sgd.dims] == ["train.optimizer[0].lr", "train.optimizer[0].args.momentum"]
    assert [d.path for d in sgd.dims] == ["lr", "args.momentum"]
    # every range and choice has its own coordinate, conditional ones included
    conditional = [*sgd.dims, *opt.options[1].dims]
    assert all(isinstance(d, (Range, Choice)) for d in conditional)
    coords = [dropout.coord, hidden.coord, lr.coord, opt.coord]
    coords += [d.coord for d in conditional if isinstance(d, (Range, Choice))]
    assert sorted(coords) == list(range(space.n_coords)) and space.n_coords == 7
    assert ("train.grad_clip", "range [0.0001, 0.01] log") in space.describe()


def test_conditional_choice_replaces_the_whole_value() -> None:
    space = load_space({"train.optimizer": OPTIMIZERS}, ToyConfig)
    values = [space.grid_point(i)["train.optimizer"] for i in range(space.grid_size())]
    assert space.grid_size() == 3 * 2 + 3 + 1
    assert values[0] == {"name": "sgd", "args": {"momentum": 0.0}, "lr": 0.001}
    assert values[5] == {"name": "sgd", "args": {"momentum": 0.9}, "lr": 0.1}
    assert [v["lr"] for v in values[6:9]] == [1e-4, 1e-3, 1e-2]  # log factor 10, tidied
    assert values[9] == {"name": "adamw", "lr": 3e-4}
    assert all("args" not in v for v in values[6:])  # sgd's args never leak into adam


def test_grid_values() -> None:
    def values(spec: dict[str, Any], path: str = "model.dropout") -> list[Any] | None:
        dim = load_space({path: spec}, ToyConfig).dims[0]
        assert isinstance(dim, Range)
        return dim.grid_values()

    assert values({"range": [0.0, 0.5], "step": 0.1}) == [
        0.0,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
    ]  # no 0.30000000000000004
    assert values({"range": [0.0, 1.0], "bins": 5}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert values({"range": [1e-4, 1e-1], "log": True, "bins": 4}) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert values({"range": [0.0, 1.0], "bins": 1}) == [0.0]
    assert values({"range": [0.0, 1.0]}) is None
    assert values({"range": [1, 4]}, "model.hidden") == [1, 2, 3, 4]  # int ranges default to step 1
    assert values({"range": [1, 10], "bins": 3}, "model.hidden") == [1, 6, 10]
    assert values({"range": [8, 256], "log": True, "step": 2}, "model.hidden") == [8, 16, 32, 64, 128, 256]
    assert values({"range": [1, 3], "bins": 5}, "model.hidden") == [1, 2, 3]  # rounded, deduplicated
    assert values({"range": [8, 256], "log": True}, "model.hidden") is None  # log int: needs step or bins
    assert values({"range": [0, 1], "int": True}, "model.dropout") == [0, 1]


def test_from_unit_stays_in_bounds() -> None:
    dims = load_space(
        {
            "model.dropout": {"range": [0.1, 0.2]},
            "model.hidden": {"range": [16, 256], "log": True},
            "train.optimizer.lr": {"range": [1e-5, 1e-1], "log": True},
            "train.batch_size": {"range": [1, 3]},
        },
        ToyConfig,
    ).dims
    for dim in dims:
        assert isinstance(dim, Range)
        for u in [0.0, 1e-12, 0.25, 0.5, 0.999999999999, 1.0]:
            v = dim.from_unit(u)
            assert dim.lo <= v <= dim.hi, (dim.name, u, v)
            assert isinstance(v, int) == dim.integer
        assert dim.from_unit(0.0) == dim.lo
    batch = dims[3]
    assert isinstance(batch, Range)
    assert [batch.from_unit(u) for u in (0.0, 0.34, 0.67, 0.99)] == [1, 2, 3, 3]


def test_draw_in_preorder_only_active_dimensions() -> None:
    space = load_space({"model.dropout": {"range": [0.0, 1.0]}, "train.optimizer": OPTIMIZERS}, ToyConfig)
    asked: list[str] = []

    def unit(dim: Range | Choice) -> float:
        asked.append(dim.name)
        return 0.99 if dim.name == "train.optimizer" else 0.5

    point = space.draw(UnitPicker(unit))
    assert point == {"model.dropout": 0.5, "train.optimizer": {"name": "adamw", "lr": 3e-4}}
    assert asked == ["model.dropout", "train.optimizer"]  # the inactive options' dims are not drawn
    assert space.draw(ExtremePicker(last=False))["train.optimizer"]["name"] == "sgd"


def test_all_problems_with_locations() -> None:
    bad = {
        "model.dropot": {"choice": [0.1]},
        "model.activation": {"range": [0, 1]},
        "model.hidden": {"range": [1.5, 3], "stepp": 1},
        "model.dropout": {"choice": [0.1, "x", 0.1]},
        "train.batch_size": 5,
        "train.epochs": {"choice": []},
        "train.grad_clip": {"range": [0.0, 1.0], "log": True, "step": 0.5, "bins": 3},
        "train.early_stopping_min_delta": {"range": [1.0, 0.5]},
        "extra.depth": {"value": "deep"},
        "extra.label": {"choice": ["a"], "range": [0, 1]},
        "train.optimizer": {
            "choice": [
                {"name": "sgd", "lrr": {"range": [0.1, 0.2]}},
                {"name": "adam", "lr": {"choice": ["fast"]}},
            ]
        },
    }
    space, problems = parse_space(bad, ToyConfig)
    assert space is None
    expected = [
        "$.design.space['model.dropot']: unknown config path 'model.dropot': $.model: unknown key 'dropot' (did you mean 'dropout'?)",
        "$.design.space['model.activation']: a range needs an int or float field, but this one is one of 'relu', 'gelu', 'tanh'",
        "$.design.space['model.hidden']: unknown key 'stepp' in a range spec (did you mean 'step'?)",
        "$.design.space['model.hidden'].range[0]: bound 1.5 is not an integer (the field is int)",
        "$.design.space['model.dropout'].choice[1]: expected float, found str 'x'",
        "$.design.space['model.dropout'].choice[2]: duplicate of option 0 (0.1)",
        "$.design.space['train.batch_size']: expected {choice: [...]}, {range: [lo, hi]}, {value: x}",
        "$.design.space['train.epochs'].choice: choice needs a non-empty list of options, found a list []",
        "$.design.space['train.grad_clip'].range: a log range needs lo > 0, found 0.0",
        "$.design.space['train.grad_clip']: give step or bins, not both",
        "$.design.space['train.grad_clip'].step: with log: true, step is a multiplicative factor and must be > 1",
        "$.design.space['train.early_stopping_min_delta'].range: lo (1.0) is greater than hi (0.5)",
        "$.design.space['extra.depth'].value: expected int, found str 'deep'",
        "$.design.space['extra.label']: a spec has exactly one of choice, range, value; found choice, range",
        "$.design.space['train.optimizer'].choice[0]: unknown key 'lrr' (did you mean 'lr'?)",
        "$.design.space['train.optimizer'].choice[1].lr.choice[0]: expected float, found str 'fast'",
    ]
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems
    with pytest.raises(ConfigError) as info:
        load_space(bad, ToyConfig)
    assert info.value.problems == problems


def test_group_must_make_a_valid_value() -> None:
    _, problems = parse_space(
        {"train.optimizer": {"choice": [{"name": "sgdd", "lr": {"range": [0.1, 0.2]}}]}}, ToyConfig
    )
    assert len(problems) == 1
    assert problems[0].startswith(
        "$.design.space['train.optimizer'].choice[0].name: unknown torch.optim optimizer 'sgdd' (did you mean 'sgd'?)"
    )
    # a template whose values violate a check() rule at one corner of its sub-space
    _, problems = parse_space({"train": {"epochs": {"choice": [None, 3]}, "max_steps": None}}, ToyConfig)
    assert problems == [
        "$.design.space.train: set epochs or max_steps (both are null, so training would never stop)"
    ]


def test_top_level_group_without_choice() -> None:
    space = load_space({"train.optimizer": {"name": "sgd", "lr": {"choice": [0.1, 0.01]}}}, ToyConfig)
    assert [space.grid_point(i) for i in range(2)] == [
        {"train.optimizer": {"name": "sgd", "lr": 0.1}},
        {"train.optimizer": {"name": "sgd", "lr": 0.01}},
    ]


def test_overlapping_paths_refused() -> None:
    _, problems = parse_space(
        {"train.optimizer": {"value": {"name": "sgd"}}, "train.optimizer.lr": {"choice": [0.1]}}, ToyConfig
    )
    assert problems == [
        "$.design.space['train.optimizer.lr']: lies inside 'train.optimizer', which the space sets as a whole"
    ]


def test_grid_point_out_of_range() -> None:
    space = load_space({"model.dropout": {"choice": [0.0, 0.5]}}, ToyConfig)
    with pytest.raises(ConfigError, match="grid point 2 out of range: the grid has 2 points"):
        space.grid_point(2)
    cont = load_space({"model.dropout": {"range": [0.0, 0.5]}}, ToyConfig)
    assert cont.grid_problems() and "needs a step or bins" in cont.grid_problems()[0]
    assert not space.grid_problems()


def test_untyped_ranges_in_free_form_mappings() -> None:
    space = load_space(
        {
            "train.optimizer.args.momentum": {"range": [0.0, 0.9], "bins": 2},
            "train.optimizer.args.k": {"range": [1, 3]},
        },
        ToyConfig,
    )
    mom, k = space.dims
    assert isinstance(mom, Range) and not mom.integer and mom.grid_values() == [0.0, 0.9]
    assert isinstance(k, Range) and k.integer and k.grid_values() == [1, 2, 3]  # int bounds on an Any field
    assert math.prod([2, 3]) == space.grid_size()
