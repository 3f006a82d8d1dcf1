"""``ablator run`` / ``ablator.run``: private stores (resume by running again, Ctrl-C stops with a
checkpoint, done trials and changed configs refused), launched stores (claimed like an agent),
``--smoke`` and ``--from``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testkit import put_claim

from ablator import layout, lease, lineage, records
from ablator.agent.run import run
from ablator.cli import main
from ablator.errors import AblatorError
from ablator.ops import launch
from ablator.store import open_store

EXPERIMENT = """
name: tiny
entry: trainlib:{entry}
config:
  model: {{hidden: 16, step_sleep: {sleep}}}
  train: {{batch_size: 8, epochs: {epochs}, eval_every: 4, optimizer: {{name: adam, lr: 0.01}}}}
metric: {{name: val_accuracy, mode: max}}
design:
  kind: ablation
  repeats: 1
  seed: 0
  ablations:
    wide: {{model.hidden: 32}}
    no_dropout: {{model.dropout: 0.0}}
limits: {{lease_seconds: 30, heartbeat_seconds: 2}}
"""


def write_experiment(
    tmp_path: Path, *, entry: str = "TinyWrapper", epochs: int = 2, sleep: float = 0.0
) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT.format(entry=entry, epochs=epochs, sleep=sleep))
    return path


def test_cli_run_into_a_private_store_then_refuses_the_done_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_experiment(tmp_path)
    store_dir = tmp_path / "runs"
    assert main(["run", str(exp), "--store", str(store_dir), "--no-progress", "--trial", "1"]) == 0
    out = capsys.readouterr()
    assert "trial 1 (wide): completed after 24 steps" in out.out and "best val_accuracy" in out.out
    assert "trial 1 e0 | step 24/24" in out.err  # --no-progress: log lines
    store = open_store(store_dir)
    res = records.decode(store.read(layout.result(1)), records.Result)
    assert res.status == "completed" and res.steps == 24 and res.lineage == [(0, None)]
    claim = records.decode(store.read(layout.claim(1, 0)), records.Claim)
    assert (
        claim.spec is not None and claim.spec.variant == "wide" and claim.spec.config["model"]["hidden"] == 32
    )
    assert main(["run", str(exp), "--store", str(store_dir), "--trial", "1"]) == 1
    err = capsys.readouterr().err
    assert "ablator run: error: trial 1 in" in err and "is done (completed, train_loss" in err
    assert not store.exists(layout.claim(1, 1))


def test_a_trial_started_with_another_config_is_refused_with_the_diff(tmp_path: Path) -> None:
    from ablator import experiment as X

    exp = write_experiment(tmp_path)
    store = open_store(tmp_path / "runs")
    spec = X.trial_spec(X.load_experiment(exp), 2)  # as a run that crashed left it
    put_claim(store, 2, spec=spec, agent="x")
    with pytest.raises(
        AblatorError, match=r"started with another config:\n  model\.hidden: 16 \(stored\) -> 64 \(now\)"
    ):
        run(exp, store=store, trial=2, progress=False, overrides=["config.model.hidden=64"])
    assert not store.exists(layout.claim(2, 1))
    out = run(exp, store=store, trial=2, progress=False)  # the same config continues as attempt 1
    assert out.status == "completed" and out.resumed_from is None
    assert records.decode(store.read(layout.result(2)), records.Result).epoch == 1


@pytest.mark.procs
def test_ctrl_c_checkpoints_and_running_again_resumes(tmp_path: Path, child_env: dict[str, str]) -> None:
    exp = write_experiment(tmp_path, entry="SlowWrapper", epochs=4, sleep=0.05)
    store_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ablator", "run", str(exp), "--store", str(store_dir), "--no-progress"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=tmp_path
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it trains: the first evaluation's log line
        if "| step 4/48" in line:
            break
    else:
        pytest.fail(f"no progress line; exit {proc.wait()}: {proc.stdout.read() if proc.stdout else ''}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # interrupted, like the agent: a script running it stops too
    assert "stopping after a checkpoint" in err and "trial 0 (baseline): stopped after" in out
    store = open_store(store_dir)
    rel = records.decode(store.read(layout.release(0, 0)), records.Release)
    assert rel.step is not None and 4 <= rel.step < 48 and store.exists(layout.checkpoint(0, 0, rel.step))
    outcome = run(exp, store=store_dir, progress=False)
    assert outcome.resumed_from == (0, rel.step) and outcome.status == "completed" and outcome.steps == 48
    res = records.decode(store.read(layout.result(0)), records.Result)
    assert res.epoch == 1 and res.lineage == [(0, None), (1, rel.step)]
    steps = [r.step for r in lineage.canonical_rows(store, 0, 1)]
    assert steps == sorted(set(steps)) and steps[-1] == 48


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_run_refuses_a_gpu_required_experiment_without_a_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_experiment(tmp_path)
    exp.write_text(exp.read_text() + "resources: {gpu: required}\n")
    store_dir = tmp_path / "runs"
    assert main(["run", str(exp), "--store", str(store_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "need a GPU ($.resources.gpu: required)" in err and "--device cpu" in err
    assert not store_dir.exists()
    assert main(["run", str(exp), "--store", str(store_dir), "--no-progress", "--device", "cpu"]) == 0


def test_smoke_runs_a_few_batches_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = write_experiment(tmp_path, epochs=50)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(exp), "--smoke", "--no-progress"]) == 0
    assert "trial 0 (baseline): completed after 3 steps" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["exp.yaml"]
    with pytest.raises(AblatorError, match="drop --store"):
        run(exp, smoke=True, store=tmp_path / "x")


def test_a_launched_store_is_claimed_like_an_agent(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path)
    url = tmp_path / "launched"
    launch(exp, url)
    store = open_store(url)
    out = run(exp, store=url, trial=1, progress=False)
    assert out.status == "completed"
    res = records.decode(store.read(layout.result(1)), records.Result)
    hb = records.decode(store.read(layout.agent(res.agent_id)), records.Heartbeat)
    assert hb.state == "exited" and res.status == "completed"
    with pytest.raises(
        AblatorError, match=r"trial 1 in .* is done: ablator run claims a trial like an agent"
    ):
        run(exp, store=url, trial=1, progress=False)
    # trial 2 held by a live agent: refused, nothing written for it
    membership = lease.Membership(store, lease.LeaseLimits(lease_seconds=30, heartbeat_seconds=2))
    membership.start()
    try:
        from ablator import experiment as X

        e = X.load_experiment(exp)
        held = lease.Claimer(store, membership, budget=3).claim(2, lambda i: X.trial_spec(e, i))
        assert held is not None
        # a run would wait for the live holder to die; a stop record makes it give up clearly
        from ablator.ops import resume, stop

        stop(url, reason="test")
        with pytest.raises(AblatorError, match=r"has a stop record .* does not claim trial 2"):
            run(exp, store=url, trial=2, progress=False)
        assert not store.exists(layout.attempt(2, 0)) and not store.exists(layout.claim(2, 1))
        assert resume(url)
    finally:
        membership.close()
    # --from reruns trial 1 with its recorded spec elsewhere: same seed and code, same numbers
    again = run(from_store=url, trial=1, store=tmp_path / "repro", progress=False)
    assert again.metrics == out.metrics and again.best == out.best


def test_a_trial_index_past_the_budget_is_refused(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path)  # baseline + 2 variants, 1 repeat: trials 0..2
    store = open_store(tmp_path / "runs")
    with pytest.raises(AblatorError, match=r"--trial 3: the experiment has 3 trials \(0 to 2\)"):
        run(exp, store=store, trial=3, progress=False)
    assert not store.list_dirs(layout.TRIALS_DIR)


def test_a_done_trial_run_with_another_config_shows_the_diff(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path, epochs=1)
    store = open_store(tmp_path / "runs")
    assert run(exp, store=store, trial=0, progress=False).status == "completed"
    with pytest.raises(AblatorError, match=r"another config:\n  train\.epochs: 1 \(stored\) -> 2 \(now\)"):
        run(exp, store=store, trial=0, progress=False, overrides=["config.train.epochs=2"])


def test_an_exception_in_user_code_is_the_trials_failure_not_a_bug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = write_experiment(tmp_path, entry="CrashAtTwoWrapper")
    store_dir = tmp_path / "runs"
    assert main(["run", str(exp), "--store", str(store_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ablator run: error: trial 0 raised Crash" in err
    assert "internal error" not in err
    store = open_store(store_dir)
    failure = records.decode(store.read(layout.failed(0, 0)), records.Failure)
    assert failure.kind == "exception" and "Crash" in failure.traceback


@pytest.mark.procs
def test_a_private_rerun_uses_the_recorded_trial_and_from_reads_a_private_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial whose first attempt recorded a spec runs that spec again (its seed too), not one
    recomputed from the experiment file; ``--from`` reproduces it from the private store."""
    import msgspec

    from ablator import experiment as X

    exp = write_experiment(tmp_path)
    e = X.load_experiment(exp)
    recomputed = X.trial_spec(e, 1)
    recorded = msgspec.structs.replace(recomputed, seed=recomputed.seed + 777)
    store = open_store(tmp_path / "runs")
    put_claim(store, 1, 0, spec=recorded, agent="run-earlier")
    fail = records.Failure(trial=1, epoch=0, agent_id="run-earlier", message="RuntimeError: killed")
    assert store.create(layout.failed(1, 0), records.encode(fail))
    out = run(exp, store=store, trial=1, progress=False)
    assert records.decode(store.read(layout.result(1)), records.Result).epoch == 1
    fresh = run(exp, store=tmp_path / "fresh", trial=1, progress=False)  # the recomputed seed
    assert fresh.metrics != out.metrics
    again = run(from_store=tmp_path / "runs", trial=1, store=tmp_path / "repro", progress=False)
    assert again.metrics == out.metrics and again.best == out.best
    # `ablator trials` and `ablator logs` read a private store too
    capsys.readouterr()
    assert main(["trials", str(tmp_path / "runs"), "--json"]) == 0
    import json

    (line,) = json.loads(capsys.readouterr().out)
    assert (line["index"], line["state"], line["status"], line["variant"]) == (1, "done", "completed", "wide")
    assert line["attempts"] == 1 and line["errors"] == "exception: RuntimeError: killed"
    assert main(["logs", str(tmp_path / "runs"), "1"]) == 0
    shown = capsys.readouterr().out
    assert (
        "attempt 1 (epoch 0) by run-earlier: failed (exception)" in shown and "attempt 2 (epoch 1)" in shown
    )


