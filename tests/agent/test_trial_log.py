"""The worker's bounded local log (:class:`ablator.agent.worker.TrialLog`): whatever the output,
the file holds at most the cap and a read gives exactly :func:`head_and_tail` of the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ablator.agent.worker import TrialLog, head_and_tail


@settings(max_examples=60, deadline=None)
@given(
    chunks=hs.lists(hs.lists(hs.binary(min_size=1, max_size=300), max_size=6), min_size=1, max_size=4),
    limit=hs.integers(min_value=2, max_value=400),
)
def test_a_read_is_the_head_and_tail_of_what_was_written(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[list[bytes]], limit: int
) -> None:
    """Several trials (each a list of writes) through a real pipe: each read is the rule applied
    to that trial's whole output, and the file never grows past the cap."""
    r, w = os.pipe()
    path = tmp_path_factory.mktemp("triallog") / "worker.log"
    log = TrialLog(path, r, limit)
    try:
        for trial in chunks:
            for piece in trial:
                os.write(w, piece)
            # a read after the writes sees all of them (it drains the pipe first)
            assert log.read(limit, reset=True) == head_and_tail(b"".join(trial), limit)
            assert path.stat().st_size == 0  # reset starts the next trial's log afresh
        os.write(w, b"x" * (5 * limit))
        log.read(limit)
        assert path.stat().st_size <= 2 * (limit // 2)
    finally:
        os.close(w)
        log.close()
        path.unlink()


@pytest.mark.procs
def test_the_log_reads_what_a_process_printed_before_it_died(tmp_path: Path) -> None:
    """The pipe's end: output of a process that has exited is all there, and the reading
    thread ends by itself."""
    r, w = os.pipe()
    log = TrialLog(tmp_path / "w.log", r, 1024)
    code = "import sys\nfor i in range(2000): print(i)\nprint('last words', file=sys.stderr)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=w, stderr=w)
    os.close(w)
    assert proc.wait(60) == 0
    data = log.read(1024)
    assert data.startswith(b"0\n1\n2\n") and data.endswith(b"1999\nlast words\n")
    assert b"bytes cut ...]" in data and len(data) <= 1024 + 40
    log.close()


@pytest.mark.procs
def test_a_process_printing_without_end_never_holds_up_a_read(tmp_path: Path) -> None:
    """The pipe never empties, yet every read returns (the pump leaves the lock free between
    rounds), bounded, with the head and a growing count of bytes cut; the file stays at the cap."""
    r, w = os.pipe()
    path = tmp_path / "w.log"
    log = TrialLog(path, r, 4096)
    code = "import sys\nsys.stdout.write('head\\n')\nwhile True: sys.stdout.write('y' * 65536)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=w)
    os.close(w)
    try:
        cuts: list[int] = []
        while len(cuts) < 2 or cuts[-1] <= cuts[0]:
            data = log.read(4096)
            assert len(data) <= 4096 + 40 and path.stat().st_size <= 4096
            if b"bytes cut" in data:
                assert data.startswith(b"head\n")
                cuts.append(int(data.split(b"[... ")[1].split(b" bytes cut")[0]))
    finally:
        proc.kill()
        proc.wait()
        log.close()
