"""Typed configs: file round trips, field roles, overrides, error messages, hashing, diff."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fixtures.toy import CheckedConfig, Color, Extra, ToyConfig, ToyModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import TESTS, child_env

from ablator.config import (
    MISSING,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    apply_overrides,
    config_hash,
    diff,
    field_roles,
    fill_derived,
    from_dict,
    load_config,
    optimizer_class,
    optimizer_names,
    parse_yaml,
    read_data,
    save_config,
    to_dict,
)
from ablator.errors import AblatorError, ConfigError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "identity_v1.json"
SUFFIXES = [".yaml", ".yml", ".toml", ".json"]


def rich_config() -> ToyConfig:
    return ToyConfig(
        model=ToyModel(
            hidden=32,
            dropout=0.25,
            activation="gelu",
            batchnorm=False,
            widths=[4, 5, 6],
            color=Color.blue,
            note="héllo: world",
            pair=(3, 4),
            scales={"a": 0.5, "b.c": 1e-7},
            num_workers=3,
        ),
        train=TrainConfig(
            batch_size=8,
            epochs=None,
            max_steps=100,
            optimizer=OptimizerConfig(name="sgd", lr=0.1, args={"momentum": 0.9, "nesterov": True}),
            scheduler=SchedulerConfig(name="cosine", step_when="train", max_lr=0.5),
            amp="bf16",
            grad_clip=1.0,
        ),
        extra=Extra(depth=3, label="deep"),
    )


# --- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip_yaml_json(tmp_path: Path, suffix: str) -> None:
    cfg = rich_config()
    path = tmp_path / f"cfg{suffix}"
    save_config(cfg, path)
    back = load_config(path, ToyConfig)
    assert back == cfg
    assert config_hash(back) == config_hash(cfg)


def test_round_trip_toml(tmp_path: Path) -> None:
    # TOML has no null: a config whose null fields default to null round-trips exactly.
    cfg = ToyConfig(
        model=ToyModel(hidden=7, scales={"x": 2.5}), train=TrainConfig(max_steps=50, grad_clip=0.5)
    )
    path = tmp_path / "cfg.toml"
    save_config(cfg, path)
    assert "grad_clip = 0.5" in path.read_text()
    assert load_config(path, ToyConfig) == cfg


def test_toml_refuses_a_null_that_would_change_on_reload(tmp_path: Path) -> None:
    cfg = rich_config()  # train.epochs is None, its default is 1
    path = tmp_path / "cfg.toml"
    with pytest.raises(ConfigError) as info:
        save_config(cfg, path)
    assert "$.train.epochs" in str(info.value) and "cfg.toml" in str(info.value)
    assert not path.exists()


def test_same_config_in_every_format_loads_equal(tmp_path: Path) -> None:
    texts = {
        ".yaml": "model:\n  hidden: 12\n  dropout: 1e-3\ntrain:\n  optimizer: {name: AdamW, lr: 0.01}\n",
        ".toml": '[model]\nhidden = 12\ndropout = 1e-3\n[train.optimizer]\nname = "AdamW"\nlr = 0.01\n',
        ".json": '{"model": {"hidden": 12, "dropout": 1e-3}, "train": {"optimizer": {"name": "AdamW", "lr": 0.01}}}',
    }
    loaded = []
    for suffix, text in texts.items():
        path = tmp_path / f"c{suffix}"
        path.write_text(text)
        loaded.append(load_config(path, ToyConfig))
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0].model.dropout == 0.001  # YAML 1.2: 1e-3 is a float, not a string


def test_yaml_reads_scalars_as_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 010\n  note: no\nextra:\n  label: 2024-01-01\n")
    cfg = load_config(path, ToyConfig)
    assert cfg.model.hidden == 10  # not octal 8
    assert cfg.model.note == "no"  # not False
    assert cfg.extra.label == "2024-01-01"  # not a date


# The YAML 1.2.2 spec's own examples of scalar resolution (https://yaml.org/spec/1.2.2/):
# Example 10.9 "Core Tag Resolution", Examples 2.19-2.22 (integers, floats, miscellaneous,
# timestamps: the core schema has no timestamp, so they stay strings).
SPEC_1_2_CORE = """\
A null: null
Also a null: # Empty
Not a null: ""
Booleans: [ true, True, false, FALSE ]
Integers: [ 0, 0o7, 0x3A, -19 ]
Floats: [ 0., -0.0, .5, +12e03, -2E+05 ]
Also floats: [ .inf, -.Inf, +.INF, .NAN ]
"""
SPEC_2_19_TO_2_22 = """\
canonical: 12345
decimal: +12345
octal: 0o14
hexadecimal: 0xC
canonical float: 1.23015e+3
exponential: 12.3015e+02
fixed: 1230.15
negative infinity: -.inf
not a number: .nan
null:
booleans: [ true, false ]
string: '012345'
timestamp: 2001-12-14t21:59:43.10-05:00
date: 2002-12-14
"""


def test_yaml_core_schema_matches_the_yaml_1_2_spec_examples() -> None:
    data = parse_yaml(SPEC_1_2_CORE)
    assert data["A null"] is None and data["Also a null"] is None and data["Not a null"] == ""
    assert data["Booleans"] == [True, True, False, False]
    assert all(type(b) is bool for b in data["Booleans"])
    assert data["Integers"] == [0, 7, 58, -19] and all(type(i) is int for i in data["Integers"])
    assert data["Floats"] == [0.0, -0.0, 0.5, 12000.0, -200000.0]
    assert all(type(f) is float for f in data["Floats"])
    assert math.copysign(1.0, data["Floats"][1]) == -1.0  # -0.0 keeps its sign
    inf, minf, pinf, nan = data["Also floats"]
    assert inf == math.inf and minf == -math.inf and pinf == math.inf and math.isnan(nan)

    more = parse_yaml(SPEC_2_19_TO_2_22)
    assert [more[k] for k in ("canonical", "decimal", "octal", "hexadecimal")] == [12345, 12345, 12, 12]
    assert more["canonical float"] == more["exponential"] == more["fixed"] == 1230.15
    assert more["negative infinity"] == -math.inf and math.isnan(more["not a number"])
    assert more[None] is None  # "null:" is a null key with a null value
    assert more["booleans"] == [True, False] and more["string"] == "012345"
    assert more["timestamp"] == "2001-12-14t21:59:43.10-05:00" and more["date"] == "2002-12-14"


@pytest.mark.parametrize(
    "text",
    # YAML 1.1 readings that YAML 1.2's core schema does not have: every one is a plain string.
    [
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "0b1010",
        "1_000",
        "0O7",
        "-0x1A",
        "+0o7",
        "1:20",
        "=",
        ".Nan",
        "tRUE",
    ],
)
def test_yaml_1_1_only_scalars_stay_strings(text: str) -> None:
    assert parse_yaml(f"v: {text}\n") == {"v": text}


def test_yaml_1_2_decimal_ints_have_no_octal_and_keep_big_values() -> None:
    assert parse_yaml("a: 010\nb: -007\nc: 123456789012345678901234567890\n") == {
        "a": 10,
        "b": -7,
        "c": 123456789012345678901234567890,
    }


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    yml = tmp_path / "dup.yaml"
    yml.write_text("model:\n  hidden: 1\nmodel:\n  hidden: 2\n")
    with pytest.raises(ConfigError) as info:
        read_data(yml)
    assert (
        "dup.yaml" in str(info.value)
        and "duplicate key 'model'" in str(info.value)
        and "line 3" in str(info.value)
    )
    js = tmp_path / "dup.json"
    js.write_text('{"a": 1, "a": 2}')
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        read_data(js)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yaml", "model: [1, 2\n", "cannot parse YAML"),
        ("bad.toml", "model = \n", "cannot parse TOML"),
        ("bad.json", "{", "cannot parse JSON"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping at the top level"),
        ("cfg.ini", "[a]\n", "unsupported file type '.ini'"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_data(path)
    assert needle in str(info.value)
    assert name in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", ToyConfig)


# --- errors ----------------------------------------------------------------------------------

BROKEN = """\
model:
  hiden: 3
  dropout: high
  activation: gelo
  widths: [1, two, 3]
  color: green
  n_classes: 10
