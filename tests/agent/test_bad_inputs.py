"""Mistaken and hostile inputs that would give wrong results or make a store unusable (issue 12):
each is refused with a clear message, or handled with the right numbers."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from testkit import ablator_cli, child_env, put_claim

from ablator import layout
from ablator.errors import ConfigError, ExperimentTampered
from ablator.store import open_store

from .conftest import experiment, launch_toy, results, status_json


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


@pytest.mark.procs
def test_a_budget_typo_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    env = child_env()
    store = tmp_path / "store"
    exp = experiment(design={"kind": "random", "trials": 10**23, "space": {"x": {"range": [0.0, 1.0]}}})
    out = ablator_cli("launch", str(_write_yaml(tmp_path / "big.yaml", exp)), "--store", str(store), env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "$.design.trials: at most 10,000,000" in out.stderr
    assert not store.exists()
    exp_file = _write_yaml(tmp_path / "exp.yaml", experiment())
    out = ablator_cli("launch", str(exp_file), "--store", str(store), "--extend", "1000000000000000", env=env)
    assert out.returncode == 1 and "at most 10,000,000 trials" in out.stderr and "Traceback" not in out.stderr
    assert not (store / layout.EXPERIMENT).exists()  # validated before experiment.json was written
    out = ablator_cli("launch", str(exp_file), "--store", str(store), "--extend", "1e23", env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr and not (store / layout.EXPERIMENT).exists()


def test_a_wrong_extension_can_be_taken_back(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    exp = experiment()  # 4 trials
    assert launch_toy(store, exp).budget == 4
    assert launch_toy(store, exp, extend=9_999_990).budget == 9_999_994
    with pytest.raises(ConfigError, match="more than 10,000,000"):
        launch_toy(store, exp, extend=7)
    res = launch_toy(store, exp, extend=-9_999_988)  # meant --extend 2
    assert res.budget == 6 and "took 9999988 trial(s) back" in res.message
    # never below the launched budget, nor below the trials already started
    with pytest.raises(ConfigError, match=r"at most --extend -2;"):
        launch_toy(store, exp, extend=-3)
    put_claim(open_store(store), 5)
    with pytest.raises(ConfigError, match=r"6 trial\(s\) already started\), so nothing can be taken back"):
        launch_toy(store, exp, extend=-1)
    assert launch_toy(store, exp).budget == 6
    with pytest.raises(ConfigError, match="--extend 0: the number of trials to add must be at least 1"):
        launch_toy(store, exp, extend=0)


@pytest.mark.procs
def test_memory_stores_are_refused_where_they_cannot_outlive_the_process(tmp_path: Path) -> None:
    env = child_env()
    exp_file = str(_write_yaml(tmp_path / "exp.yaml", experiment()))
    for args in (
        ("launch", exp_file, "--store", "memory://x"),
        ("run", exp_file, "--store", "memory://x"),
        ("status", "memory://x"),
        ("analyze", "memory://x"),
        ("run", "--from", "memory://x", "--trial", "0"),
    ):
        out = ablator_cli(*args, env=env)
        assert out.returncode == 1, (args, out.stderr)
        assert "a memory store lives in one process" in out.stderr and "Traceback" not in out.stderr
    agent = subprocess.run(
        [sys.executable, "-m", "ablator.agent", "memory://x", "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agent.returncode == 1 and "a memory store lives in one process" in agent.stderr


@pytest.mark.procs
def test_corrupt_claim_and_extension_records_keep_the_numbers_right(
    tmp_path: Path, agents: Any, agent_env: dict[str, str]
) -> None:
    store = tmp_path / "store"
    exp = experiment(design={"kind": "ablation", "ablations": {"big": {"x": 5.0}}, "repeats": 2})
    launch_toy(str(store), exp, extend=2)  # 4 trials + 2
    assert agents(str(store)).wait(120) == 0
    (store / layout.claim(0, 0)).write_bytes(b"\x00torn")  # the baseline's only claim
    (store / layout.trial_summary(0)).unlink()  # analysis reads the trial's records, not its summary
    (store / layout.extension(0)).write_bytes(b"\x00torn")
    out = ablator_cli("analyze", str(store), "--json", env=agent_env)
    assert out.returncode == 0, out.stderr
    assert "claim.e0000" in out.stderr and "extend/0000.msgpack" in out.stderr  # both warned
    report = json.loads(out.stdout)
    assert report["trials"] == 6 and report["budget"] == 6
    baseline = next(lv for lv in report["effects"]["levels"] if lv["level"] == "baseline")
    assert baseline["n"] == 3 and report["effects"]["n_used"] == 6
    st = status_json(str(store), agent_env)
    assert st["progress"]["finished"] == 6 and st["progress"]["total"] == 6
    problems = "\n".join(st["problems"])
    assert "extend/0000.msgpack" in problems and "counts as 0 trials" in problems
    assert "trial 0: corrupt record 'trials/000000/claim.e0000.msgpack'" in problems
    assert "the trial's resolved config" in problems and "Restore the file from a backup" in problems


def test_status_checks_config_claims_only_where_analysis_reads_them(tmp_path: Path) -> None:
    from ablator import status
    from ablator.store.counting import CountingStore

    store = str(tmp_path / "store")
    exp = experiment(design={"kind": "random", "trials": 3, "space": {"x": {"range": [0.0, 1.0]}}})
    launch_toy(store, exp)
    from ablator.agent.run import run

    exp_file = _write_yaml(tmp_path / "exp.yaml", exp)
    for i in range(3):
        assert run(exp_file, store=store, trial=i, progress=False).status == "completed"
    for i in range(3):
        (tmp_path / "store" / layout.claim(i, 0)).write_bytes(b"\x00torn")
    (tmp_path / "store" / layout.trial_summary(2)).unlink()  # analysis reads trial 2's claim

    class KeyCounting(CountingStore):
        keys: list[str] = []

        def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
            self.keys.append(key)
            return super().read(key, max_bytes=max_bytes)

    counting = KeyCounting(open_store(store))
    report = status.collect(counting)
    claims_read = [k for k in counting.keys if "/claim." in k]
    assert claims_read == [layout.claim(2, 0)]  # not those of trials with a summary
    assert [p for p in report.problems if "claim.e0000" in p] == [
        next(p for p in report.problems if p.startswith("trial 2: corrupt record"))
    ]


@pytest.mark.procs
def test_readers_scale_with_the_trials_run_not_the_budget(tmp_path: Path, agent_env: dict[str, str]) -> None:
    from ablator.agent.run import run
    from ablator.analysis import load

    budget = 10_000_000
    exp = experiment(design={"kind": "random", "trials": budget, "space": {"x": {"range": [0.0, 1.0]}}})
    exp_file = _write_yaml(tmp_path / "exp.yaml", exp)
    store = tmp_path / "store"
    launch_toy(str(store), exp)
    for i in (0, 7):
        assert run(exp_file, store=str(store), trial=i, progress=False).status == "completed"
    res = load(str(store), cache=False)
    assert res.trials.height == 2 and res.unlisted_pending == budget - 2  # no row per pending index
    assert res.status_counts() == {"completed": 2, "pending": budget - 2}
    st = status_json(str(store), agent_env)
    assert st["counts"]["pending"] == budget - 2 and st["progress"]["total"] == budget
    out = ablator_cli("analyze", str(store), "--json", env=agent_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == {"completed": 2, "pending": budget - 2}
    out = ablator_cli("plan", str(exp_file), "--json", env=agent_env)
    plan = json.loads(out.stdout)
    assert out.returncode == 0 and plan["budget"] == budget and plan["shown"] == len(plan["trials"]) == 1_000
    assert "1,000 of 10,000,000 trials listed" in out.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.procs
def test_processes_a_trial_starts_get_default_signals_and_die_with_its_worker(
    tmp_path: Path, agents: Any
) -> None:
    out_dir = tmp_path / "helpers"
    out_dir.mkdir()
    exp = experiment(
        entry="tests.agent.spawntoy:trial",
        config={"out_dir": str(out_dir)},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        # The stall limit also bounds the worker's own setup before the trial's first report
        # (durable attempt record, fsynced): 3 s left no margin on a busy disk.
        limits={"stall_seconds": 10, "max_attempts": 1},
    )
    store = str(tmp_path / "store")
    launch_toy(store, exp)
    agent = agents(store)
    assert agent.wait(120) == 0, agent.output()
    lines = [p.read_text() for p in out_dir.glob("*.txt")]
    assert len(lines) == 1, agent.output()
    pid, on_term, on_int = lines[0].split(" ", 2)
    # default handling in what the trial started (not inherited as ignored, "1", from the worker)
    assert on_term == str(int(signal.SIG_DFL)) and on_int.strip() == str(signal.default_int_handler)
    assert not _alive(int(pid))  # killed with the stalled worker's process group
    failure = open_store(store).get(layout.failed(0, 0))
    assert failure is not None and b"stalled" in failure


MODULE = """
from ablator.config import BaseConfig


