"""Every error about a store's ``experiment.json`` says what is wrong, where (the file, the
field) and what to do (issue 12). One test per class of message; the edited experiment, the
edited budget and the experiment this version refuses are tests/agent/test_bad_inputs.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import ablator_cli, child_env

from ablator import codesnap, layout
from ablator.errors import CorruptRecordError
from ablator.spec import decode_spec, read_spec
from ablator.store import open_store

MODULE = """
from ablator.config import BaseConfig


class C(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.0


def trial(config: C, ctx):
    return {"score": config.x}
"""

EXPERIMENT: dict[str, Any] = {
    "name": "errs",
    "entry": "errsmod:trial",
    "config": {},
    "metric": {"name": "score", "mode": "max"},
    "design": {"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
    "resources": {"gpu": "none"},
}


def _agent(store: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ablator.agent", str(store), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _launched(tmp_path: Path, *, code: bool = False) -> tuple[Path, Path, Path]:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "errsmod.py").write_text(MODULE)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(EXPERIMENT))
    store = tmp_path / "store"
    args = ["launch", str(exp_file), "--store", str(store)]
    out = ablator_cli(*args, *(["--code", str(folder)] if code else []), cwd=tmp_path, env=child_env(folder))
    assert out.returncode == 0, out.stderr
    return store, exp_file, folder


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"name": "errs", "experiment": {', "Input data was truncated"),  # torn
        (b"\xff\xfe{}", "JSON is malformed"),  # not JSON
        (b'{"name": "errs", "experiment": {}}', "missing required field `experiment_hash`"),
        (b'{"name": "errs", "experiment": {}, "experiment_hash": "a", "budget": "many"}', "at `$.budget`"),
    ],
)
def test_an_unreadable_experiment_json_says_where_and_what_to_do(
    tmp_path: Path, body: bytes, why: str
) -> None:
    with pytest.raises(CorruptRecordError) as info:
        decode_spec(body, "s/experiment.json")
    text = str(info.value)
    assert text.startswith("s/experiment.json is not an experiment record ablator can read (") and why in text
    assert (
        "restore it from a backup or a copy of the store, or launch the experiment into a new store" in text
    )
    store = tmp_path / "store"
    store.mkdir()
    (store / layout.EXPERIMENT).write_bytes(body)
    with pytest.raises(CorruptRecordError, match=r"/experiment\.json is not an experiment record"):
        read_spec(open_store(store, read_only=True))


@pytest.mark.procs
def test_readers_of_an_unreadable_experiment_json_exit_1_with_the_remedy(tmp_path: Path) -> None:
    store, _, folder = _launched(tmp_path)
    (store / layout.EXPERIMENT).write_bytes(b'{"name": "errs", "experiment": {')
    env = child_env(folder)
    expected = f"{store.as_uri()}/experiment.json is not an experiment record ablator can read"
    for cmd in (("analyze", str(store)), ("gc", str(store)), ("run", "--from", str(store), "--trial", "0")):
        out = ablator_cli(*cmd, cwd=tmp_path, env=env)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (cmd, out.stderr)
        assert expected in out.stderr and "restore it from a backup" in out.stderr, (cmd, out.stderr)
    agent = _agent(store, env)
    assert agent.returncode == 1 and expected in agent.stderr and "restore it from a backup" in agent.stderr
    out = ablator_cli("status", str(store), "--json", env=env)
    assert out.returncode == 0, out.stderr  # status reports instead of refusing
    assert any(expected in p for p in json.loads(out.stdout)["problems"])


@pytest.mark.procs
def test_a_code_hash_edited_in_experiment_json_names_the_field(tmp_path: Path) -> None:
    store, _, _ = _launched(tmp_path, code=True)
    path = store / layout.EXPERIMENT
    data: dict[str, Any] = json.loads(path.read_text())
    data["code_sha256"] = "not-a-hash"
    path.write_text(json.dumps(data))
    agent = _agent(store, child_env())
    assert agent.returncode == 1 and "Traceback" not in agent.stderr
    assert "experiment.json: `code_sha256` is 'not-a-hash', not a sha256 hex digest" in agent.stderr
    assert "restore it as launched" in agent.stderr


@pytest.mark.procs
def test_a_lost_code_snapshot_names_the_remedy_and_the_remedy_works(tmp_path: Path) -> None:
    store, exp_file, folder = _launched(tmp_path, code=True)
    (zip_file,) = (store / layout.CODE_DIR).glob("*.zip")
    zip_file.unlink()  # an operator's cleanup gone wrong
    env = child_env()  # the agent imports the module from the snapshot alone
    env["ABLATOR_CACHE_DIR"] = str(tmp_path / "cache")
    agent = _agent(store, env)
    assert agent.returncode == 1 and "Traceback" not in agent.stderr
    assert f"code snapshot 'code/{zip_file.name}' is missing from" in agent.stderr
    assert "(the `code_sha256` of experiment.json names it)" in agent.stderr
    assert "--code DIR` again with the code it was launched with" in agent.stderr
    # the remedy: the same launch, with the same code, uploads the snapshot again
    again = ablator_cli(
        "launch",
        str(exp_file),
        "--store",
        str(store),
        "--code",
        str(folder),
        cwd=tmp_path,
        env=child_env(folder),
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert zip_file.exists()
    assert codesnap.sha256_hex(zip_file.read_bytes()) == zip_file.stem
    agent = _agent(store, env)
    assert agent.returncode == 0, agent.stderr
    assert (store / layout.result(0)).exists()


@pytest.mark.procs
def test_a_folder_without_experiment_json_says_how_to_launch(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "something").write_text("not a store")
    env = child_env()
    expected = {
        "status": "create it with `python -m ablator launch EXPERIMENT_FILE --store URL`",
        "analyze": "create it with `python -m ablator launch EXP --store URL`",
        "trials": "give the store URL",
        "run": "give the store URL that `launch` or `run` printed",
    }
    for cmd, message in expected.items():
        args = ("run", "--from", str(empty), "--trial", "0") if cmd == "run" else (cmd, str(empty))
        out = ablator_cli(*args, cwd=tmp_path, env=env)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (cmd, out.stderr)
        assert "experiment.json" in out.stderr and message in out.stderr, (cmd, out.stderr)
    agent = _agent(empty, env)
    assert agent.returncode == 1 and "no experiment in" in agent.stderr
    assert "create it first with `python -m ablator launch EXPERIMENT_FILE --store" in agent.stderr


def _as_launched_by_an_older_ablator(store: Path, trials: int) -> None:
    """Rewrite ``experiment.json`` as an ablator without ``MAX_TRIALS`` would have launched it:
    the design's own trials, the budget and the hash agree."""
    from ablator.experiment import data_hash

    path = store / layout.EXPERIMENT
    data = json.loads(path.read_text())
    data["experiment"]["design"]["trials"] = trials
    data["budget"] = trials
    data["ablator_version"] = "0.9"
    data["experiment_hash"] = data_hash(data["experiment"])
    path.write_text(json.dumps(data))


@pytest.mark.procs
def test_a_store_launched_over_the_trial_limit_is_read_but_not_run(tmp_path: Path) -> None:
    store, exp_file, folder = _launched(tmp_path)
    env = child_env(folder)
    out = ablator_cli("run", str(exp_file), "--store", str(store), "--trial", "0", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    _as_launched_by_an_older_ablator(store, 10**12)
    refusal = (
        "this experiment was launched by ablator 0.9 with 1,000,000,000,000 trials, more than this ablator's"
    )
    remedy = "launch a corrected experiment (at most 10,000,000 trials) into a new store"
    for cmd in (
        ("run", str(exp_file), "--store", str(store), "--trial", "1"),
        ("launch", str(exp_file), "--store", str(store), "--extend", "1"),
        ("gc", str(store)),
    ):
        out = ablator_cli(*cmd, cwd=tmp_path, env=env)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (cmd, out.stderr)
        assert refusal in out.stderr and remedy in out.stderr and "was edited" not in out.stderr, out.stderr
    agent = _agent(store, env)
    assert agent.returncode == 1 and refusal in agent.stderr and remedy in agent.stderr
    assert not (store / layout.trial_dir(1)).exists()  # nothing ran
    # the readers read what exists
    out = ablator_cli("analyze", str(store), "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["budget"] == 10**12 and report["status"] == {"completed": 1, "pending": 10**12 - 1}
    out = ablator_cli("status", str(store), "--json", env=env)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert any(refusal in p for p in st["problems"])
    assert any(
        "are not run: this ablator's agents refuse a budget over 10,000,000" in w for w in st["waiting"]
    )
    out = ablator_cli("report", str(store), "--out", str(tmp_path / "rep"), cwd=tmp_path, env=env)
    assert out.returncode == 0 and (tmp_path / "rep" / "report.md").exists(), out.stderr


def test_an_edited_budget_over_the_limit_is_still_an_edit(tmp_path: Path) -> None:
    from ablator import records
    from ablator.errors import ExperimentTampered
    from ablator.experiment import data_hash
    from ablator.spec import verify_hash

    exp = {**EXPERIMENT, "design": {**EXPERIMENT["design"], "trials": 3}}
    spec = records.ExperimentSpec(name="errs", experiment=exp, experiment_hash=data_hash(exp), budget=10**12)
    with pytest.raises(
        ExperimentTampered, match=r"`budget` is 1000000000000, outside 1\.\.10,000,000 \(launch never"
    ):
        verify_hash(spec, "s/experiment.json", over_limit_ok=True)  # the design says 3: an edit
