"""Slurm: an ``sbatch`` job array, one agent per array task.

The script asks for ``--requeue`` and ``--signal=B:TERM@<lead>``: ``<lead>`` seconds before the
time limit Slurm signals the batch shell (up to a minute earlier than asked), which forwards
SIGTERM to the agent; the agent checkpoints and releases its trials within its grace period and
exits 0. Then the script asks Slurm to requeue this task (``scontrol requeue``) if the task is
still RUNNING -- the time-limit warning -- so that it rejoins later; after ``scancel``, an
operator's ``scontrol requeue`` or a preemption, Slurm has already decided (the task is
COMPLETING) and the script just exits. How the agent's exit maps to Slurm:

=====================================  =========================================================
agent                                  job task
=====================================  =========================================================
0, not signalled (done, ablator stop)  exits 0: COMPLETED, not requeued
0 after the time-limit signal          ``scontrol requeue`` itself: PENDING, rejoins the study
0 after scancel / requeue / preemption exits 143: Slurm cancels or requeues it as asked
1 (error that would recur anywhere)    exits 1: FAILED, never requeued
130, 3, killed                         that status: FAILED (Slurm's own ``--requeue`` still
                                       requeues after a node failure)
=====================================  =========================================================
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import msgspec

from ablator.engines.common import DRAINED_EXIT, AgentOptions, EngineError, agent_command, runner_script
from ablator.errors import ConfigError

ENGINE_CLI = "sbatch"


class SlurmOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Slurm-only settings. ``python`` must be the same interpreter path on every node (a virtual
    environment on the shared file system, with ablator installed in it); ``setup`` lines run
    before it (``module load ...``); ``sbatch_args`` become extra ``#SBATCH`` lines."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    python: str = sys.executable
    setup: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    output: str | None = None


_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def render(opts: AgentOptions, slurm: SlurmOptions, *, digest: str) -> str:
    """The batch script (a job array of ``opts.agents`` tasks)."""
    if slurm.time is not None and not _TIME.match(slurm.time):
        raise ConfigError(
            f"--time {slurm.time!r}: use Slurm's format, minutes or [D-]HH:MM:SS, e.g. 90 or 1-12:00:00"
        )
    lead = opts.drain_seconds
    directives = [
        f"--job-name={opts.name}",
        f"--array=0-{opts.agents - 1}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={opts.cpus}",
    ]
    if opts.gpus:
        directives.append(f"--gres=gpu:{opts.gpus}")
    if opts.memory:
        directives.append(f"--mem={opts.memory}")
    for flag, value in (
        ("time", slurm.time),
        ("partition", slurm.partition),
        ("account", slurm.account),
        ("qos", slurm.qos),
    ):
        if value:
            directives.append(f"--{flag}={value}")
    directives += [
        "--requeue",
        # B: only the batch shell gets it (it forwards SIGTERM to the agent); Slurm may send it
        # up to a minute earlier than asked, which only leaves more time to drain.
        f"--signal=B:TERM@{lead}",
        "--open-mode=append",  # a requeued task appends to its log instead of truncating it
        f"--output={slurm.output or f'{opts.name}-%A_%a.out'}",
        *slurm.sbatch_args,
    ]
    lines = [
        "#!/bin/bash",
        f"# ablator agents on {opts.store}: one per array task (python -m ablator submit slurm).",
        "# See docs/engines.md: SIGTERM -> checkpoint and release -> requeue at the time limit.",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "task=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}",
        'echo "ablator: task $task on $(hostname), start $((${SLURM_RESTART_COUNT:-0} + 1))" >&2',
        *(f"export {k}={shlex.quote(v)}" for k, v in opts.env),
        *slurm.setup,
        runner_script(agent_command(opts, slurm.python), digest=digest, python=slurm.python).rstrip("\n"),
        f'if [ "$ablator_rc" = {DRAINED_EXIT} ]; then',
        '  state=$(scontrol show job -o "$task" | grep -o "JobState=[A-Z_]*")',
        '  if [ "$state" = JobState=RUNNING ]; then',
        "    # The time-limit signal: this task's trials are released; come back for the rest.",
        '    echo "ablator: drained before the time limit; requeueing $task" >&2',
        '    scontrol requeue "$task" && exit 0',
        '    echo "ablator: scontrol requeue $task failed; submit again to add agents" >&2',
        "  fi",
        "fi",
        'exit "$ablator_rc"',
    ]
    return "\n".join(lines) + "\n"


def submit(script: str) -> str:
    """``sbatch --parsable`` the script (read from stdin); returns the array job id."""
    exe = shutil.which(ENGINE_CLI)
    if exe is None:
        raise EngineError(
            "sbatch is not on PATH: run `ablator submit slurm ... --submit` on a Slurm login node, "
            "or drop --submit and pass the printed script to sbatch there"
        )
    out = subprocess.run([exe, "--parsable"], input=script, capture_output=True, text=True)
    if out.returncode != 0:
        raise EngineError(f"sbatch refused the job (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]
