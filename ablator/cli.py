"""``python -m ablator COMMAND``: one function per subcommand, one error boundary.

Exit status: 0 success, 1 an :class:`AblatorError` (the message says what and where),
130 Ctrl-C, 3 a bug (the traceback is saved to a file whose path is printed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from ablator import __version__
from ablator.errors import AblatorError, StoreError

# Each subcommand is implemented by ``cli_<name>(args) -> int`` in the module named here, so that
# ``ablator --help`` does not import torch and every part owns its own command.
_COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("ablator.planning", "validate an experiment file and print its trial plan"),
    "launch": ("ablator.ops", "create the experiment in a store (or --extend its budget)"),
    "agent": ("ablator.agent", "run trials from a store on this machine's GPUs or CPU"),
    "status": ("ablator.status", "trial counts, agents and progress of a store"),
    "trials": ("ablator.trials", "list trials: state, variant or parameters, metric, attempts, errors"),
    "logs": ("ablator.trials", "show a trial's logs and tracebacks (every attempt, or --attempt N)"),
    "stop": ("ablator.ops", "ask every agent to release or finish its trials and exit"),
    "retry": ("ablator.ops", "make failed trials retryable again"),
    "gc": ("ablator.ops", "delete checkpoints no longer needed (keeps best and last per trial)"),
    "run": ("ablator.agent.run", "run one trial in this process (the prototype path)"),
    "analyze": ("ablator.analysis.cli", "print the effects table of a store"),
    "report": ("ablator.analysis.cli", "write figures, report.md and report.html for a store"),
    "submit": ("ablator.engines.submit", "start agents on Slurm, Kubernetes or SkyPilot (docs/engines.md)"),
    "serve": ("ablator.serve", "a live, read-only dashboard of a store in the browser"),
}


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the experiment file, e.g. --set config.train.epochs=2",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablator", description="Coordinator-free ablation studies for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"ablator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=_COMMANDS[name][1], description=_COMMANDS[name][1])

    p = add("plan")
    p.add_argument("experiment", help="experiment file (YAML, TOML or JSON)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--limit", type=int, default=None, help="show at most N trials")
    _add_set(p)

    p = add("launch")
    p.add_argument("experiment", help="experiment file (YAML, TOML or JSON)")
    p.add_argument("--store", required=True, help="store URL: a folder, file://, s3://bucket/prefix")
    p.add_argument(
        "--extend", type=int, default=None, metavar="N", help="add N trials to a launched experiment"
    )
    p.add_argument(
        "--code", default=None, metavar="DIR", help="snapshot DIR (respecting .gitignore) for every agent"
    )
    p.add_argument("--force", action="store_true", help="trust a store that failed the trust checks")
    _add_set(p)

    p = add("agent")
    from ablator.agent.options import add_agent_arguments

    add_agent_arguments(p)

    p = add("status")
    p.add_argument("store", help="store URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="run the store self-test and report its capabilities")

    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=5.0,
        default=None,
        metavar="SECONDS",
        help="print the status again every SECONDS (default 5) until Ctrl-C",
    )

    p = add("trials")
    p.add_argument("store", help="store URL")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="STATE",
        help="only trials in STATE (pending, running, done, failed, retryable, released, orphaned, "
        "needs_repair, or a result status such as completed or pruned); repeatable or comma-separated",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("logs")
    p.add_argument("store", help="store URL")
    p.add_argument("trial", type=int, help="trial index (see `ablator trials STORE`)")
    p.add_argument("--attempt", type=int, default=None, metavar="N", help="only attempt N (counted from 1)")
    p.add_argument(
        "--follow", action="store_true", help="keep printing the log as it grows until the trial finishes"
    )

    p = add("stop")
    p.add_argument("store", help="store URL")
    p.add_argument("--reason", default="", help="recorded in the stop record")
    p.add_argument("--undo", action="store_true", help="remove the stop record: agents may run again")

    p = add("retry")
    p.add_argument("store", help="store URL")
    p.add_argument("--failed", action="store_true", required=True, help="retry every failed trial")
    p.add_argument("--trial", type=int, action="append", default=None, help="only this trial (repeatable)")

    p = add("gc")
    p.add_argument("store", help="store URL")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")

    p = add("run")
    from ablator.agent.options import positive_seconds
    from ablator.store.retry import DEFAULT_STORE_TIMEOUT

    p.add_argument("experiment", nargs="?", default=None, help="experiment file (omit with --from)")
    p.add_argument("--store", default=None, help="store URL (default ./ablator-runs/<name>)")
    p.add_argument(
        "--trial", type=int, default=None, help="run trial N of the plan (default: the baseline, 0)"
    )
    p.add_argument("--smoke", action="store_true", help="train and evaluate a few batches only")
    p.add_argument(
        "--from", dest="from_store", default=None, metavar="STORE", help="reproduce a trial of STORE"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument(
        "--store-timeout",
        type=positive_seconds,
        default=DEFAULT_STORE_TIMEOUT,
        help="seconds the store may not answer, while the trial is set up or trains (retried with back-off)",
    )
    _add_set(p)

    for name in ("analyze", "report"):
        p = add(name)
        p.add_argument("store", help="store URL or a copied store folder")
        p.add_argument("--metric", default=None, help="metric to analyse (default: the experiment's)")
        p.add_argument(
            "--mode",
            choices=["min", "max"],
            default=None,
            help="direction of --metric (default: the experiment's)",
        )
        p.add_argument(
            "--value",
            choices=["best", "final"],
            default="best",
            help="each trial's best value of the metric (default) or its final one",
        )
        p.add_argument(
            "--adjust",
            choices=["holm", "bh"],
            default="holm",
            help="multiple-comparison adjustment of the p-values: Holm (default) or Benjamini-Hochberg",
        )
        if name == "report":
            p.add_argument(
                "--out", default=None, help="output folder (default ./ablator-report/<experiment name>)"
            )
        else:
            p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("serve")
    from ablator.serve import add_serve_arguments

    add_serve_arguments(p)
    from ablator.engines.submit import add_submit_arguments

    add_submit_arguments(add("submit"))
    return parser


def _refuse_process_local_stores(args: argparse.Namespace) -> None:
    """A ``memory://`` store given on the command line dies with this process: an agent would
    find nothing, a trial's result would be gone on exit. Refuse it before anything runs
    (``run --smoke`` uses one on purpose, by itself)."""
    from ablator.store import process_local

    for dest, flag in (("store", "STORE"), ("from_store", "--from")):
        url = getattr(args, dest, None)
        if isinstance(url, str) and process_local(url):
            raise StoreError(
                f"{flag} {url}: a memory store lives in one process and is gone when `ablator "
                f"{args.command}` exits (no agent or other command can see it); use a folder "
                "(e.g. ./runs/NAME) or s3://bucket/prefix"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name = _COMMANDS[args.command][0]
    try:
        _refuse_process_local_stores(args)
        module = importlib.import_module(module_name)
        handler = getattr(module, f"cli_{args.command}")
        return int(handler(args) or 0)
    except AblatorError as exc:
        print(f"ablator {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ablator {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        fd, path = tempfile.mkstemp(prefix="ablator-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        traceback.print_exc()
        print(f"ablator {args.command}: internal error (a bug); traceback saved to {path}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
