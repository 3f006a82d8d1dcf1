"""The agent: ``python -m ablator.agent STORE`` (also ``python -m ablator agent STORE``).

Runs trials of the experiment in STORE on this machine's GPUs (or CPU) until the experiment is
done. See ``docs/agent.md``; the loop itself is :mod:`ablator.agent.loop`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def cli_agent(args: argparse.Namespace) -> int:
    """``python -m ablator agent STORE ...``: run an agent with parsed arguments."""
    from ablator.agent.loop import run_agent
    from ablator.agent.options import AgentOptions

    return run_agent(AgentOptions.from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ablator.agent STORE ...``: the same command and exit statuses as
    ``python -m ablator agent`` (0 done, 1 an error with its message, 130 interrupted)."""
    import sys

    from ablator.cli import main as cli_main

    return cli_main(["agent", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["cli_agent", "main"]
