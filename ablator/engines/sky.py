"""SkyPilot managed jobs: one task YAML, launched ``agents`` times with ``sky jobs launch``.

Each copy is its own managed job on one (spot) VM, so a preemption recovers that one agent and
leaves the others running (one multi-node task would be recovered as a whole). The task:

* ``resources``: ``use_spot``, ``accelerators`` (``A100:1``), ``cpus``/``memory`` as minimums,
  ``job_recovery`` (``EAGER_NEXT_REGION`` by default), recovery also on exit 143 (the agent drained
  after a SIGTERM: it released its trials and the study may have work left);
* ``file_mounts``: the ablator wheel built from the rendering ablator, uploaded by SkyPilot;
  ``setup`` installs it, so every VM runs the same ablator code (the store's ``--code`` snapshot
  brings the user's code);
* ``secrets``: the names of the store's credentials (``AWS_ACCESS_KEY_ID``, ...); ``--submit``
  passes their values from this shell's environment with ``--secret NAME``;
* ``run``: the agent, with the slots of one VM.

When a spot VM is reclaimed, its agent may get no signal at all: its heartbeat stops, another agent
takes its trials over after the lease, and SkyPilot starts a replacement VM whose agent rejoins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec

from ablator.engines.common import (
    DRAINED_EXIT,
    AgentOptions,
    EngineError,
    Wheel,
    agent_command,
    dump_yaml,
    pip_target,
    runner_script,
)
from ablator.errors import ConfigError

ENGINE_CLI = "sky"
REMOTE_WHEEL_DIR = "/tmp/ablator-wheel"
RECOVERY_STRATEGIES = ("EAGER_NEXT_REGION", "FAILOVER")


class SkyOptions(msgspec.Struct, frozen=True, kw_only=True):
    """SkyPilot-only settings. ``accelerators`` is SkyPilot's spelling (``A100:1``, ``L4:2``);
    ``secrets`` are environment variable names whose values are passed at launch."""

    accelerators: str | None = None
    cloud: str | None = None
    region: str | None = None
    spot: bool = True
    recovery: str = "EAGER_NEXT_REGION"
    setup: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    python: str = "python"


def render_task(opts: AgentOptions, sky: SkyOptions, wheel: Wheel, wheel_path: Path) -> dict[str, Any]:
    """The task as a dict; ``wheel_path`` is where the wheel lies on this machine."""
    problems = []
    if sky.recovery not in RECOVERY_STRATEGIES:
        problems.append(f"--recovery {sky.recovery!r}: choose one of {', '.join(RECOVERY_STRATEGIES)}")
    if opts.gpus and not sky.accelerators:
        problems.append(f"--gpus {opts.gpus} needs --accelerators, e.g. --accelerators A100:{opts.gpus}")
    if problems:
        raise ConfigError("cannot render the SkyPilot task:\n  - " + "\n  - ".join(problems))
    resources: dict[str, Any] = {"cpus": f"{opts.cpus}+"}
    if opts.memory:
        resources["memory"] = f"{_gigabytes(opts.memory)}+"
    if sky.accelerators:
        resources["accelerators"] = sky.accelerators
    if sky.cloud:
        resources["cloud"] = sky.cloud
    if sky.region:
        resources["region"] = sky.region
    resources["use_spot"] = sky.spot
    resources["job_recovery"] = {
        "strategy": sky.recovery,
        "max_restarts_on_errors": 0,
        "recover_on_exit_codes": [DRAINED_EXIT],
    }
    remote = f"{REMOTE_WHEEL_DIR}/{wheel.filename}"
    setup = "\n".join(
        [
            "set -e",
            *sky.setup,
            f"{sky.python} -m pip install --quiet --disable-pip-version-check '{pip_target(remote, opts.store)}'",
        ]
    )
    run = (
        runner_script(agent_command(opts, sky.python), digest=wheel.digest, python=sky.python)
        + 'exit "$ablator_rc"'
    )
    task: dict[str, Any] = {
        "name": opts.name,
        "resources": resources,
        "envs": {k: v for k, v in opts.env},
        "file_mounts": {remote: str(wheel_path)},
        "setup": setup + "\n",
        "run": run + "\n",
    }
    if sky.secrets:
        task["secrets"] = {name: None for name in sky.secrets}
    if not task["envs"]:
        del task["envs"]
    return task


def _gigabytes(memory: str) -> int:
    """Slurm's ``16G``/``512M``/``1T`` (bare numbers are MiB) -> whole GB for SkyPilot."""
    unit = memory[-1] if not memory[-1].isdigit() else "M"
    value = int(memory.rstrip("KMGT"))
    scale = {"K": 1 / (1024 * 1024), "M": 1 / 1024, "G": 1, "T": 1024}[unit]
    return max(1, round(value * scale))


def render(opts: AgentOptions, sky: SkyOptions, wheel: Wheel, wheel_path: Path) -> str:
    """The task YAML."""
    return dump_yaml([render_task(opts, sky, wheel, wheel_path)])


def submit(task_path: Path, opts: AgentOptions, sky: SkyOptions) -> list[str]:
    """``sky jobs launch`` the task ``opts.agents`` times (``<name>-0``, ``<name>-1``, ...)."""
    exe = shutil.which(ENGINE_CLI)
    if exe is None:
        raise EngineError(
            "sky is not on PATH: pip install 'skypilot[aws]' (or your cloud) and run `sky check`, "
            f"or drop --submit and run `sky jobs launch {task_path}` yourself"
        )
    missing = [name for name in sky.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"--secret {', '.join(missing)}: not set in this shell's environment")
    launched: list[str] = []
    for i in range(opts.agents):
        cmd = [exe, "jobs", "launch", "--yes", "--name", f"{opts.name}-{i}"]
        for name in sky.secrets:
            cmd += ["--secret", name]
        out = subprocess.run([*cmd, str(task_path)], capture_output=True, text=True)
        if out.returncode != 0:
            raise EngineError(
                f"sky jobs launch failed for copy {i} of {opts.agents} (exit {out.returncode}; "
                f"copies launched: {launched or 'none'}): {out.stderr.strip()[-2000:]}"
            )
        launched.append(f"{opts.name}-{i}")
    return launched