@pytest.mark.procs
def test_run_takes_over_a_killed_runs_trial_from_its_checkpoint(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """`ablator run --trial N` after its own SIGKILL takes the trial over (a dead pid of this very
    machine is dead at once) and resumes from the killed attempt's checkpoint."""
    exp = write_experiment(tmp_path, entry="SlowWrapper", epochs=4, sleep=0.05)
    exp.write_text(
        exp.read_text().replace(
            "lease_seconds: 30, heartbeat_seconds: 2", "lease_seconds: 3, heartbeat_seconds: 0.5"
        )
    )
    url = tmp_path / "launched"
    launch(exp, url)
    cmd = [
        sys.executable,
        "-m",
        "ablator",
        "run",
        str(exp),
        "--store",
        str(url),
        "--trial",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env, cwd=tmp_path
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # past the first evaluation, hence past a checkpoint
        if "| step 8/48" in line:
            break
    else:
        pytest.fail(f"no progress line; exit {proc.wait()}")
    proc.kill()
    proc.wait()
    proc.stderr.close()
    store = open_store(url)
    assert store.list(layout.ckpt_dir(1)), "the killed run left no checkpoint"
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    res = records.decode(store.read(layout.result(1)), records.Result)
    assert res.status == "completed" and res.epoch == 1
    assert res.lineage[0] == (0, None) and res.lineage[1][0] == 1 and res.lineage[1][1] is not None
    assert "resumed from step" in done.stdout


def _short_lease(exp: Path, extra: str = "") -> None:
    # Short, but a live holder must not fence itself on a loaded machine (heartbeats a second
    # late were seen at load 10+): fence after 4 - 2 x 0.4 = 3.2 s without a renewal.
    text = exp.read_text().replace(
        "lease_seconds: 30, heartbeat_seconds: 2", f"lease_seconds: 4, heartbeat_seconds: 0.4{extra}"
    )
    exp.write_text(text)


def _start_run(exp: Path, url: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "ablator",
        "run",
        str(exp),
        "--store",
        str(url),
        "--trial",
        "1",
        "--no-progress",
    ]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_for(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        if text in line:
            return
        seen.append(line)
    pytest.fail(f"no {text!r} line; exit {proc.wait()}; its output:\n{''.join(seen[-40:])}")


@pytest.mark.procs
def test_a_waiting_run_takes_over_a_frozen_holder_and_a_stop_record_ends_a_wait(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A holder frozen by SIGSTOP is alive by its pid: the waiting run takes its trial once its
    heartbeat is a lease old. A second waiting run gives up when a stop record appears."""
    exp = write_experiment(tmp_path, entry="SlowWrapper", epochs=4, sleep=0.05)
    _short_lease(exp)
    url = tmp_path / "launched"
    # Each holder trains 8 batches, then holds (alive, renewing, not done) until the stop record
    # exists: the waiting runs below meet a live holder however slowly they start on a loaded
    # machine (a run that starts after the frozen holder's heartbeat is a lease old takes the
    # trial at once, without waiting; a holder that finished first leaves nothing to wait for).
    stop_record = url / layout.STOP
    exp.write_text(
        exp.read_text().replace(
            "step_sleep: 0.05}", f"step_sleep: 0.05, hold_file: '{stop_record}', hold_after: 8}}"
        )
    )
    launch(exp, url)
    first = _start_run(exp, url, child_env, tmp_path)
    _wait_for(first, "| step 8/48")
    try:
        second = _start_run(exp, url, child_env, tmp_path)
        _wait_for(second, "waiting to take it over")
        first.send_signal(signal.SIGSTOP)
        _wait_for(second, "took over trial 1")
        # the new holder is alive and renewing: a third run waits, then a stop record ends its wait
        third = _start_run(exp, url, child_env, tmp_path)
        _wait_for(third, "waiting to take it over")
        from ablator.ops import stop

        stop(url, reason="test")
        _, err3 = third.communicate(timeout=60)
        assert third.returncode == 1 and "has a stop record" in err3 and "does not claim trial 1" in err3
        _, err2 = second.communicate(timeout=60)  # the stop makes the holder checkpoint and release
        assert second.returncode == 130, err2
    finally:
        first.kill()
        first.wait()
        for p in (first,):
            if p.stderr is not None:
                p.stderr.close()
            if p.stdout is not None:
                p.stdout.close()
    store = open_store(url)
    assert store.exists(layout.release(1, 1)) and not store.exists(layout.claim(1, 2))


@pytest.mark.procs
def test_a_stalled_run_is_failed_as_stalled(tmp_path: Path, child_env: dict[str, str]) -> None:
    exp = write_experiment(tmp_path, entry="SlowWrapper", epochs=1, sleep=3.0)
    _short_lease(exp, ", stall_seconds: 1")
    url = tmp_path / "launched"
    launch(exp, url)
    proc = _start_run(exp, url, child_env, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "limits.stall_seconds=1" in err
    store = open_store(url)
    fail = records.decode(store.read(layout.failed(1, 0)), records.Failure)
    assert fail.kind == "stalled" and "no step reported" in fail.message
    # Its last heartbeat says so, as an exiting agent's does: exited, nothing held, the trial named
    # as released (a hint for others), so nobody waits a lease for a holder that is gone.
    holder = records.decode(store.read(layout.claim(1, 0)), records.Claim).agent_id
    hb = records.decode(store.read(layout.agent(holder)), records.Heartbeat)
    assert hb.state == "exited" and hb.held == [] and (1, 0) in [tuple(p) for p in hb.released]


@pytest.mark.procs
def test_run_takes_over_a_killed_agents_trial_from_its_checkpoint(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    exp = write_experiment(tmp_path, entry="SlowWrapper", epochs=4, sleep=0.05)
    _short_lease(exp)
    url = tmp_path / "launched"
    launch(exp, url)
    store = open_store(url)
    agent = subprocess.Popen(
        [sys.executable, "-m", "ablator", "agent", str(url), "--cpu", "--slots", "1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env,
        cwd=tmp_path,
    )
    try:
        trial = None
        for _ in range(1200):  # until the agent's trial has a checkpoint (at most 2 minutes)
            held = [i for i in range(3) if store.list(layout.ckpt_dir(i))]
            if held:
                trial = held[0]
                break
            assert agent.poll() is None, "the agent exited before its first checkpoint"
            time.sleep(0.1)
        assert trial is not None, "no checkpoint within 2 minutes"
    finally:
        agent.kill()
        agent.wait()
    assert not store.exists(layout.result(trial))
    cmd = [sys.executable, "-m", "ablator", "run", str(exp), "--store", str(url), "--trial", str(trial)]
    done = subprocess.run(
        [*cmd, "--no-progress"], capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    res = records.decode(store.read(layout.result(trial)), records.Result)
    assert res.status == "completed" and res.epoch >= 1 and res.lineage[-1][1] is not None
    assert "resumed from step" in done.stdout
