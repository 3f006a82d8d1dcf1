"""Mistaken and hostile inputs that would give wrong results or make a store unusable (issue 12):
each is refused with a clear message, or handled with the right numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import ablator_cli, child_env

from ablator import layout
from ablator.errors import ExperimentTampered
from ablator.store import open_store

from .conftest import experiment, launch_toy


def _write_yaml(path: Path, exp: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(exp))
    return path


def _edit_stored(store_dir: Path, edit: Any) -> None:
    key = store_dir / layout.EXPERIMENT
    data = json.loads(key.read_text())
    edit(data)
    key.write_text(json.dumps(data, indent=2))


@pytest.mark.procs
def test_a_hand_edited_experiment_json_is_refused_by_every_reader(tmp_path: Path) -> None:
    exp = experiment(config={"x": 1.0}, design={"kind": "ablation", "ablations": {"big": {"x": 5.0}}})
    exp_file = _write_yaml(tmp_path / "exp.yaml", exp)
    store = tmp_path / "store"
    env = child_env()
    assert ablator_cli("launch", str(exp_file), "--store", str(store), env=env).returncode == 0

    def change(data: dict[str, Any]) -> None:
        data["experiment"]["config"]["x"] = 9.0

    _edit_stored(store, change)
    # relaunching with the original file (and --extend) refuses, naming what differs
    out = ablator_cli("launch", str(exp_file), "--store", str(store), "--extend", "1", env=env)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "changed after launch" in out.stderr
    assert "$.config.x: 9.0 -> 1.0" in out.stderr
    assert not (store / layout.EXTEND_DIR).exists()  # nothing written
    # the agent, analyze and run refuse too; status lists it
    for args in (
        ("analyze", str(store)),
        ("run", str(exp_file), "--store", str(store), "--trial", "0"),
    ):
        out = ablator_cli(*args, env=env)
        assert out.returncode == 1, (args, out.stderr)
        assert "changed after launch" in out.stderr and "Traceback" not in out.stderr
    agent = subprocess.run(
        [sys.executable, "-m", "ablator.agent", str(store), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agent.returncode == 1 and "changed after launch" in agent.stderr, agent.stderr
    assert not (store / layout.TRIALS_DIR).exists()  # nothing claimed
    st = ablator_cli("status", str(store), env=env)
    assert "changed after launch" in st.stdout + st.stderr


def test_an_edited_entry_is_refused_by_the_api(tmp_path: Path) -> None:
    exp = experiment()
    store = tmp_path / "store"
    launch_toy(str(store), exp)

    def change(data: dict[str, Any]) -> None:
        data["experiment"]["entry"] = "tests.agent.toy:other"

    _edit_stored(store, change)
    with pytest.raises(
        ExperimentTampered, match=r"\$\.entry: 'tests.agent.toy:other' -> 'tests.agent.toy:trial'"
    ):
        launch_toy(str(store), exp, extend=1)
    st = open_store(store)
    assert st.get(layout.extension(0)) is None