class C(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.0


def trial(config: C, ctx):
    return {"score": config.x}
"""


@pytest.mark.procs
def test_code_snapshots_follow_links_inside_and_refuse_links_outside(tmp_path: Path) -> None:
    env = child_env()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linkedmod.py").write_text(MODULE)
    code = tmp_path / "code"
    code.mkdir()
    (code / "linkedmod.py").symlink_to(elsewhere / "linkedmod.py")  # outside the folder
    exp = experiment(entry="linkedmod:trial", config={})
    exp_file = _write_yaml(tmp_path / "exp.yaml", exp)
    store = tmp_path / "store"
    out = ablator_cli(
        "launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path, env=env
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "symbolic link(s) point outside the folder (linkedmod.py -> " in out.stderr
    assert not store.exists()
    # a link to a folder inside is followed: the package is in the snapshot and agents import it
    (code / "linkedmod.py").unlink()
    (code / "src" / "realpkg").mkdir(parents=True)
    (code / "src" / "realpkg" / "__init__.py").write_text("")
    (code / "src" / "realpkg" / "mod.py").write_text(MODULE)
    (code / "realpkg").symlink_to(code / "src" / "realpkg", target_is_directory=True)
    exp_file = _write_yaml(tmp_path / "exp2.yaml", experiment(entry="realpkg.mod:trial", config={}))
    out = ablator_cli(
        "launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(io.BytesIO(next((store / "code").glob("*.zip")).read_bytes())) as zf:
        assert {"realpkg/__init__.py", "realpkg/mod.py", "src/realpkg/mod.py"} <= set(zf.namelist())


@pytest.mark.procs
def test_an_entry_left_out_of_the_snapshot_is_refused(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "ignoredmod.py").write_text(MODULE)
    (code / ".gitignore").write_text("ignoredmod.py\n")
    exp_file = _write_yaml(tmp_path / "exp.yaml", experiment(entry="ignoredmod:trial", config={}))
    store = tmp_path / "store"
    out = ablator_cli(
        "launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path, env=child_env()
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "'ignoredmod' is ignoredmod.py, which the snapshot leaves out" in out.stderr
    assert not store.exists()


@pytest.mark.procs
@pytest.mark.parametrize("repeatedly", [False, True])
def test_an_agent_exits_after_a_trial_folder_is_deleted_mid_run(
    tmp_path: Path, agents: Any, repeatedly: bool
) -> None:
    import shutil
    import time

    from .conftest import wait_for

    store = tmp_path / "store"
    exp = experiment(
        config={"steps": 12, "sleep": 0.3, "checkpoint_every": 2},
        design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    launch_toy(str(store), exp)
    agent = agents(str(store))
    metrics = store / layout.metrics_dir(0)
    wait_for("trial 0's first metric chunk", lambda: metrics.is_dir() and any(metrics.iterdir()))
    if repeatedly:
        # its metrics deleted again and again: the trial's writes fail (its attempts fail), then
        # everything of it goes, claims included: a trial this agent claimed before is pending
        # again, and must be claimed afresh (it used to be skipped for good: the agent hung)
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            shutil.rmtree(metrics, ignore_errors=True)
            time.sleep(0.001)
    shutil.rmtree(
        store / layout.trial_dir(0), ignore_errors=True
    )  # an operator's mistake while the trial runs
    assert agent.wait(120) == 0, agent.output()  # not a hang
    st = open_store(store)
    assert st.get(layout.result(1)) is not None


@pytest.mark.procs
@pytest.mark.parametrize("how", ["unprintable", "huge", "unrepresentable", "exit"])
def test_exceptions_that_are_hard_to_print_are_recorded_as_the_trials_failure(
    tmp_path: Path, agents: Any, how: str
) -> None:
    from ablator import records

    store = str(tmp_path / "store")
    exp = experiment(
        entry="tests.agent.weirdtoy:trial",
        config={"how": how},
        design={"kind": "random", "trials": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        limits={"max_attempts": 1},
    )
    launch_toy(store, exp)
    assert agents(store).wait(120) == 0
    data = open_store(store).get(layout.failed(0, 0))
    assert data is not None
    failure = records.decode(data, records.Failure)
    assert failure.kind == "exception"  # the trial's failure, not a worker crash
    if how == "unprintable":
        assert failure.message == "Unprintable: <the exception's str() raised RuntimeError>"
    elif how == "unrepresentable":
        assert failure.message == "Unrepresentable: <the exception's str() raised SystemExit>"
        assert "Unrepresentable" in failure.traceback
    elif how == "exit":
        assert failure.message == "SystemExit: 5" and "raise SystemExit(5)" in failure.traceback
    else:
        assert failure.message.startswith("ValueError: xxx") and "characters cut" in failure.message
        assert len(failure.message) < 11_000


@pytest.mark.procs
def test_an_edited_budget_in_experiment_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    launch_toy(str(store), experiment())

    def change(data: dict[str, Any]) -> None:
        data["budget"] = -5

    _edit_stored(store, change)
    out = ablator_cli("analyze", str(store), env=child_env())
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{layout.EXPERIMENT}: `budget` is -5" in out.stderr and "--extend N" in out.stderr


def test_a_stored_experiment_this_ablator_refuses_names_the_version_that_launched_it() -> None:
    from ablator import records
    from ablator.experiment import data_hash
    from ablator.spec import checked_experiment

    # a rule this ablator has and 0.9 did not (a budget over MAX_TRIALS has its own message:
    # tests/test_experiment_json_errors.py)
    exp = experiment(limits={"max_attempts": 0})
    spec = records.ExperimentSpec(
        name="toy", experiment=exp, experiment_hash=data_hash(exp), ablator_version="0.9"
    )
    with pytest.raises(
        ConfigError, match=r"launched by ablator 0\.9 and is never rewritten: run its agents"
    ) as info:
        checked_experiment(spec, "s/experiment.json")
    assert "$.limits.max_attempts: must be >= 1" in str(info.value) and "s/experiment.json" in str(info.value)
    big = experiment(design={"kind": "random", "trials": 20_000_000, "space": {"x": {"range": [0.0, 1.0]}}})
    spec = records.ExperimentSpec(
        name="toy", experiment=big, experiment_hash=data_hash(big), ablator_version="0.9"
    )
    with pytest.raises(
        ConfigError, match=r"launched by ablator 0\.9 with a design of more trials than this ablator's limit"
    ):
        checked_experiment(spec, "s/experiment.json")


@pytest.mark.procs
def test_a_forked_copy_of_the_worker_does_not_outlive_it(tmp_path: Path, agents: Any) -> None:
    from .conftest import wait_for

    out_dir = tmp_path / "forked"
    out_dir.mkdir()
    exp = experiment(
        entry="tests.agent.spawntoy:forks",
        config={"out_dir": str(out_dir)},
        design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
        # one attempt per trial, one fork each: a lease a loaded machine keeps (no takeover)
        limits={"lease_seconds": 8.0, "heartbeat_seconds": 0.5},
    )
    store = str(tmp_path / "store")
    launch_toy(store, exp)
    agent = agents(store)
    assert agent.wait(120) == 0, agent.output()  # the lingering copies hold its pipes: no hang
    pids = [int(p.read_text()) for p in out_dir.glob("forked-*.txt")]
    assert len(pids) == 2
    wait_for("the forked copies to be gone", lambda: not any(_alive(pid) for pid in pids), timeout=30)
    assert {r.status for r in results(open_store(store)).values()} == {"completed"}


@pytest.mark.procs
@pytest.mark.parametrize("after", [0.3, 0.9, 1.5])
def test_a_launch_killed_midway_can_be_run_again(tmp_path: Path, after: float) -> None:
    import time

    code = tmp_path / "code"
    code.mkdir()
    (code / "killmod.py").write_text(MODULE)
    for i in range(200):  # some bulk, so that the kill can land inside the upload
        (code / f"data_{i}.py").write_text(f"X = {'1' * 2000}\n")
    exp_file = _write_yaml(tmp_path / "exp.yaml", experiment(entry="killmod:trial", config={}))
    store = tmp_path / "store"
    args = [
        sys.executable,
        "-m",
        "ablator",
        "launch",
        str(exp_file),
        "--store",
        str(store),
        "--code",
        str(code),
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(after)
    proc.kill()  # SIGKILL wherever it is: reading the code, uploading, creating experiment.json
    proc.wait(30)
    again = ablator_cli("launch", str(exp_file), "--store", str(store), "--code", str(code), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "launched experiment" in again.stdout or "nothing to do" in again.stdout
    spec = json.loads((store / layout.EXPERIMENT).read_text())
    zips = list((store / "code").glob("*.zip"))
    assert [z.stem for z in zips] == [spec["code_sha256"]]  # one complete snapshot, the one pinned


@pytest.mark.procs
def test_an_unreadable_extension_stops_the_budget_until_an_extend_settles_it(
    tmp_path: Path, agents: Any, agent_env: dict[str, str]
) -> None:
    exp_file = _write_yaml(tmp_path / "exp.yaml", experiment())  # 4 trials
    store = tmp_path / "store"
    launch = ("launch", str(exp_file), "--store", str(store))
    assert ablator_cli(*launch, env=agent_env).returncode == 0
    assert ablator_cli(*launch, "--extend", "2", env=agent_env).returncode == 0
    assert agents(str(store)).wait(120) == 0
    assert sorted(results(open_store(store))) == list(range(6))
    (store / layout.extension(0)).write_bytes(b"\x00torn")  # the +2 is lost
    # agents start nothing past the readable budget, and say why and what to do
    agent = agents(str(store))
    assert agent.wait(120) == 0, agent.output()
    said = agent.output()
    assert "extend/0000.msgpack: an extension of the budget that does not decode" in said
    assert "no trial past 4 (the budget without it)" in said and "--extend N" in said
    # --extend after it adds to the budget the trials show (4 + 2 started + 1), not to 4
    out = ablator_cli(*launch, "--extend", "1", env=agent_env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "the unreadable extend/0000.msgpack now counts as 2 trial(s)" in out.stdout
    assert "budget: 7 trials" in out.stdout
    agent = agents(str(store))
    assert agent.wait(120) == 0, agent.output()
    assert "does not decode" not in agent.output()  # settled: nothing left to warn about
    assert sorted(results(open_store(store))) == list(range(7))
    st = status_json(str(store), agent_env)
    assert st["progress"]["finished"] == 7 and st["progress"]["total"] == 7
    assert not any("beyond the budget" in p for p in st["problems"])
    out = ablator_cli("analyze", str(store), "--json", env=agent_env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["trials"] == 7 and report["budget"] == 7
    # restored from a backup, the record counts as itself again: the +1 still adds to it
    from ablator import records

    (store / layout.extension(0)).write_bytes(records.encode(records.Extension(k=0, trials=2)))
    assert json.loads(ablator_cli("analyze", str(store), "--json", env=agent_env).stdout)["budget"] == 7


def test_an_unreadable_extension_of_trials_not_started_is_counted_from_what_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    exp = experiment()  # 4 trials
    launch_toy(store, exp, extend=3)
    (tmp_path / "store" / layout.extension(0)).write_bytes(b"\x00torn")
    with pytest.warns(
        UserWarning, match=r"extend/0000\.msgpack: an extension of the budget that does not decode"
    ):
        from ablator.lease import budget_of

        budget = budget_of(open_store(store), 4)
    assert budget.trials == 4 and budget.unreadable == (layout.extension(0),)
    res = launch_toy(store, exp, extend=1)  # nothing started beyond 4: settled as 0, budget 5
    assert res.budget == 5 and "now counts as 0 trial(s)" in res.message
    assert budget_of(open_store(store), 4).unreadable == ()


@pytest.mark.procs
def test_a_helper_a_finished_trial_left_running_ends_with_the_trial(tmp_path: Path, agents: Any) -> None:
    from .conftest import wait_for

    out_dir = tmp_path / "left"
    out_dir.mkdir()
    exp = experiment(
        entry="tests.agent.spawntoy:leaves",
        config={"out_dir": str(out_dir)},
        design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
    )
    store = str(tmp_path / "store")
    launch_toy(store, exp)
    agent = agents(store, "--slots", "1")
    st = open_store(store)
    wait_for("trial 0's result", lambda: st.exists(layout.result(0)), timeout=120)
    (pid_file,) = out_dir.glob("left-*.txt")
    helper = int(pid_file.read_text().split()[0])
    worker = int(pid_file.stem.split("-")[1])
    # trial 1 runs in the same worker meanwhile (it waits for the release file): the worker is
    # alive, and trial 0's helper is already gone
    assert _alive(worker) and not st.exists(layout.result(1))
    orphan = int((out_dir / "grandchild.txt").read_text())  # its parent, a shell, exited at once
    assert not _alive(helper) and not _alive(orphan)
    (out_dir / "release").write_text("")
    assert agent.wait(120) == 0, agent.output()
    log = st.get(layout.log(0, 0))
    assert log is not None and "ended 2 process(es) the trial left running" in log.decode()


#: an agent whose peak memory (its own process, not its workers') is printed when it ends
MEASURED_AGENT = """
import resource, sys
from ablator.agent import main
try:
    rc = main(sys.argv[1:])
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(rc)
"""


@pytest.mark.procs
def test_a_trial_that_prints_hundreds_of_megabytes_is_capped_and_the_study_goes_on(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    from ablator.agent.worker import LOG_LIMIT

    def study(name: str, mb: int) -> tuple[int, int, Any]:
        """The agent's peak memory, the largest local log seen while it ran, and the store."""
        exp = experiment(
            entry="tests.agent.weirdtoy:trial",
            config={"how": "noisy", "mb": mb},
            design={"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
        )
        store = str(tmp_path / name)
        launch_toy(store, exp)
        local = tmp_path / f"{name}-tmp"  # the agent's temp folder, which holds the workers' logs
        local.mkdir()
        env = dict(agent_env, TMPDIR=str(local))
        largest, seen = 0, 0
        with (tmp_path / f"{name}.out").open("w+") as out:
            agent = subprocess.Popen(
                [sys.executable, "-c", MEASURED_AGENT, store, "--cpu", "--slots", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                while agent.poll() is None:
                    # both the size and the disk space: a sparse file must not pass for a small one
                    for f in local.glob("ablator-agent-*/*.log"):
                        with contextlib.suppress(FileNotFoundError):
                            info = f.stat()
                            largest = max(largest, info.st_size, info.st_blocks * 512)
                            seen += 1
                    time.sleep(0.01)
                agent.wait(300)
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
            out.seek(0)
            text = out.read()
        assert agent.returncode == 0, text[-3000:]
        assert seen > 0  # the local logs were looked at while the trials printed
        return int(text.strip().splitlines()[-1]), largest, open_store(store)

    quiet, _, _ = study("quiet", 0)
    mb = 96  # to stdout and to stderr each, per trial: 384 MiB in all
    peak, largest, st = study("noisy", mb)
    # the agent never holds a log whole: its peak is the quiet study's, give or take a few log copies
    assert peak < quiet + 16 * LOG_LIMIT, (peak, quiet)
    # nor does its local disk: the log file keeps the head and the tail, no more
    assert largest <= LOG_LIMIT + 64 * 1024, largest
    assert sorted(results(st)) == [0, 1]  # the study went on
    for trial in (0, 1):
        log = st.get(layout.log(trial, 0))
        assert log is not None and len(log) <= LOG_LIMIT + 200
        text = log.decode(errors="replace")
        assert "[out 0]" in text and "[end of output]" in text  # the head and the tail are kept
        # the marker says how much was left out: all of the output but what was kept
        (cut,) = re.findall(r"\[\.\.\. (\d+) bytes cut \.\.\.\]", text)
        kept = len(log) - len(f"\n[... {cut} bytes cut ...]\n")
        assert int(cut) + kept >= 2 * mb * 1024 * 1024
