"""``report --out`` (issue 12): a file, a folder of other things, a place inside the store and an
unwritable folder are refused with a message; a report replaces the previous one as a whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testkit import ablator_cli

from ablator.analysis import load, write_report
from ablator.errors import AnalysisError
from analysis.test_analysis_effects import ablation_store


@pytest.fixture
def res(tmp_path: Path) -> object:
    ablation_store(tmp_path / "s")
    return load(tmp_path / "s")


def test_bad_out_folders_are_refused(res: object, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(AnalysisError, match="that is a file; give a folder"):
        write_report(res, a_file)  # type: ignore[arg-type]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    with pytest.raises(AnalysisError, match=r"holds other files \(thesis.tex\) and no report"):
        write_report(res, mine)  # type: ignore[arg-type]
    assert (mine / "thesis.tex").read_text() == "mine"
    for inside in (tmp_path / "s" / "trials" / "rep", tmp_path / "s"):
        with pytest.raises(AnalysisError, match="that is inside the store"):
            write_report(res, inside)  # type: ignore[arg-type]
    assert not (tmp_path / "s" / "trials" / "rep").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_is_an_error_not_a_traceback(res: object, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(AnalysisError, match="cannot create the folder"):
            write_report(res, locked / "rep")  # type: ignore[arg-type]
    finally:
        locked.chmod(0o700)


def test_a_new_report_replaces_the_old_one_whole(res: object, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    first = write_report(res, out)  # type: ignore[arg-type]
    (out / "stale-figure.png").write_bytes(b"from an older report")
    files = write_report(res, out)  # type: ignore[arg-type]
    assert not (out / "stale-figure.png").exists()
    assert {f.name for f in files.figures} == {f.name for f in first.figures}
    assert all(f.path.parent == out and f.path.exists() for f in files.figures)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")) == []  # no leftovers


@pytest.mark.procs
def test_the_cli_refuses_a_file_and_a_folder_inside_the_store(tmp_path: Path) -> None:
    ablation_store(tmp_path / "s")
    (tmp_path / "f.txt").write_text("x")
    for out, message in (
        (tmp_path / "f.txt", "that is a file"),
        (tmp_path / "s" / "trials", "inside the store"),
    ):
        run = ablator_cli("report", str(tmp_path / "s"), "--out", str(out))
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    # "/dev/null/x": an impossible folder
    run = ablator_cli("report", str(tmp_path / "s"), "--out", "/dev/null/rep")
    assert run.returncode == 1 and "cannot create the folder" in run.stderr and "Traceback" not in run.stderr
