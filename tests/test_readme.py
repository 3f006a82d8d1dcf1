"""The README's commands are real: every ``python -m ablator ...`` / ``python -m ablator.agent ...``
it shows (fenced bash blocks and the commands table) names a subcommand that exists, and its
arguments parse with the real parser (placeholders replaced by values; nothing is run). The
README's test command is the one CI runs, and ``examples/digits/run.sh`` (the README's first
command) exists and uses only commands that parse."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ablator import cli
from ablator.analysis.cli import default_out

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RUN_SH = ROOT / "examples" / "digits" / "run.sh"
CI_RUN = ROOT / ".ci" / "run"
CI_MARKER = "the README's test command, verbatim"

# what the README's placeholders stand for when its commands are parsed
PLACEHOLDERS = {
    "EXP": "examples/digits/experiment.yaml",
    "STORE": "/tmp/ablator-readme/store",
    "URL": "/tmp/ablator-readme/store",
    "DIR": "/tmp/ablator-readme/out",
    "N": "2",
    "KEY=VALUE": "config.train.epochs=2",
}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Shown:
    text: str  # the command as the README shows it
    where: str
    tokens: tuple[str, ...]


def bash_blocks(markdown: str) -> list[str]:
    return [
        m.group(2)
        for m in re.finditer(r"```(\w*)\n(.*?)```", markdown, re.S)
        if m.group(1) in ("bash", "sh", "shell")
    ]


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a script: continuations joined, comments dropped, split on && ; | &."""
    out: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line.strip().removeprefix("$ "), comments=True)
        current: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SHELL_SEPARATORS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(tok)
    return out


def ablator_argv(tokens: list[str] | tuple[str, ...]) -> list[str] | None:
    """The argv that ``ablator.cli`` gets for a shown command, or None for another program."""
    if list(tokens[:3]) == ["python", "-m", "ablator"]:
        return list(tokens[3:])
    if list(tokens[:3]) == ["python", "-m", "ablator.agent"]:
        return ["agent", *tokens[3:]]
    if tokens and tokens[0] == "ablator":  # the console script
        return list(tokens[1:])
    return None


def expand_optional(text: str) -> list[str]:
    """``cmd A [--x N] [--y]`` -> without the optional parts, and with all of them."""
    return [re.sub(r"\s*\[[^\]]*\]", "", text).strip(), re.sub(r"\[([^\]]*)\]", r"\1", text).strip()]


def table_commands(markdown: str) -> list[Shown]:
    """Commands of the README's command table: the first cell's snippets (later ones continue the
    first's program, as in ``python -m ablator stop STORE`` / ``retry STORE --failed``), each with
    and without its optional parts, plus every ``--flag`` the description cell mentions."""
    shown: list[Shown] = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 2:
            continue
        snippets = re.findall(r"`([^`]+)`", cells[0])
        if not snippets or ablator_argv(shlex.split(snippets[0])) is None:
            continue
        first = shlex.split(snippets[0])
        prefix = first[:3] if first[0] == "python" else first[:1]
        head = " ".join(prefix)
        texts = [
            text
            for snippet in snippets
            for text in expand_optional(snippet if snippet.startswith(head) else f"{head} {snippet}")
        ]
        texts += [
            f"{expand_optional(snippets[0])[0]} {flag}" for flag in re.findall(r"`(--[^`]+)`", cells[1])
        ]
        shown += [Shown(t, "README commands table", tuple(shlex.split(t))) for t in dict.fromkeys(texts)]
    return shown


def readme_commands() -> list[Shown]:
    shown = [
        Shown(" ".join(tokens), "README bash block", tuple(tokens))
        for block in bash_blocks(README)
        for tokens in shell_commands(block)
    ]
    return shown + table_commands(README)


def run_sh_defaults() -> dict[str, str]:
    """``NAME="${NAME:-default}"`` assignments of run.sh."""
    pattern = r'^(\w+)="\$\{\1:-([^}]*)\}"'
    return {m.group(1): m.group(2) for m in re.finditer(pattern, RUN_SH.read_text(), re.M)}


