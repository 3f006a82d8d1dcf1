"""Entry points ablator cannot use (issue 12): a module that exits at import, trial functions
that cannot be called as ``fn(config, ctx)``. ``plan`` says so, naming the entry, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from testkit import ablator_cli

from ablator.entrypoint import resolve_entry
from ablator.errors import EntryPointError

MODULE = """
from ablator.config import BaseConfig


class C(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.0


def one(config: C):
    return {}


def keyword_only(config: C, ctx, *, extra):
    return {}


def with_default(config: C, ctx, extra=1):
    return {}
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "badentries.py").write_text(MODULE)
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("badentries:one", r"calls a trial function as one\(config, ctx\).*too many positional arguments"),
        ("badentries:keyword_only", r"missing a required argument: 'extra'"),
        (
            "exits_at_import:trial",
            r"importing 'exits_at_import' called sys.exit\(5\) \(.*exits_at_import.py:2\)",
        ),
    ],
)
def test_unusable_entries_are_refused(modules: Path, entry: str, message: str) -> None:
    with pytest.raises(EntryPointError, match=message):
        resolve_entry(entry)


def test_a_trial_function_with_extra_defaults_is_fine(modules: Path) -> None:
    assert resolve_entry("badentries:with_default").kind == "function"


@pytest.mark.procs
def test_plan_reports_a_module_that_exits_at_import(modules: Path) -> None:
    exp = {
        "name": "x",
        "entry": "exits_at_import:trial",
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": 2, "space": {"x": {"range": [0.0, 1.0]}}},
    }
    (modules / "exp.yaml").write_text(yaml.safe_dump(exp))
    out = ablator_cli("plan", "exp.yaml", cwd=modules)
    assert out.returncode == 1 and "called sys.exit(5)" in out.stderr and "Traceback" not in out.stderr
