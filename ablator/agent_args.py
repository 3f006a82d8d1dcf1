"""The agent's command-line arguments, shared by ``python -m ablator agent`` and
``python -m ablator.agent`` (kept apart so that building the parser imports no torch)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--threads 0`` would hang or crash torch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, found {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    return _seconds(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, found {text!r}")
    return value


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store URL: a folder, file://, s3://bucket/prefix")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--gpus",
        default=None,
        help="comma-separated local GPUs to use: nvidia-smi indexes or UUIDs (prefixes too); default: all visible",
    )
    g.add_argument("--cpu", action="store_true", help="run trials on the CPU")
    p.add_argument("--slots", type=positive_int, default=None, help="concurrent trials (CPU: default 1)")
    p.add_argument(
        "--slots-per-gpu",
        default="1",
        help="concurrent trials per GPU, or auto: as many as memory and throughput allow (docs/agent.md)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per trial (default: a CPU trial gets this machine's cores split among the CPU slots of all "
        "its agents, a GPU trial its cores split among this agent's slots)",
    )
    p.add_argument("--max-trials", type=positive_int, default=None, help="exit after starting N trials")
    p.add_argument("--watch", action="store_true", help="keep waiting for work when the experiment is done")
    p.add_argument(
        "--lease-seconds", type=positive_seconds, default=None, help="override the experiment's lease"
    )
    p.add_argument(
        "--heartbeat-seconds", type=positive_seconds, default=None, help="override the heartbeat interval"
    )
    p.add_argument(
        "--grace-seconds", type=seconds, default=30.0, help="time to checkpoint and release on SIGTERM"
    )
    p.add_argument(
        "--store-timeout",
        type=positive_seconds,
        default=600.0,
        help="seconds the store may not answer (transient errors, retried with back-off) before the agent gives up",
    )
    p.add_argument("--fresh-worker", action="store_true", help="a new worker process for every trial")
    p.add_argument("--force", action="store_true", help="trust a store that failed the trust checks")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument(
        "--progress-seconds",
        type=seconds,
        default=30.0,
        help="when the output is not a terminal, a progress line (step, metric, rate) per running "
        "trial this often (0: none)",
    )