train:
  batch_size: 0
  epochs: null
  optimizer: {name: adamm, lr: -1}
  amp: fp32
extra: {depth: 1.5, labl: y}
bogus: 1
"""


def test_all_problems_reported_at_once_with_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load_config(path, ToyConfig)
    err = info.value
    text = str(err)
    assert err.source == str(path)
    assert str(path) in text
    expected = {
        "$.model: unknown key 'hiden' (did you mean 'hidden'?); valid keys: hidden, dropout,",
        "$.model.dropout: expected float, found str 'high'",
        "$.model.activation: expected one of 'relu', 'gelu', 'tanh', found str 'gelo' (did you mean 'gelu'?)",
        "$.model.widths[1]: expected int, found str 'two'",
        "$.model.color: expected one of 'red', 'blue', found str 'green'",
        "$.model.n_classes: is a derived field",
        "$.train.batch_size: must be >= 1, found 0",
        "$.train: set epochs or max_steps",
        "$.train.optimizer.name: unknown torch.optim optimizer 'adamm' (did you mean 'adam'?); valid names:",
        "$.train.optimizer.lr: must be >= 0, found -1.0",
        "$.train.amp: expected one of 'none', 'fp16', 'bf16', found str 'fp32'",
        "$.extra.depth: expected int, found float 1.5",
        "$.extra: unknown key 'labl' (did you mean 'label'?)",
        "$: unknown key 'bogus'",
    }
    for needle in expected:
        assert any(needle in p for p in err.problems), (needle, err.problems)
    assert len(err.problems) == len(expected), err.problems
    assert f"({len(expected)} problems)" in text
    assert "sgd" in text and "adamw" in text  # the valid optimizer names are listed


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"train": {"epochs": 2}}, ToyConfig, source="x.yaml")
    assert "$: missing required key 'model' (a mapping (ToyModel))" in str(info.value)
    assert "x.yaml" in str(info.value)


def test_wrong_shape_reported_with_path() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"model": [1, 2], "train": "fast"}, ToyConfig)
    problems = info.value.problems
    assert problems == [
        "$.model: expected a mapping (ToyModel), found a list [1, 2]",
        "$.train: expected a mapping (TrainConfig), found str 'fast'",
    ]


def test_user_check_rule_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"model": {"hidden": 10, "heads": 4}}, CheckedConfig)
    assert info.value.problems == ["$.model.hidden: must be a multiple of heads (4), found 10"]
    # ... and together with a type error elsewhere in the same config
    with pytest.raises(ConfigError) as info:
        from_dict({"model": {"hidden": 10, "heads": 4}, "train": {"amp": "fp8"}}, CheckedConfig)
    assert len(info.value.problems) == 2


def test_check_runs_on_partly_invalid_configs() -> None:
    # train has a type error AND violates its epochs/max_steps rule: both are reported
    with pytest.raises(ConfigError) as info:
        from_dict({"model": {}, "train": {"batch_size": "x", "epochs": None}}, ToyConfig)
    assert len(info.value.problems) == 2
    assert any(p.startswith("$.train: set epochs or max_steps") for p in info.value.problems)


def test_config_error_is_an_ablator_error() -> None:
    assert issubclass(ConfigError, AblatorError)


# --- optimizers and schedulers -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "Adam", "ADAMW", "sgd", "RMSprop", "lbfgs"])
def test_optimizer_names_case_insensitive(name: str) -> None:
    cfg = from_dict({"model": {}, "train": {"optimizer": {"name": name}}}, ToyConfig)
    assert cfg.train.optimizer.name == name


def test_optimizer_list_matches_torch() -> None:
    import torch

    cls = optimizer_class("adamw")
    assert cls is torch.optim.AdamW
    real = {
        n
        for n, o in vars(torch.optim).items()
        if isinstance(o, type) and issubclass(o, torch.optim.Optimizer) and o is not torch.optim.Optimizer
    }
    assert set(optimizer_names()) == real  # with torch imported, torch is the authority
    from ablator.config import KNOWN_OPTIMIZERS

    assert set(KNOWN_OPTIMIZERS) <= real  # the torch-free list never accepts a name torch lacks
    with pytest.raises(ConfigError, match="did you mean 'sgd'"):
        optimizer_class("sgdd")


@pytest.mark.procs
def test_validating_a_config_does_not_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {hidden: 4}\ntrain: {optimizer: {name: AdamW}}\n")
    code = (
        "import sys; from ablator.config import load_config; from fixtures.toy import ToyConfig; "
        f"cfg = load_config({str(path)!r}, ToyConfig); print(cfg.train.optimizer.name, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True, timeout=120
    ).stdout
    assert out.split() == ["AdamW", "False"]


def test_scheduler_names_and_rules() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(
            {"model": {}, "train": {"scheduler": {"name": "cosin", "gamma": 0, "step_when": "batch"}}},
            ToyConfig,
        )
    text = str(info.value)
    assert "$.train.scheduler.name: expected one of 'none', 'step', 'cosine'" in text
    assert "(did you mean 'cosine'?)" in text
    assert "$.train.scheduler.step_when" in text and "$.train.scheduler.gamma: must be > 0" in text
    with pytest.raises(ConfigError, match=r"\$\.train\.scheduler\.step_when: plateau reacts to evaluations"):
        from_dict({"model": {}, "train": {"scheduler": {"name": "plateau", "step_when": "train"}}}, ToyConfig)


def test_train_needs_epochs_or_max_steps() -> None:
    assert (
        from_dict({"model": {}, "train": {"epochs": None, "max_steps": 10}}, ToyConfig).train.max_steps == 10
    )
    with pytest.raises(ConfigError) as info:
        from_dict({"model": {}, "train": {"epochs": None}}, ToyConfig)
    assert info.value.problems == [
        "$.train: set epochs or max_steps (both are null, so training would never stop)"
    ]


# --- roles -----------------------------------------------------------------------------------


def test_field_roles() -> None:
    roles = field_roles(ToyConfig)
    assert roles["model.hidden"] == "stateful"
    assert roles["model.num_workers"] == "stateless"
    assert roles["model.n_classes"] == "derived"
    assert roles["train.log_every"] == "stateless"
    assert roles["train.optimizer.lr"] == "stateful"
    assert roles["logging"] == "stateless"
    assert roles["logging.depth"] == "stateless"  # inherited from the stateless sub-config
    assert roles["extra.depth"] == "stateful"
    assert roles["log_dir"] == "stateless"
    assert roles["profile"] == "stateless"


def test_stateless_fields_do_not_change_the_hash() -> None:
    base = rich_config()
    h = config_hash(base)
    assert len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    same = [
        msgspec.structs.replace(base, log_dir="elsewhere"),
        msgspec.structs.replace(base, model=msgspec.structs.replace(base.model, num_workers=8)),
        msgspec.structs.replace(base, train=msgspec.structs.replace(base.train, log_every=1, num_workers=4)),
        msgspec.structs.replace(base, logging=Extra(depth=9, verbose=True)),
        msgspec.structs.replace(base, profile=True),
    ]
    for cfg in same:
        assert config_hash(cfg) == h
    different = [
        msgspec.structs.replace(base, model=msgspec.structs.replace(base.model, hidden=33)),
        msgspec.structs.replace(base, extra=Extra(depth=4, label="deep")),
        msgspec.structs.replace(base, model=msgspec.structs.replace(base.model, scales={"a": 0.5})),
    ]
    assert len({config_hash(c) for c in different} | {h}) == len(different) + 1


def test_derived_fields_are_filled_by_code_and_not_hashed() -> None:
    cfg = from_dict({"model": {"hidden": 4}}, ToyConfig)
    filled = fill_derived(cfg, **{"model.n_classes": 10})
    assert filled.model.n_classes == 10 and cfg.model.n_classes is None
    assert config_hash(filled) == config_hash(cfg)
    assert diff(cfg, filled) == [("model.n_classes", None, 10)]
    with pytest.raises(ConfigError) as info:
        fill_derived(cfg, **{"model.hidden": 5, "model.n_classes": "ten", "model.nope": 1})
    text = str(info.value)
    assert "$.model.hidden: is stateful, not derived" in text
    assert "$.model.n_classes: expected int or null, found str 'ten'" in text
    assert "unknown key 'nope'" in text
    # a saved, filled config loads back only when derived values are allowed
    with pytest.raises(ConfigError, match=r"\$\.model\.n_classes: is a derived field"):
        from_dict(to_dict(filled), ToyConfig)
    assert from_dict(to_dict(filled), ToyConfig, allow_derived=True) == filled


# --- hashing -----------------------------------------------------------------------------------


def test_hash_is_canonical() -> None:
    a = from_dict({"model": {"scales": {"x": 1.0, "y": 2.0}}, "train": {"optimizer": {"lr": 1}}}, ToyConfig)
    b = from_dict({"train": {"optimizer": {"lr": 1.0}}, "model": {"scales": {"y": 2.0, "x": 1.0}}}, ToyConfig)
    assert config_hash(a) == config_hash(b)  # key order and int-vs-float of a float field
    nan = from_dict({"model": {"dropout": math.nan}}, ToyConfig)
    none_note = from_dict({"model": {"note": None}}, ToyConfig)
    assert config_hash(nan) != config_hash(none_note)
    assert config_hash(nan) == config_hash(from_dict({"model": {"dropout": math.nan}}, ToyConfig))


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = __import__(module, fromlist=[attr])
    return getattr(obj, attr)


def test_golden_hashes() -> None:
    """Hashes checked in once: they must never change, or every stored experiment's trial
    identity (and the grouping of repeats) breaks. Change HASH_VERSION to change them."""
    golden = json.loads(GOLDEN.read_text())
    assert golden["hash_version"] == "ablator-config-v1"
    assert len(golden["configs"]) >= 4
    for case in golden["configs"]:
        cfg = from_dict(case["data"], _import(case["type"]))
        assert config_hash(cfg) == case["hash"], case["type"]


@pytest.mark.procs
def test_hash_is_the_same_in_another_process() -> None:
    cfg = rich_config()
    code = (
        "import json, sys; from fixtures.toy import ToyConfig; from ablator.config import config_hash, from_dict; "
        "print(config_hash(from_dict(json.loads(sys.stdin.read()), ToyConfig)))"
    )
    env = _env()
    env["PYTHONHASHSEED"] = "12345"  # a different str hash seed must not matter
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(to_dict(cfg)),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert out == config_hash(cfg)


# --- diff ------------------------------------------------------------------------------------


def test_diff() -> None:
    a = rich_config()
    b = msgspec.structs.replace(
        a,
        model=msgspec.structs.replace(a.model, dropout=0.0, scales={"a": 0.5, "z": 1.0}),
        train=msgspec.structs.replace(a.train, optimizer=OptimizerConfig(name="adam", lr=0.1)),
    )
    assert diff(a, b) == [
        ("model.dropout", 0.25, 0.0),
        ("model.scales.b.c", 1e-7, MISSING),
        ("model.scales.z", MISSING, 1.0),
        ("train.optimizer.name", "sgd", "adam"),
        ("train.optimizer.args.momentum", 0.9, MISSING),
        ("train.optimizer.args.nesterov", True, MISSING),
    ]
    assert diff(a, a) == []
    assert diff({"x": 1}, {"x": True}) == [("x", 1, True)]  # a bool is not an int
    assert diff({"x": [1, 2]}, {"x": [1, 3]}) == [("x", [1, 2], [1, 3])]


# --- overrides ---------------------------------------------------------------------------------


def test_overrides_parse_to_the_field_type() -> None:
    data = {"model": {"hidden": 4}}
    out = apply_overrides(
        data,
        [
            "model.hidden=32",
            "model.dropout=1e-3",
            "model.note=123",  # a str field keeps the text
            "model.widths=[1, 2]",
            "model.batchnorm=false",
            "model.scales.a=2",
            "train.epochs=null",
            "train.max_steps=7",
            "train.optimizer={name: sgd, lr: 0.1}",
            "extra.label=",
        ],
        ToyConfig,
    )
    assert data == {"model": {"hidden": 4}}  # the input is not modified
    assert out["model"]["hidden"] == 32 and out["model"]["dropout"] == 0.001
    assert out["model"]["note"] == "123" and out["model"]["widths"] == [1, 2]
    assert out["model"]["batchnorm"] is False
    assert out["train"]["optimizer"] == {"name": "sgd", "lr": 0.1}  # replaces the whole sub-config
    assert out["extra"]["label"] == ""
    cfg = from_dict(out, ToyConfig)
    assert cfg.train.epochs is None and cfg.train.max_steps == 7 and cfg.train.optimizer.name == "sgd"
    assert cfg.model.scales == {"a": 2.0}
    with pytest.raises(ConfigError) as info:  # scales.a is a float, not a mapping
        apply_overrides(data, ["model.scales.a.b=2", "model.hidden.x=1"], ToyConfig)
    assert "$.model.scales.a: float has no key 'b'" in str(info.value)
    assert "$.model.hidden: int has no key 'x'" in str(info.value)


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {hidden: 4}\n")
    cfg = load_config(path, ToyConfig, ["model.hidden=8", "train.optimizer.lr=0.5"])
    assert cfg.model.hidden == 8 and cfg.train.optimizer.lr == 0.5
    with pytest.raises(ConfigError) as info:
        load_config(path, ToyConfig, ["model.hiden=8", "train.epochs=many", "oops"])
    text = str(info.value)
    assert "(with --set overrides)" in text and str(path) in text
    assert "--set model.hiden=8: $.model: unknown key 'hiden' (did you mean 'hidden'?)" in text
    assert "$.train.epochs: expected int or null, found str 'many'" in text
    assert "--set 'oops': expected KEY=VALUE" in text
    assert len(info.value.problems) == 3


def test_untyped_overrides_and_dotted_keys() -> None:
    data = {"design": {"space": {"model.dropout": {"choice": [0.1]}}}}
    out = apply_overrides(data, ["design.space.model.dropout={choice: [0.2, 0.3]}", "a.b=on"])
    assert out["design"]["space"] == {"model.dropout": {"choice": [0.2, 0.3]}}  # matched as one key
    assert out["a"] == {"b": "on"}  # YAML 1.2: "on" is a string


# --- hypothesis --------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
models = st.builds(
    ToyModel,
    hidden=st.integers(-(2**40), 2**40),
    dropout=finite,
    activation=st.sampled_from(["relu", "gelu", "tanh"]),
    batchnorm=st.booleans(),
    widths=st.lists(st.integers(0, 1000), max_size=4),
    color=st.sampled_from(list(Color)),
    note=st.none() | text,
    pair=st.tuples(st.integers(-5, 5), st.integers(-5, 5)),
    scales=st.dictionaries(text, finite, max_size=3),
    num_workers=st.integers(0, 16),
)
configs = st.builds(
    ToyConfig,
    model=models,
    train=st.builds(
        TrainConfig,
        batch_size=st.integers(1, 4096),
        epochs=st.integers(1, 100),
        optimizer=st.builds(
            OptimizerConfig, name=st.sampled_from(["adam", "sgd", "AdamW"]), lr=finite.map(abs)
        ),
    ),
    extra=st.builds(Extra, depth=st.integers(0, 9), label=text),
)


@given(cfg=configs)
@settings(max_examples=60, deadline=None)
def test_encode_decode_round_trip(cfg: ToyConfig) -> None:
    back = from_dict(to_dict(cfg), ToyConfig)
    assert back == cfg
    assert config_hash(back) == config_hash(cfg)
    # through JSON bytes, as it is stored
    assert from_dict(json.loads(json.dumps(to_dict(cfg))), ToyConfig) == cfg


@given(cfg=configs, suffix=st.sampled_from([".yaml", ".json"]))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_file_round_trip_property(cfg: ToyConfig, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"c{suffix}"
        save_config(cfg, path)
        assert load_config(path, ToyConfig) == cfg


def _env() -> dict[str, str]:
    return child_env(TESTS)
