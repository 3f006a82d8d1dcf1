"""The agent's options (:class:`AgentOptions`) and its command-line arguments, shared by
``python -m ablator agent`` and ``python -m ablator.agent`` (this module imports no torch, so
that building the parser stays cheap). The CLI builds the options; :class:`ablator.agent.loop.Agent`
takes nothing else.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ablator.errors import ConfigError
from ablator.store.retry import DEFAULT_STORE_TIMEOUT


@dataclass(frozen=True, kw_only=True)
class AgentOptions:
    """How one agent runs (``docs/agent.md`` describes each option by its flag).

    >>> AgentOptions(store="s3://bucket/exp", cpu=True, slots=2)        # doctest: +SKIP
    """

    store: str
    gpus: str | None = None  # comma-separated nvidia-smi indexes or UUIDs (None: all visible)
    cpu: bool = False
    slots: int | None = None
    slots_per_gpu: str = "1"  # a number, or "auto"
    threads: int | None = None
    max_trials: int | None = None
    watch: bool = False
    lease_seconds: float | None = None
    heartbeat_seconds: float | None = None
    grace_seconds: float = 30.0
    progress_seconds: float = 30.0
    store_timeout: float = DEFAULT_STORE_TIMEOUT  # seconds the store may not answer before the agent gives up
    fresh_worker: bool = False
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.slots is not None and self.slots < 1:
            problems.append(f"--slots {self.slots}: must be at least 1")
        if self.grace_seconds < 0:
            problems.append(f"--grace-seconds {self.grace_seconds}: must be >= 0")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentOptions:
        """From the arguments :func:`add_agent_arguments` defined."""
        return cls(
            store=args.store,
            gpus=args.gpus,
            cpu=args.cpu,
            slots=args.slots,
            slots_per_gpu=args.slots_per_gpu,
            threads=args.threads,
            max_trials=args.max_trials,
            watch=args.watch,
            lease_seconds=args.lease_seconds,
            heartbeat_seconds=args.heartbeat_seconds,
            grace_seconds=args.grace_seconds,
            progress_seconds=args.progress_seconds,
            store_timeout=args.store_timeout,
            fresh_worker=args.fresh_worker,
            force=args.force,
            quiet=args.quiet,
        )


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
        default=DEFAULT_STORE_TIMEOUT,
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


__all__ = ["AgentOptions", "add_agent_arguments", "positive_int", "positive_seconds", "seconds"]
