"""A trial's environment is one process on one device, whatever launcher started its agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ablator.engines.environment import is_launcher_variable, trial_environment
from tests.engines.conftest import ROOT, launch_study, open_, results, traces

LAUNCHER = {
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_JOB_ID": "77",
    "PMI_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "x",
}


def test_trial_environment_drops_launcher_variables_and_keeps_the_rest() -> None:
    base = {**LAUNCHER, "PATH": "/usr/bin", "HOME": "/root", "AWS_PROFILE": "p", "SLURMISH": "kept"}
    env = trial_environment(base, {"CUDA_VISIBLE_DEVICES": "1"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "AWS_PROFILE": "p",
        "SLURMISH": "kept",
        "CUDA_VISIBLE_DEVICES": "1",
    }
    assert all(is_launcher_variable(k) for k in LAUNCHER)
    # the slot's own settings win even over a launcher's (they are set after the filter)
    assert trial_environment({"RANK": "1"}, {"RANK": "0"}) == {"RANK": "0"}


@pytest.mark.procs
def test_a_real_agent_started_like_a_slurm_task_runs_its_trials_without_the_jobs_variables(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    store = str(tmp_path / "store")
    trace = tmp_path / "trace"
    trace.mkdir()
    launch_study(store, 2, {"trace_dir": str(trace)})
    env = {**child_env, **LAUNCHER}
    out = subprocess.run(
        [sys.executable, "-m", "ablator.agent", store, "--cpu", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(results(open_(store))) == [0, 1]
    seen = traces(trace)
    assert sorted(seen) == [0, 1]
    # every attempt saw no launcher variable at all ('-'), although its agent had eleven
    assert {line[3] for lines in seen.values() for line in lines} == {"-"}
