"""Hostile and mistaken experiment files (issue 12): each gets a config error naming the file and
what is wrong, through the CLI (no traceback, exit 1), and nothing blocks or expands without bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testkit import ROOT, ablator_cli

from ablator.errors import ConfigError
from ablator.formats import MAX_FILE_BYTES, read_data

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def _refused(path: Path, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_data(path)


def test_hostile_files_are_refused_by_the_reader(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    _refused(bad, r"not UTF-8 text \(byte 0xe9 at line 1\)")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    _refused(fifo, "not a regular file")  # a read would block forever
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    _refused(zero, "not a regular file")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    _refused(big, "more than 16 MiB")
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(LAUGHS)
    _refused(laughs, r"expands to 490,329,064 values through its aliases")
    shared = tmp_path / "shared.yaml"  # a few aliases are fine
    shared.write_text("base: &b {lr: 0.1}\nother: *b\n")
    assert read_data(shared) == {"base": {"lr": 0.1}, "other": {"lr": 0.1}}


@pytest.mark.procs
def test_the_cli_says_what_is_wrong_with_a_hostile_file(tmp_path: Path) -> None:
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(LAUGHS)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    for path, message in ((laughs, "through its aliases"), (bad, "not UTF-8 text")):
        for cmd in (("plan", str(path)), ("launch", str(path), "--store", str(tmp_path / "s"))):
            out = ablator_cli(*cmd)
            assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "config.train.optimizer.weight_decay=.inf",
            r"\$\.config\.train\.optimizer\.weight_decay: must be a finite number",
        ),
        (
            "config.train.early_stopping_min_delta=.nan",
            r"\$\.config\.train\.early_stopping_min_delta: must be a finite number",
        ),
        ("config.train.optimizer.lr=.inf", r"\$\.config\.train\.optimizer\.lr: must be a finite number"),
        ("config.train.grad_clip=.inf", "must be a finite number, found inf"),
    ],
)
def test_infinite_and_nan_values_are_refused_where_meaningless(override: str, message: str) -> None:
    from ablator import plan

    with pytest.raises(ConfigError, match=message):
        plan(ROOT / "examples" / "digits" / "experiment.yaml", [override], limit=1)


def test_an_infinite_norm_type_is_a_norm() -> None:
    from ablator import plan

    assert plan(
        ROOT / "examples" / "digits" / "experiment.yaml", ["config.train.grad_clip_norm_type=.inf"], limit=1
    )


@pytest.mark.procs
@pytest.mark.parametrize(
    "flag", [("--threads", "0"), ("--threads", "-2"), ("--slots", "0"), ("--lease-seconds", "nan")]
)
def test_agent_numbers_out_of_range_are_refused(flag: tuple[str, str], tmp_path: Path) -> None:
    out = ablator_cli("agent", str(tmp_path / "s"), "--cpu", *flag)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"argument {flag[0]}:" in out.stderr and flag[1] in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_type_error_in_design_does_not_hide_the_problems_in_limits(tmp_path: Path) -> None:
    from ablator.experiment import experiment_from_dict, load_experiment

    data = {
        "name": "x",
        "entry": "m:f",
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": "many", "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": {"max_attempts": 0, "lease_seconds": -1},
        "resources": {"min_gpu_memory_mb": -5},
    }
    expected = (
        "$.design.trials: expected int or null",
        "$.limits.max_attempts: must be >= 1, found 0",
        "$.limits.lease_seconds: must be a positive number, found -1",
        "$.resources.min_gpu_memory_mb: must be >= 0, found -5",
    )
    with pytest.raises(ConfigError) as api:
        experiment_from_dict(data)
    path = tmp_path / "exp.json"
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(ConfigError) as from_file:
        load_experiment(path)
    for exc in (api.value, from_file.value):
        text = "\n".join(exc.problems)
        for problem in expected:
            assert problem in text, (problem, text)
