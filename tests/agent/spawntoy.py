"""A trial that starts a helper process and then stalls (reports nothing): the agent kills its
worker as stalled, and the helper must die with it. The helper writes its pid and how it
handles SIGTERM and SIGINT to ``<out_dir>/<trial>-<epoch>.txt`` before it sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ablator.config import BaseConfig

HELPER = """
import signal, sys, time
with open(sys.argv[1], "w") as f:
    f.write(f"{__import__('os').getpid()} {signal.getsignal(signal.SIGTERM)} {signal.getsignal(signal.SIGINT)}\\n")
time.sleep(600)
"""


class SpawnConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    out_dir: str = ""
    x: float = 0.0


def forks(config: SpawnConfig, ctx: Any) -> dict[str, float]:
    """Forks a copy of the worker that lingers (no exec), then finishes normally once the copy
    has written its pid (the worker kills what a finished trial leaves behind: without waiting,
    a loaded machine could end the copy before it said who it is)."""
    pid = os.fork()
    if pid == 0:  # the child: a copy of the worker process, with its pipes to the agent
        path = f"{config.out_dir}/forked-{os.getpid()}.txt"
        with open(f"{path}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(f"{path}.tmp", path)  # whole or absent
        time.sleep(600)
        os._exit(0)
    deadline = time.monotonic() + 300
    while not os.path.exists(f"{config.out_dir}/forked-{pid}.txt") and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.report(1, {"score": config.x})
    return {"score": config.x}


def trial(config: SpawnConfig, ctx: Any) -> dict[str, float]:
    path = f"{config.out_dir}/{ctx.trial}-{ctx.epoch}.txt"
    subprocess.Popen([sys.executable, "-c", HELPER, path])
    # Report a step now and then until the helper has written its file: the stall clock
    # restarts at each one, so a helper slow to start on a loaded machine is not killed
    # before it could say how it handles signals.
    step = 0
    deadline = time.monotonic() + 300
    while not os.path.exists(path) and time.monotonic() < deadline:
        step += 1
        ctx.report(step, {"score": 0.0})
        time.sleep(0.2)
    time.sleep(600)  # no step reported: the agent fails the trial as stalled and kills its worker
    return {"score": 0.0}


def leaves(config: SpawnConfig, ctx: Any) -> dict[str, float]:
    """Trial 0 starts a helper and returns without ending it; trial 1 (run by the same worker
    after it) reports steps until ``<out_dir>/release`` exists, so that the worker is still
    alive while the test looks at trial 0's helper."""
    if ctx.trial == 0:
        # a grandchild too: the shell starts a sleep in the background and exits at once
        sleeper = subprocess.run(
            ["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
        )
        Path(f"{config.out_dir}/grandchild.txt").write_text(sleeper.stdout.strip())
        subprocess.Popen([sys.executable, "-c", HELPER, f"{config.out_dir}/left-{os.getpid()}.txt"])
        deadline = time.monotonic() + 60
        while not list(Path(config.out_dir).glob("left-*.txt")):
            if time.monotonic() > deadline:
                raise RuntimeError("the helper did not start")
            time.sleep(0.05)
    else:
        step = 0
        while not os.path.exists(f"{config.out_dir}/release"):
            step += 1
            ctx.report(step, {"score": config.x})
            time.sleep(0.1)
    ctx.report(1_000_000, {"score": config.x})
    return {"score": config.x}
