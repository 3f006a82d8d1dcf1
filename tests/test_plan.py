"""``ablator.plan`` and ``python -m ablator plan``: the table, --json, --limit, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit import TESTS, ablator_cli, child_env

import ablator
from ablator.config import write_data
from ablator.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

ABLATION = {
    "name": "toy-ablation",
    "entry": "fixtures.toy:ToyWrapper",
    "config": {"model": {"hidden": 16, "dropout": 0.2}, "train": {"epochs": 2}},
    "metric": {"name": "val_loss", "mode": "min"},
    "design": {
        "kind": "ablation",
        "repeats": 2,
        "ablations": {
            "no_dropout": {"model.dropout": 0.0},
            "sgd": {"train.optimizer": {"name": "sgd", "lr": 0.1, "args": {"momentum": 0.9}}},
        },
    },
    "limits": {"lease_seconds": 60, "heartbeat_seconds": 5},
}

BROKEN = """\
name: toy broken
entry: fixtures.toy:trial
config:
  model: {hiden: 16, dropout: lots}
  train: {epochs: null, optimizer: {name: adamm}}
metric: {name: val_loss, mode: minimum}
design:
  kind: grid
  space:
    model.activation: {choice: [relu, swish]}
    model.dropout: {range: [0.0, 0.5]}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return ablator_cli("plan", *args, cwd=cwd, env=child_env(TESTS), timeout=180)


def write(path: Path, data: dict[str, Any]) -> Path:
    write_data(data, path)
    return path


