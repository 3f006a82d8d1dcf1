"""Preemption before the first checkpoint (issue 11 item 1): a trial function that returns while
a stop was requested is released, never recorded as completed with partial metrics, unless it
says that it finished."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import polars as pl
import pytest
import trainlib as T
import yaml
from testkit import child_env, put_claim

from ablator import layout, records
from ablator.entrypoint import EntryPoint
from ablator.experiment import experiment_from_dict
from ablator.ops import launch
from ablator.store import open_store
from ablator.train import Outcome, TrialContext, execute_trial
from tests.agent.conftest import AgentProc, wait_for

pytestmark = pytest.mark.procs  # the attempt record's environment probe starts a process


class Draining:
    """The agent asks the trial to stop from the start (a SIGTERM right after the claim)."""

    should_stop = True

    def check(self) -> None:
        pass


def _run(fn: Any, config: Any = None, kind: str = "function", metric: str = "score") -> Outcome:
    store = open_store(f"memory://preempt-{uuid.uuid4().hex}")
    spec = T.spec_for(config or T.tiny_config())
    put_claim(store, spec.index, 0, spec=spec)
    entry = EntryPoint(kind=kind, obj=fn, config_type=T.TinyConfig)  # type: ignore[arg-type]
    return execute_trial(
        entry,
        spec,
        store,
        spec.index,
        0,
        fence=Draining(),
        device="cpu",
        progress=False,
        metric=(metric, "max"),
    )


def test_returning_on_a_stop_before_any_checkpoint_is_a_release() -> None:
    def forty_steps(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        score = 0.0
        for step in range(1, 41):
            score = step / 50
            ctx.report(step, {"score": score})
            if step % 10 == 0:
                ctx.save_checkpoint({"step": step}, step)
            if ctx.should_stop and step >= 3:
                break  # as documented: return when asked to stop
        return {"score": score}

    out = _run(forty_steps)
    assert out.status == "stopped"  # released: the next holder starts it again
    assert out.checkpoint_step is None


def test_a_trial_that_says_it_finished_is_completed_even_when_asked_to_stop() -> None:
    def short(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        for step in range(1, 4):
            ctx.report(step, {"score": step})
        ctx.finished()
        return {"score": 3.0}

    out = _run(short)
    assert out.status == "completed" and out.metrics == {"score": 3.0}


def test_a_model_wrapper_asked_to_stop_checkpoints_and_is_released() -> None:
    out = _run(T.TinyWrapper, T.tiny_config(max_steps=12, eval_every=6), "wrapper", "val_accuracy")
    # It stops after its first step, with the checkpoint the stop makes: resumable from there.
    assert out.status == "stopped" and out.steps == 1 and out.checkpoint_step == 1


def test_a_model_wrapper_whose_last_step_comes_with_the_stop_is_completed() -> None:
    out = _run(T.TinyWrapper, T.tiny_config(max_steps=1, eval_every=1), "wrapper", "val_accuracy")
    assert out.status == "completed" and out.steps == 1 and "val_accuracy" in out.metrics


# --- real processes: an agent's drain (ModelWrapper) and ``ablator run`` ----------------------------

ROOT = Path(__file__).resolve().parents[2]
STOPTOY = "tests.faults.stoptoy"
LONG_LEASE = {"max_attempts": 2, "lease_seconds": 600, "heartbeat_seconds": 0.5, "stall_seconds": 120}


@pytest.fixture
def agent_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(subprocess_env)
    env["ABLATOR_CACHE_DIR"] = str(tmp_path / "cache")
    env["ABLATOR_LOCK_DIR"] = str(tmp_path / "locks")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _wrapper_experiment(steps: int) -> dict[str, Any]:
    return {
        "name": "stopwrapper",
        "entry": f"{STOPTOY}:StopWrapper",
        "config": {
            "model": {"step_sleep": 0.1},
            # no checkpoint before the end but the one a stop makes (eval_every: the last step)
            "train": {
                "batch_size": 2,
                "epochs": 10,
                "max_steps": steps,
                "eval_every": steps,
                "checkpoint_every": steps,
            },
        },
        "metric": {"name": "val_score", "mode": "max"},
        "design": {"kind": "random", "trials": 1, "seed": 1, "space": {"model.x": {"range": [0.0, 1.0]}}},
        "limits": LONG_LEASE,
        "resources": {"gpu": "none"},
    }


def _function_experiment(steps: int) -> dict[str, Any]:
    return {
        "name": "stopfn",
        "entry": f"{STOPTOY}:trial",
        "config": {"steps": steps, "sleep": 0.1},
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": 1, "seed": 1, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": LONG_LEASE,
        "resources": {"gpu": "none"},
    }


def _stepped(log: Path, step: int) -> bool:
    return f"stoptoy step {step}\n" in log.read_text(errors="replace")


def _analysis_sees(url: str, metric: str) -> tuple[str, float | None]:
    from ablator.analysis import load

    res = load(url, cache=False)
    row = res.trials.filter(pl.col("index") == 0).to_dicts()[0]
    return str(row["status"]), row.get(f"final.{metric}")


def test_an_agent_drained_before_a_model_wrappers_first_checkpoint_releases_it(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    steps = 60
    url = str(tmp_path / "store")
    launch(experiment_from_dict(_wrapper_experiment(steps)), url)
    log = tmp_path / "agent-0.log"
    a = AgentProc(url, agent_env, log, "--progress-seconds", "0.3")
    store = open_store(url)
    try:
        # The agent's progress lines say how far its worker got (no rows are written before the
        # end: the only evaluation is at the last step).
        wait_for(
            "the trial past step 2", lambda: re.search(r"trial 0 step ([3-9]|\d\d)", a.output()), timeout=120
        )
        a.signal(signal.SIGTERM)
        assert a.wait(120) == 0, a.output()
    finally:
        a.kill_tree()
    rel = records.decode(store.read(layout.release(0, 0)), records.Release)
    assert "SIGTERM" in rel.reason
    assert not store.exists(layout.result(0)), "a drained trial must not be recorded finished"
    # The stop made the loop checkpoint where it was, short of the end: resumable from there.
    assert rel.step is not None and 2 <= rel.step < steps and store.exists(layout.checkpoint(0, 0, rel.step))
    assert _analysis_sees(url, "val_score") == ("released", None)  # no partial number
    b = AgentProc(url, agent_env, tmp_path / "agent-1.log")
    try:
        assert b.wait(240) == 0, b.output()
    finally:
        b.kill_tree()
    res = records.decode(store.read(layout.result(0)), records.Result)
    assert res.status == "completed" and res.epoch == 1 and _resumed_from(store, 1) == (0, rel.step)
    assert res.metrics["val_score"] == 1.0  # the full run's number
    assert _analysis_sees(url, "val_score") == ("completed", 1.0)


def _resumed_from(store: Any, epoch: int) -> tuple[int, int] | None:
    att = records.decode(store.read(layout.attempt(0, epoch)), records.Attempt)
    return att.resumed_from


def _ablator_run(exp_file: Path, url: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ablator",
                "run",
                str(exp_file),
                "--store",
                url,
                "--trial",
                "0",
                "--no-progress",
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("launched", [True, False], ids=["launched", "private"])
def test_sigterm_to_ablator_run_before_the_first_checkpoint_releases_the_trial(
    tmp_path: Path, launched: bool
) -> None:
    steps = 40
    exp = _function_experiment(steps)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(exp))
    url = str(tmp_path / "store")
    if launched:
        launch(experiment_from_dict(exp), url)
    env = child_env(OMP_NUM_THREADS="1")
    log = tmp_path / "run-0.log"
    proc = _ablator_run(exp_file, url, log, env)
    try:
        wait_for("the trial at step 3", lambda: _stepped(log, 3), timeout=120)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert code == 130 and "Traceback" not in out, out  # stopped, as after a Ctrl-C
    assert "SIGTERM" in out and "trial 0: stopped after" in out, out
    store = open_store(url)
    assert not store.exists(layout.result(0)), "a trial stopped before its end must not be recorded finished"
    rel = records.decode(store.read(layout.release(0, 0)), records.Release)
    assert rel.step is None  # no checkpoint yet: the next attempt starts from scratch
    if launched:
        assert _analysis_sees(url, "score") == ("released", None)
    again = _ablator_run(exp_file, url, tmp_path / "run-1.log", env)
    assert again.wait(240) == 0, (tmp_path / "run-1.log").read_text()
    res = records.decode(store.read(layout.result(0)), records.Result)
    assert res.status == "completed" and res.epoch == 1 and _resumed_from(store, 1) is None
    assert res.metrics["score"] == 1.0  # every step, not the 3 of the stopped attempt
    from ablator import lineage

    assert [r.step for r in lineage.canonical_rows(store, 0, 1)] == list(range(1, steps + 1))
    if launched:
        assert _analysis_sees(url, "score") == ("completed", 1.0)
