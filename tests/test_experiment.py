"""Experiment files: schema, entry points, designs, budgets, trial specs, overrides."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from fixtures.toy import CheckedConfig, ToyConfig, ToyWrapper, trial
from testkit import TESTS, child_env

import ablator
from ablator.config import config_hash, from_dict, to_dict, write_data
from ablator.entrypoint import resolve_entry
from ablator.errors import AblatorError, ConfigError, EntryPointError
from ablator.experiment import (
    Experiment,
    budget,
    experiment_from_dict,
    experiment_hash,
    load_experiment,
    spec_from_overrides,
    trial_spec,
    validate,
)
from ablator.samplers import repeat_seed, trial_seed

ROOT = Path(__file__).resolve().parent.parent


def experiment(**design: Any) -> dict[str, Any]:
    """A valid experiment as plain data, with ``design`` fields replaced."""
    data: dict[str, Any] = {
        "name": "toy-ablation",
        "entry": "fixtures.toy:ToyWrapper",
        "config": {
            "model": {"hidden": 16, "dropout": 0.2},
            "train": {"epochs": 2, "optimizer": {"name": "adam"}},
        },
        "metric": {"name": "val_loss", "mode": "min"},
        "design": {
            "kind": "ablation",
            "repeats": 2,
            "seed": 4,
            "ablations": {
                "no_dropout": {"model.dropout": 0.0},
                "gelu": {"model.activation": "gelu"},
                "sgd": {"train.optimizer": {"name": "sgd", "lr": 0.1, "args": {"momentum": 0.9}}},
            },
        },
        "limits": {"lease_seconds": 60, "heartbeat_seconds": 5},
    }
    if design:
        data["design"] = design
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    write_data(data, path)
    return path


# --- loading and schema ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_load_in_every_format(tmp_path: Path, suffix: str) -> None:
    exp = load_experiment(write(tmp_path, experiment(), f"exp{suffix}"))
    assert exp.name == "toy-ablation" and exp.design.kind == "ablation" and exp.limits.lease_seconds == 60
    assert exp.limits.max_attempts == 3 and exp.resources.gpu == "preferred"  # defaults
    assert experiment_hash(exp) == experiment_hash(experiment_from_dict(experiment()))
    assert len(experiment_hash(exp)) == 64


def test_schema_problems_all_at_once(tmp_path: Path) -> None:
    data = experiment()
    data["name"] = "has spaces"
    data["entry"] = "not an entry"
    data["metric"] = {"name": "val_loss", "mode": "lowest"}
    data["design"]["kind"] = "ablatoin"
    data["limits"] = {"lease_seconds": 10, "heartbeat_seconds": 5, "max_attempt": 2}
    data["extra"] = 1
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    text = str(info.value)
    assert str(path) in text
    for needle in [
        "$.metric.mode: expected one of 'min', 'max', found str 'lowest'",
        "$.design.kind: expected one of 'grid', 'random', 'quasi_random', 'tpe', 'ablation', found str 'ablatoin' (did you mean 'ablation'?)",
        "$.limits: unknown key 'max_attempt' (did you mean 'max_attempts'?)",
        "$: unknown key 'extra'",
    ]:
        assert needle in text
    assert len(info.value.problems) == 4
    # with the schema right, the semantic checks report together
    data = experiment()
    data["name"] = "has spaces"
    data["design"]["repeats"] = 0
    data["design"]["seed"] = -1
    data["limits"] = {"lease_seconds": 10, "heartbeat_seconds": 5, "max_attempts": 0}
    data["metric"]["bounds"] = [1, 0]
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, data))
    text = str(info.value)
    for needle in [
        "$.metric.bounds: expected [low, high] with low < high, found [1.0, 0.0]",
        "$.name: use letters, digits",
        "$.design.repeats: must be >= 1, found 0",
        "$.design.seed: must be >= 0, found -1",
        "$.limits.lease_seconds: must exceed 2 x heartbeat_seconds",
        "$.limits.max_attempts: must be >= 1, found 0",
    ]:
        assert needle in text


def test_config_space_and_entry_problems_reported_together(tmp_path: Path) -> None:
    data = experiment(
        kind="grid",
        space={
            "model.dropot": {"choice": [0.1]},
            "model.hidden": {"range": [8, 32], "step": 8},
            "model.dropout": {"range": [0.0, 0.5]},
        },
    )
    data["config"] = {"model": {"hidden": "big"}, "train": {"optimizer": {"name": "adamm"}}}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    problems = info.value.problems
    for needle in [
        "$.config.model.hidden: expected int, found str 'big'",
        "$.config.train.optimizer.name: unknown torch.optim optimizer 'adamm'",
        "$.design.space['model.dropot']: unknown config path 'model.dropot'",
        "$.design.space['model.dropout']: a grid needs a step or bins for a continuous range (range [0.0, 0.5])",
    ]:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == 4
    # an entry that does not import: reported with the schema problems
    data = experiment()
    data["entry"] = "fixtures.nope:Thing"
    data["design"]["repeats"] = 0
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, data))
    assert len(info.value.problems) == 2
    assert "$.entry: entry 'fixtures.nope:Thing': no module named 'fixtures.nope'" in str(info.value)


def test_grid_needs_steps_and_refuses_a_wrong_trials(tmp_path: Path) -> None:
    data = experiment(kind="grid", trials=5, space={"model.dropout": {"range": [0.0, 0.5]}})
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, data))
    assert "a grid needs a step or bins for a continuous range" in str(info.value)
    data = experiment(kind="grid", trials=5, space={"model.dropout": {"range": [0.0, 0.5], "bins": 3}})
    with pytest.raises(ConfigError, match=r"a grid runs each of its 3 points x 1 repeats = 3 trials"):
        load_experiment(write(tmp_path, data))
    data["design"]["trials"] = 3
    assert budget(load_experiment(write(tmp_path, data))) == 3


@pytest.mark.parametrize(
    ("design", "needle"),
    [
        (
            {"kind": "random", "space": {"model.dropout": {"range": [0, 1]}}},
            "kind random needs a budget: trials",
        ),
        (
            {"kind": "random", "trials": 10, "repeats": 3, "space": {"model.dropout": {"range": [0, 1]}}},
            "not a multiple of repeats",
        ),
        ({"kind": "quasi_random", "trials": 4}, "kind quasi_random needs a space"),
        ({"kind": "tpe", "trials": 4, "space": {"x": {"choice": [1]}}}, "unknown config path 'x'"),
        (
            {"kind": "ablation", "space": {"model.dropout": {"choice": [0]}}},
            "kind ablation takes `ablations`",
        ),
        (
            {
                "kind": "grid",
                "ablations": {"a": {"model.dropout": 0}},
                "space": {"model.dropout": {"choice": [0]}},
            },
            "only kind ablation takes ablations",
        ),
        (
            {"kind": "ablation", "trials": 2, "ablations": {"a": {"model.dropout": 0.0}}},
            "an ablation runs (1 + 1 variants) x 1 repeats = 2 trials",
        ),
    ],
)
def test_design_rules(tmp_path: Path, design: dict[str, Any], needle: str) -> None:
    path = write(tmp_path, experiment(**design))
    if needle.startswith("an ablation runs"):  # trials equal to the size is accepted
        assert budget(load_experiment(path)) == 2
        design["trials"] = 3
        path = write(tmp_path, experiment(**design))
        needle = "= 2 trials; drop `trials`"
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert needle in str(info.value)


def test_space_values_validated_together_with_the_base(tmp_path: Path) -> None:
    # each value is fine alone, but one corner of the space breaks a check() rule of the config
    data = experiment(
        kind="grid", space={"model.hidden": {"choice": [8, 10]}, "model.heads": {"choice": [4]}}
    )
    data["entry"] = "fixtures.toy:checked_trial"
    data["config"] = {"model": {"hidden": 16}}
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, data))
    assert info.value.problems == [
        "$.design.space: with every dimension at its last value, the trial config is invalid: "
        "$.model.hidden: must be a multiple of heads (4), found 10"
    ]


# --- entry points ------------------------------------------------------------------------------


def test_resolve_entry_kinds() -> None:
    wrapper = resolve_entry("fixtures.toy:ToyWrapper")
    assert wrapper.kind == "wrapper" and wrapper.obj is ToyWrapper and wrapper.config_type is ToyConfig
    fn = resolve_entry("fixtures.toy:trial")
    assert fn.kind == "function" and fn.obj is trial and fn.config_type is ToyConfig
    assert resolve_entry("fixtures.toy:checked_trial").config_type is CheckedConfig


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("fixtures.toy", "expected 'module:attr'"),
        ("fixtures.nothere:X", "no module named 'fixtures.nothere'"),
        (
            "fixtures.toy:ToyWraper",
            "'fixtures.toy' has no attribute 'ToyWraper' (did you mean 'ToyWrapper'?)",
        ),
        ("fixtures.toy:NoConfigType", "class NoConfigType has no config_type"),
        ("fixtures.toy:BadConfigType", "BadConfigType.config_type must be a config class"),
        ("fixtures.toy:no_annotation", "the first parameter of no_annotation has no type annotation"),
        ("fixtures.toy:no_params", "no_params() takes no arguments"),
        ("fixtures.toy:wrong_annotation", "annotated <class 'int'>, which is not a config class"),
        ("fixtures.toy:NOT_CALLABLE", "is neither a ModelWrapper subclass nor a trial function"),
        ("fixtures.broken:x", "importing 'fixtures.broken' failed: RuntimeError: boom at import"),
    ],
)
def test_entry_errors(target: str, needle: str) -> None:
    with pytest.raises(EntryPointError) as info:
        resolve_entry(target)
    assert needle in str(info.value)
    assert issubclass(EntryPointError, AblatorError)
    if target == "fixtures.broken:x":
        assert "broken.py:" in str(info.value)  # where it raised


@pytest.mark.procs
def test_entry_imports_from_the_current_directory(tmp_path: Path) -> None:
    # Run a script that lives elsewhere (so sys.path[0] is not the project) from the project root.
    project = tmp_path / "project"
    (project / "mypkg").mkdir(parents=True)
    (project / "mypkg" / "__init__.py").write_text("")
    (project / "mypkg" / "model.py").write_text(
        textwrap.dedent(
            """
            from ablator import ModelConfig, RunConfig

            class M(ModelConfig):
                width: int = 3

            class C(RunConfig[M]):
                pass

            def trial(config: C, ctx):
                return {}
            """
        )
    )
    script = tmp_path / "elsewhere" / "run.py"
    script.parent.mkdir()
    script.write_text(
        "from ablator.entrypoint import resolve_entry\n"
        "e = resolve_entry('mypkg.model:trial')\n"
        "print(e.kind, e.config_type.__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=project,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["function", "C"]


# --- ablation design -----------------------------------------------------------------------------


def test_ablation_design_contents() -> None:
    exp = experiment_from_dict(experiment())
    entry = validate(exp)
    assert entry.kind == "wrapper"
    assert budget(exp) == (1 + 3) * 2
    specs = [trial_spec(exp, i, entry) for i in range(budget(exp))]
    assert [(s.variant, s.repeat) for s in specs] == [
        ("baseline", 0), ("no_dropout", 0), ("gelu", 0), ("sgd", 0),
        ("baseline", 1), ("no_dropout", 1), ("gelu", 1), ("sgd", 1),
    ]  # fmt: skip
    assert [s.index for s in specs] == list(range(8))
    base = from_dict(exp.config, ToyConfig)
    assert specs[0].config == to_dict(base) and specs[0].overrides == {}
    assert specs[0].config_hash == config_hash(base)
    assert specs[1].config["model"]["dropout"] == 0.0 and specs[1].overrides == {"model.dropout": 0.0}
    assert specs[2].config["model"]["activation"] == "gelu"
    # a mapping override replaces the sub-config: sgd with its own args, adam's defaults gone
    assert specs[3].config["train"]["optimizer"] == {
        "name": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0,
        "args": {"momentum": 0.9},
    }
    # everything else is the baseline's
    for s in specs:
        assert s.config["model"]["hidden"] == 16 and s.config["train"]["epochs"] == 2
    # repeats share the config hash; seeds pair across variants (common random numbers):
    # repeat r runs seed repeat_seed(design seed, r) in every variant
    for a, b in zip(specs[:4], specs[4:], strict=True):
        assert a.config_hash == b.config_hash and a.seed != b.seed
    assert len({s.config_hash for s in specs}) == 4
    assert [s.seed for s in specs] == [repeat_seed(4, i // 4) for i in range(8)]
    # paired_seeds: false gives every trial its own seed from (design seed, index, repeat)
    unpaired_data = experiment()
    unpaired_data["design"]["paired_seeds"] = False
    unpaired = experiment_from_dict(unpaired_data)
    assert [trial_spec(unpaired, i, entry).seed for i in range(8)] == [
        trial_seed(4, i, i // 4) for i in range(8)
    ]
    # an index past the budget (a budget extension) continues with another round of repeats
    extra = trial_spec(exp, 9, entry)
    assert (extra.variant, extra.repeat, extra.config_hash) == ("no_dropout", 2, specs[1].config_hash)
    # resources reach the spec
    data = experiment()
    data["resources"] = {"gpu": "required", "min_gpu_memory_mb": 2048}
    gpu = trial_spec(experiment_from_dict(data), 0)
    assert gpu.requires_gpu and gpu.min_gpu_memory_mb == 2048


def test_ablation_variants_validated(tmp_path: Path) -> None:
    data = experiment()
    data["design"]["ablations"] = {
        "typo": {"model.dropot": 0.0},
        "bad_value": {"model.activation": "swish"},
        "same": {"model.dropout": 0.2},  # equals the base
        "workers": {"model.num_workers": 4},  # only a stateless field
        "baseline": {"model.hidden": 8},
        "empty": {},
        "broken": {"train.epochs": None},  # breaks TrainConfig's rule
        "ok": {"model.hidden": 8},
        "twin": {"model.hidden": 8},
    }
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    problems = info.value.problems
    for needle in [
        "$.design.ablations.typo['model.dropot']: unknown config path 'model.dropot': $.model: unknown key 'dropot' (did you mean 'dropout'?)",
        "$.design.ablations.bad_value['model.activation']: expected one of 'relu', 'gelu', 'tanh', found str 'swish'",
        "$.design.ablations.same: gives the same config as the baseline",
        "$.design.ablations.workers: gives the same config as the baseline",
        "$.design.ablations.baseline: 'baseline' is the base config itself",
        "$.design.ablations.empty: no overrides",
        "$.design.ablations.broken: the variant's config is invalid: $.train: set epochs or max_steps",
        "$.design.ablations.twin: gives the same config as variant 'ok'",
    ]:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == 8, problems
    assert str(path) in str(info.value)


# --- other designs -------------------------------------------------------------------------------


def test_grid_trials() -> None:
    exp = experiment_from_dict(
        experiment(
            kind="grid",
            repeats=2,
            space={"model.dropout": {"choice": [0.0, 0.5]}, "model.hidden": {"range": [8, 24], "step": 8}},
        )
    )
    assert budget(exp) == 2 * 3 * 2
    specs = [trial_spec(exp, i) for i in range(budget(exp))]
    first = specs[:6]
    assert [(s.config["model"]["dropout"], s.config["model"]["hidden"]) for s in first] == [
        (0.0, 8), (0.0, 16), (0.0, 24), (0.5, 8), (0.5, 16), (0.5, 24),
    ]  # fmt: skip
    assert len({s.config_hash for s in first}) == 6
    assert [s.config_hash for s in specs[6:]] == [s.config_hash for s in first]  # round 2: repeat 1
    assert all(s.repeat == 1 for s in specs[6:]) and all(s.variant == "" for s in specs)
    assert len({s.seed for s in specs}) == 12


def test_random_trials_keep_repeats_together() -> None:
    exp = experiment_from_dict(
        experiment(kind="random", trials=6, repeats=2, seed=1, space={"model.dropout": {"range": [0.0, 0.5]}})
    )
    specs = [trial_spec(exp, i) for i in range(6)]
    assert [s.repeat for s in specs] == [0, 1, 0, 1, 0, 1]
    assert specs[0].config_hash == specs[1].config_hash != specs[2].config_hash
    assert specs[0].seed != specs[1].seed
    assert specs[0].overrides == {"model.dropout": specs[0].config["model"]["dropout"]}


def test_tpe_specs_come_from_the_agent() -> None:
    exp = experiment_from_dict(
        experiment(kind="tpe", trials=8, space={"model.dropout": {"range": [0.0, 0.5]}})
    )
    validate(exp)
    assert budget(exp) == 8
    with pytest.raises(AblatorError, match="TPE configs are chosen by the claiming agent"):
        trial_spec(exp, 0)
    spec = spec_from_overrides(exp, 3, {"model.dropout": 0.25}, repeat=0)
    assert spec.index == 3 and spec.config["model"]["dropout"] == 0.25 and spec.seed == trial_seed(0, 3, 0)
    with pytest.raises(ConfigError, match=r"\$\.model\.dropout: expected float"):
        spec_from_overrides(exp, 3, {"model.dropout": "x"})


@pytest.mark.procs
def test_trial_spec_is_the_same_in_another_process(tmp_path: Path) -> None:
    data = experiment(kind="quasi_random", trials=4, seed=2, space={"model.dropout": {"range": [0.0, 0.5]}})
    path = write(tmp_path, data)
    code = (
        "import json, sys, msgspec; from ablator.experiment import load_experiment, trial_spec; "
        f"exp = load_experiment({str(path)!r}); "
        "print(json.dumps([msgspec.to_builtins(trial_spec(exp, i)) for i in range(4)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(TESTS), timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    exp = load_experiment(path)
    assert json.loads(proc.stdout) == [msgspec.to_builtins(trial_spec(exp, i)) for i in range(4)]


# --- overrides on the experiment file --------------------------------------------------------


def test_experiment_overrides(tmp_path: Path) -> None:
    data = experiment(kind="grid", space={"model.dropout": {"choice": [0.0, 0.5]}})
    path = write(tmp_path, data)
    exp = load_experiment(
        path,
        [
            "config.train.epochs=5",
            "config.model.note=7",  # a str field: stays "7"
            "design.repeats=3",
            "design.space.model.dropout={choice: [0.1, 0.2, 0.3]}",
            "design.space.model.hidden={range: [8, 16], step: 8}",
            "limits.max_attempts=9",
        ],
    )
    assert exp.config["train"]["epochs"] == 5 and exp.config["model"]["note"] == "7"
    assert exp.design.repeats == 3 and exp.limits.max_attempts == 9
    assert exp.design.space == {
        "model.dropout": {"choice": [0.1, 0.2, 0.3]},
        "model.hidden": {"range": [8, 16], "step": 8},
    }
    assert budget(exp) == 3 * 2 * 3
    ab = load_experiment(write(tmp_path, experiment(), "ab.yaml"), ["design.ablations.gelu.model.hidden=32"])
    assert ab.design.ablations["gelu"] == {"model.activation": "gelu", "model.hidden": 32}
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["config.model.hiden=3", "design.repeat=2", "config.train.epochs=lots"])
    text = str(info.value)
    assert "(with --set overrides)" in text
    assert "--set config.model.hiden=3: $.model: unknown key 'hiden' (did you mean 'hidden'?)" in text
    assert "--set design.repeat=2: $.design: unknown key 'repeat' (did you mean 'repeats'?)" in text
    assert "$.config.train.epochs: expected int or null, found str 'lots'" in text


# --- package ---------------------------------------------------------------------------------------


def test_public_names() -> None:
    assert ablator.__all__ == sorted(ablator.__all__)
    for name in ["AblatorError", "ConfigError", "Derived", "ModelConfig", "RunConfig", "Stateless", "plan"]:
        assert name in ablator.__all__ and getattr(ablator, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ablator.nope
    assert isinstance(Experiment, type)


@pytest.mark.procs
def test_import_ablator_does_not_import_torch() -> None:
    code = "import sys, ablator, ablator.experiment, ablator.samplers; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_yaml_file_is_plain_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, experiment())
    assert yaml.safe_load(path.read_text())["design"]["ablations"]["no_dropout"] == {"model.dropout": 0.0}


def test_paired_seeds_are_an_option_for_searches() -> None:
    space = {"model.dropout": {"choice": [0.0, 0.2, 0.5]}}
    grid = experiment_from_dict(experiment(kind="grid", repeats=2, space=space))
    specs = [trial_spec(grid, i) for i in range(6)]
    assert len({s.seed for s in specs}) == 6  # searches: every trial its own seed by default
    data = experiment(kind="grid", repeats=2, space=space)
    data["design"]["paired_seeds"] = True
    paired = [trial_spec(experiment_from_dict(data), i) for i in range(6)]
    assert [s.seed for s in paired] == [repeat_seed(0, s.repeat) for s in paired]  # design seed 0
    assert [s.config_hash for s in paired] == [s.config_hash for s in specs]  # same configs