def test_plan_api_and_render(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", ABLATION)
    p = ablator.plan(path)
    assert p.budget == 6 and [t.variant for t in p.trials] == ["baseline", "no_dropout", "sgd"] * 2
    assert p.diffs[0] == [] and p.diffs[1] == [("model.dropout", 0.2, 0.0)]
    text = p.render()
    lines = text.splitlines()
    assert lines[0] == f"toy-ablation  ({path})"
    assert "ablation: baseline + 2 variants, 2 repeats each = 6 trials, seed 0" in text
    assert "fixtures.toy:ToyWrapper (ModelWrapper subclass; config type fixtures.toy.ToyConfig)" in text
    header = next(i for i, line in enumerate(lines) if line.startswith("index"))
    assert lines[header].split() == [
        "index",
        "seed",
        "variant",
        "repeat",
        "config",
        "hash",
        "differs",
        "from",
        "the",
        "base",
        "config",
    ]
    rows = lines[header + 1 : header + 7]
    assert [r.split()[2] for r in rows] == ["baseline", "no_dropout", "sgd"] * 2
    assert rows[0].endswith(" -")
    assert rows[1].endswith("model.dropout: 0.2 -> 0.0")
    assert (
        "train.optimizer.name: adam -> sgd; train.optimizer.lr: 0.001 -> 0.1; train.optimizer.args.momentum: (unset) -> 0.9"
        in rows[2]
    )
    assert rows[0].split()[4] == p.base_hash[:12] == rows[3].split()[4]  # repeats share the hash
    assert "valid: 6 trials; 6 shown, 3 distinct configs among them." in text
    # --limit computes (and shows) the first N only
    short = ablator.plan(path, limit=2)
    assert len(short.trials) == 2 and "... 4 more trials (--limit N shows N)" in short.render()
    # plan of an Experiment object
    from ablator.experiment import load_experiment

    assert ablator.plan(load_experiment(path)).trials == p.trials
    with pytest.raises(ConfigError, match="--limit must be >= 0"):
        ablator.plan(path, limit=-1)


def test_plan_json(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.json", ABLATION)
    doc = json.loads(ablator.plan(path, ["design.repeats=1"]).to_json())
    assert doc["valid"] is True and doc["budget"] == 3 and doc["shown"] == 3
    assert doc["entry"] == {
        "target": "fixtures.toy:ToyWrapper",
        "kind": "wrapper",
        "config_type": "fixtures.toy.ToyConfig",
    }
    assert doc["design"]["variants"] == ["no_dropout", "sgd"]
    t = doc["trials"][2]
    assert t["variant"] == "sgd" and t["point"] == 2 and t["repeat"] == 0 and len(t["config_hash"]) == 64
    assert {"path": "train.optimizer.args.momentum", "base": None, "value": 0.9} in t["diff"]
    assert t["config"]["train"]["optimizer"]["name"] == "sgd"


@pytest.mark.procs
def test_cli_good_file(tmp_path: Path) -> None:
    data = dict(ABLATION)
    data["entry"] = "fixtures.toy:trial"
    data["design"] = {
        "kind": "random",
        "trials": 6,
        "repeats": 2,
        "seed": 3,
        "space": {"model.dropout": {"range": [0.0, 0.5]}, "model.activation": {"choice": ["relu", "gelu"]}},
    }
    write(tmp_path / "exp.yaml", data)
    proc = cli("exp.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "random: 3 points x 2 repeats = 6 trials, seed 3" in out
    assert "model.dropout     range [0.0, 0.5]" in out and "model.activation  choice [relu, gelu]" in out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r[2] for r in rows] == ["0", "0", "1", "1", "2", "2"]  # point
    assert [r[3] for r in rows] == ["0", "1"] * 3  # repeat
    # --json and --limit and --set
    proc = cli("exp.yaml", "--json", "--limit", "3", "--set", "config.model.hidden=64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["budget"] == 6 and len(doc["trials"]) == 3
    assert all(t["config"]["model"]["hidden"] == 64 for t in doc["trials"])
    # same plan from the API in this process: the design is a pure function
    api = json.loads(ablator.plan(tmp_path / "exp.yaml", ["config.model.hidden=64"], limit=3).to_json())
    assert [t["config_hash"] for t in api["trials"]] == [t["config_hash"] for t in doc["trials"]]
    assert [t["seed"] for t in api["trials"]] == [t["seed"] for t in doc["trials"]]


@pytest.mark.procs
def test_cli_broken_file_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    proc = cli("broken.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = proc.stderr
    assert err.startswith("ablator plan: error: invalid configuration in broken.yaml (")
    for needle in [
        "$.name: use letters, digits",
        "$.metric.mode: expected one of 'min', 'max', found str 'minimum'",
    ]:
        assert needle in err
    # the schema is broken, so fix it and see the config and space problems, all at once
    fixed = BROKEN.replace("toy broken", "toy").replace("minimum", "min")
    (tmp_path / "broken.yaml").write_text(fixed)
    proc = cli("broken.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr
    needles = [
        "$.config.model: unknown key 'hiden' (did you mean 'hidden'?)",
        "$.config.model.dropout: expected float, found str 'lots'",
        "$.config.train: set epochs or max_steps",
        "$.config.train.optimizer.name: unknown torch.optim optimizer 'adamm' (did you mean 'adam'?)",
        "$.design.space['model.activation'].choice[1]: expected one of 'relu', 'gelu', 'tanh', found str 'swish'",
        "$.design.space['model.dropout']: a grid needs a step or bins for a continuous range (range [0.0, 0.5])",
    ]
    for needle in needles:
        assert needle in err, (needle, err)
    assert f"({len(needles)} problems)" in err
    # --json: the problems on stdout as well, machine-readable
    proc = cli("broken.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["valid"] is False and doc["source"] == "broken.yaml" and len(doc["problems"]) == len(needles)


@pytest.mark.procs
def test_cli_missing_file_and_bad_override(tmp_path: Path) -> None:
    proc = cli("nope.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "nope.yaml: file not found" in proc.stderr
    write(tmp_path / "exp.yaml", ABLATION)
    proc = cli("exp.yaml", "--set", "design.repeats", cwd=tmp_path)
    assert proc.returncode == 1 and "--set 'design.repeats': expected KEY=VALUE" in proc.stderr


@pytest.mark.procs
def test_plan_of_a_function_entry_does_not_import_torch(tmp_path: Path) -> None:
    data = dict(ABLATION)
    data["entry"] = "fixtures.toy:trial"
    write(tmp_path / "exp.yaml", data)
    code = (
        "import sys, contextlib, io; from ablator.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['plan', 'exp.yaml'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(TESTS),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False"]


def test_plan_tpe(tmp_path: Path) -> None:
    data = dict(ABLATION)
    data["design"] = {
        "kind": "tpe",
        "trials": 8,
        "repeats": 2,
        "space": {"model.dropout": {"range": [0.0, 0.5]}},
    }
    p = ablator.plan(write(tmp_path / "exp.yaml", data))
    assert p.budget == 8 and p.trials == []
    assert "TPE chooses each trial's config from the results so far" in p.render()
    assert "8 trials (4 configs x 2 repeats)" in p.render()


@pytest.mark.procs
def test_cli_on_the_digits_example() -> None:
    example = ROOT / "examples" / "digits" / "experiment.yaml"
    if not example.exists():  # pragma: no cover - the example belongs to another part
        pytest.fail("examples/digits/experiment.yaml is missing")
    proc = cli(str(example.relative_to(ROOT)), "--limit", "4", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "digits-ablation" in proc.stdout and "baseline" in proc.stdout and "no_dropout" in proc.stdout
