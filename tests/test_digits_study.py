"""The digits ablation study, for real and end to end, the way ``examples/digits/run.sh`` runs it
(into a temporary store): launch, two local agents at once, status, analyze, report. This is the
proof that the README's first command works, and the check of the example's results: every trial
has exactly one result, the baseline reaches 0.9 validation accuracy, and at least one ablation
is harmful with a 95% interval that excludes zero."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import ablator_cli, child_env

from ablator import layout, records
from ablator.store import open_store

pytestmark = pytest.mark.procs  # every test here starts processes

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "examples/digits/experiment.yaml"
AGENTS_TIMEOUT_S = 480


def env() -> dict[str, str]:
    out = child_env()
    # Nothing about threads, as in run.sh: CPU agents split the host's cores among their slots
    # (with torch's default of a thread per core each, two agents on 2 cores ran 4x slower).
    out.pop("OMP_NUM_THREADS", None)
    return out


def ablator(*args: str, timeout: float = 120) -> str:
    proc = ablator_cli(*args, env=env(), timeout=timeout)
    assert proc.returncode == 0, (
        f"ablator {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def run_agents(store: Path, logs: Path, n: int = 2) -> None:
    """``python -m ablator.agent STORE --cpu`` n times at once; each must exit 0."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i in range(n):
            log = logs / f"agent-{i}.log"
            with open(log, "wb") as f:
                cmd = [sys.executable, "-m", "ablator.agent", str(store), "--cpu"]
                procs.append(
                    (subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT), log)
                )
        for proc, log in procs:
            try:
                rc = proc.wait(timeout=AGENTS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"agent {proc.pid} still running after {AGENTS_TIMEOUT_S}s:\n{log.read_text()[-4000:]}"
                )
            assert rc == 0, f"agent exited {rc}:\n{log.read_text()[-4000:]}"
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


@pytest.mark.timeout(AGENTS_TIMEOUT_S + 120)
def test_the_digits_ablation_study_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    import polars as pl

    from ablator.analysis import load

    store_dir, report_dir = tmp_path / "store", tmp_path / "report"
    ablator("launch", EXPERIMENT, "--store", str(store_dir))
    run_agents(store_dir, tmp_path)

    # every trial of the design has exactly one result, and it completed
    res = load(str(store_dir))
    assert res.budget == res.trials.height == 24  # baseline + 7 ablations, 3 seeds each
    assert res.trials["status"].to_list() == ["completed"] * res.budget
    assert res.trials["failures"].to_list() == [0] * res.budget
    store = open_store(str(store_dir), read_only=True)
    for i in range(res.budget):
        result = records.decode(store.read(layout.result(i)), records.Result, layout.result(i))
        assert result.status == "completed" and result.trial == i
    assert not store.exists(layout.result(res.budget))

    # the baseline reaches 0.9 validation accuracy with every seed
    baseline = res.trials.filter(pl.col("variant") == "baseline")
    assert baseline.height == 3 and baseline["seed"].n_unique() == 3
    assert min(baseline["best.val_accuracy"]) >= 0.9, baseline
    assert min(baseline["final.val_accuracy"]) >= 0.9, baseline

    effects = res.effects()  # best val_accuracy per trial, seeds as replicates, Welch's 95% CI
    assert effects.metric == "val_accuracy" and effects.mode == "max" and effects.confidence == 0.95
    variants = effects.factor("variant")
    base_row = variants.filter(pl.col("level") == "baseline").row(0, named=True)
    assert base_row["reference"] and base_row["n"] == 3 and base_row["mean"] >= 0.9
    harmful = variants.filter(~pl.col("reference") & (pl.col("diff_ci_high") < 0))
    assert harmful.height >= 1, variants  # worse than the baseline, the interval excluding zero
    assert (harmful["diff"] < 0).all()

    # the rest of run.sh: status, analyze, report
    status = json.loads(ablator("status", str(store_dir), "--json"))
    assert status["counts"]["done"] == status["budget"] == 24
    assert [a["state"] for a in status["agents"]] == ["exited", "exited"]  # both agents ran, and exited
    analyzed = json.loads(ablator("analyze", str(store_dir), "--json"))
    assert analyzed["status"] == {"completed": 24}
    ablator("report", str(store_dir), "--out", str(report_dir))
    html = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    for name in harmful["level"]:
        assert name in md and name in html
    assert "data:image/png;base64," in html  # self-contained
    pngs = list(report_dir.rglob("*.png"))
    assert pngs and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