def substitute(argv: list[str], variables: dict[str, str] | None = None) -> list[str]:
    out = []
    for tok in argv:
        if variables:
            tok = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], tok)
        if tok in PLACEHOLDERS:
            tok = PLACEHOLDERS[tok]
        elif re.fullmatch(r"[A-Z][A-Z_]*", tok):
            raise AssertionError(f"unknown placeholder {tok!r}: add it to PLACEHOLDERS")
        out.append(tok)
    return out


def check_parses(argv: list[str], shown: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{shown!r} does not parse (argv {argv}):\n{err.getvalue()}")
    module, _ = cli._COMMANDS[args.command]
    assert hasattr(importlib.import_module(module), f"cli_{args.command}"), shown
    for tok in argv:  # the example files it names exist
        if tok.startswith(("examples/", "docs/")):
            assert (ROOT / tok).exists(), f"{shown!r} names {tok}, which does not exist"


ABLATOR_COMMANDS = [s for s in readme_commands() if ablator_argv(s.tokens) is not None]


def test_the_readme_shows_ablator_commands_in_blocks_and_in_the_table() -> None:
    assert {s.where for s in ABLATOR_COMMANDS} == {"README bash block", "README commands table"}


@pytest.mark.parametrize("shown", ABLATOR_COMMANDS, ids=lambda s: s.text)
def test_every_ablator_command_in_the_readme_exists_and_parses(shown: Shown) -> None:
    argv = ablator_argv(shown.tokens)
    assert argv is not None
    check_parses(substitute(argv), shown.text)


def test_the_commands_table_covers_every_subcommand() -> None:
    shown = set()
    for s in table_commands(README):
        argv = ablator_argv(s.tokens)
        assert argv is not None
        shown.add(argv[0])
    assert shown == set(cli._COMMANDS)


def test_the_readme_test_command_is_what_ci_runs() -> None:
    lines = CI_RUN.read_text().splitlines()
    marker = [i for i, line in enumerate(lines) if CI_MARKER in line]
    assert len(marker) == 1, f"{CI_RUN}: no single line with the comment {CI_MARKER!r}"
    ci_command = next(line.strip() for line in lines[marker[0] + 1 :] if line.strip())
    readme_tests = [
        line.strip() for block in bash_blocks(README) for line in block.splitlines() if "pytest" in line
    ]
    assert readme_tests == [ci_command]


def test_the_first_command_is_run_sh_and_its_commands_parse() -> None:
    first = shell_commands(bash_blocks(README)[0])
    # a virtual environment first, then run.sh installs into it: one line does it all
    assert first == [
        ["python", "-m", "venv", ".venv"],
        [".", ".venv/bin/activate"],
        ["bash", "examples/digits/run.sh"],
    ]
    assert RUN_SH.is_file()
    variables = run_sh_defaults()
    assert {"STORE", "REPORT"} <= set(variables)
    commands = [c for c in shell_commands(RUN_SH.read_text()) if ablator_argv(c) is not None]
    assert {ablator_argv(c)[0] for c in commands} >= {"launch", "agent", "report"}  # type: ignore[index]
    for tokens in commands:
        argv = ablator_argv(tokens)
        assert argv is not None
        check_parses(substitute(argv, variables), " ".join(tokens))
    # the README says where run.sh puts the store and the report
    assert f"{variables['REPORT']}/report.html" in README
    assert variables["STORE"] in README
    # ... and its report folder is the one `report` picks without --out, so the two never disagree
    experiment = yaml.safe_load((ROOT / "examples" / "digits" / "experiment.yaml").read_text())
    assert Path(variables["REPORT"]) == default_out(experiment["name"])


def test_the_pip_extras_that_readme_run_sh_and_ci_install_exist() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named: set[str] = set()
    scripts = [*bash_blocks(README), RUN_SH.read_text(), CI_RUN.read_text()]
    for tokens in (c for script in scripts for c in shell_commands(script)):
        if "install" in tokens:
            for tok in tokens:
                m = re.fullmatch(r"(?:\.|ablator)\[([\w,-]+)\]", tok)
                if m:
                    named.update(m.group(1).split(","))
    assert {"dev", "examples"} <= named
    assert named <= extras


def test_the_files_the_readme_names_exist() -> None:
    paths = set(re.findall(r"`((?:docs|examples|benchmarks|tests)/[\w./-]*)`", README))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"
