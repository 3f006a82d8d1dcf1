"""Helpers that tests in every folder share (importable as ``testkit``: tests/ is on sys.path).

* :func:`child_env`: the environment of a child process that imports ablator from this checkout.
* :func:`ablator_cli`: ``python -m ablator ARGS`` in a child process, output captured.
* :func:`put_claim`: write a claim record the way a claimer does (the spec only at epoch 0).

The store backend fixtures (``backend``, ``store_url``) and the S3 server live in
``tests/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ablator import layout, records
from ablator.store.base import Store

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root (what child processes put first on ``PYTHONPATH``)."""
TESTS = ROOT / "tests"


def child_env(
    *paths: str | os.PathLike[str], base: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """``base`` (default: this process's environment) with the repository root and ``paths``
    first on ``PYTHONPATH`` and the ``extra`` variables set: what a child process needs to
    import ablator (and test modules under ``paths``) from this checkout, not an installed copy."""
    env = dict(os.environ if base is None else base)
    front = [str(ROOT), *(os.fspath(p) for p in paths)]
    env["PYTHONPATH"] = os.pathsep.join([*front, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def ablator_cli(
    *args: str,
    cwd: str | os.PathLike[str] = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ablator ARGS`` in a child process (text output captured; the exit status is
    the caller's to check). ``env`` defaults to :func:`child_env`."""
    return subprocess.run(
        [sys.executable, "-m", "ablator", *args],
        cwd=cwd,
        env=dict(env) if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def put_claim(
    store: Store, trial: int, epoch: int = 0, *, spec: records.TrialSpec | None = None, agent: str = "t"
) -> records.Claim:
    """Create ``trials/<trial>/claim.e<epoch>`` as agent ``agent`` (asserting that it was free);
    as a claimer writes it, the trial's ``spec`` goes into epoch 0 only."""
    rec = records.Claim(trial=trial, epoch=epoch, agent_id=agent, spec=spec if epoch == 0 else None)
    assert store.create(layout.claim(trial, epoch), records.encode(rec)), f"claim {trial}.{epoch} was taken"
    return rec
