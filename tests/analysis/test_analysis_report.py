"""``report`` writes every figure and the tables; ``analyze`` and ``report`` through the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from testkit import ablator_cli, child_env

from ablator.analysis import load, write_report
from analysis.test_analysis_effects import ablation_store, search_store

ROOT = Path(__file__).resolve().parents[2]


def _png_ok(path: Path) -> None:
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 400, path
    assert img.std() > 0.01, f"{path} is blank"


def test_ablation_report_has_every_figure_and_table(tmp_path: Path) -> None:
    ablation_store(tmp_path / "s")
    res = load(tmp_path / "s")
    files = write_report(res, tmp_path / "out")
    names = {f.name for f in files.figures}
    assert names == {"ablation.png", "factor-variant.png", "curves-variant.png"}
    for f in files.figures:
        _png_ok(f.path)
    md = files.markdown.read_text()
    assert md.startswith("# digits-ablation: ablation report")
    for section in ("## Summary", "## Best trials", "## Effects", "### variant"):
        assert section in md
    assert (
        "| level | n | mean | std | 95% CI | diff | diff 95% CI | rel. | test | p | p adj. (holm) | g | verdict | rank |"
        in md
    )
    assert "3 comparison(s) in these tables; p adj. = Holm-adjusted" in md
    assert re.search(r"\| no_batchnorm \| 4 \| 0\.80", md)
    for name in names:
        assert f"]({name})" in md
    html = files.html.read_text()
    assert html.count('src="data:image/png;base64,') == len(names)
    assert not re.search(r'src="(?!data:)', html)  # self-contained
    assert "<table>" in html and "no_batchnorm" in html
    effects = json.loads(files.effects_json.read_text())
    assert effects["effects"]["metric"] == "val_accuracy" and len(effects["effects"]["levels"]) == 4


def test_search_report_has_factor_curve_and_parallel_figures(tmp_path: Path) -> None:
    search_store(tmp_path / "s", n=40)
    files = write_report(load(tmp_path / "s"), tmp_path / "out")
    names = {f.name for f in files.figures}
    for factor in ("model.dropout", "train.optimizer.lr", "model.activation", "model.hidden"):
        assert f"factor-{factor}.png" in names and f"curves-{factor}.png" in names
    assert "parallel.png" in names and "ablation.png" not in names
    for f in files.figures:
        _png_ok(f.path)
    md = files.markdown.read_text()
    assert "| factor | n | spearman rho | p | p adj. | slope | slope CI | x |" in md
    assert "per decade" in md


def _cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return ablator_cli(*args, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def cli_env(local_cache: Path) -> dict[str, str]:
    return child_env(ABLATOR_CACHE_DIR=str(local_cache), MPLBACKEND="Agg")


@pytest.mark.procs
def test_cli_analyze_and_report(tmp_path: Path, cli_env: dict[str, str]) -> None:
    ablation_store(tmp_path / "s")
    out = _cli("analyze", str(tmp_path / "s"), env=cli_env)
    assert out.returncode == 0, out.stderr
    assert "variant (variant; diff vs the baseline)" in out.stdout
    assert "no_batchnorm" in out.stdout and "best trials" in out.stdout
    out = _cli("analyze", str(tmp_path / "s"), "--json", "--metric", "train_loss", env=cli_env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["effects"]["metric"] == "train_loss" and data["effects"]["mode"] == "min"
    assert data["status"] == {"completed": 16} and len(data["best"]) == 5
    out = _cli("report", str(tmp_path / "s"), "--out", str(tmp_path / "rep"), env=cli_env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "ablation.png").is_file()
    assert "3 figure(s)" in out.stdout
    # --value final, --adjust bh; report without --out writes ./ablator-report/<name>/.
    out = _cli("analyze", str(tmp_path / "s"), "--json", "--value", "final", "--adjust", "bh", env=cli_env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["effects"]["value"] == "final" and data["effects"]["adjust"] == "bh"
    out = _cli("report", str(tmp_path / "s"), env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ablator-report" / "digits-ablation" / "report.html").is_file()


@pytest.mark.procs
def test_cli_analyze_shows_the_parameters_of_a_sweeps_best_trials(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    configs, losses = search_store(tmp_path / "s", n=12)
    out = _cli("analyze", str(tmp_path / "s"), env=cli_env)
    assert out.returncode == 0, out.stderr
    best = out.stdout.split("best trials (best val_loss)")[1].splitlines()
    header = best[1].split()
    assert header[:5] == ["trial", "model.dropout", "train.optimizer.lr", "model.activation", "model.hidden"]
    top = min(range(12), key=lambda i: losses[i])
    first = best[2].split()
    assert first[0] == f"#{top}" and first[3] == configs[top]["model.activation"]
    out = _cli("analyze", str(tmp_path / "s"), "--json", env=cli_env)
    row = json.loads(out.stdout)["best"][0]
    assert row["index"] == top and row["train.optimizer.lr"] == pytest.approx(
        configs[top]["train.optimizer.lr"]
    )


def test_cli_errors_name_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ablator.cli import main

    assert main(["analyze", str(tmp_path / "missing")]) == 1
    assert str(tmp_path / "missing") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 1
    assert "experiment.json" in capsys.readouterr().err
    ablation_store(tmp_path / "s")
    assert main(["analyze", str(tmp_path / "s"), "--metric", "bleu"]) == 1
    assert "bleu" in capsys.readouterr().err


def test_report_of_a_store_mid_run(tmp_path: Path) -> None:
    """One finished trial per variant (no spread, no intervals), the rest running or failed."""
    from ablator.store import open_store
    from analysis.synthstore import StoreBuilder, ablation_experiment

    exp = ablation_experiment(repeats=2)
    b = StoreBuilder(open_store(tmp_path / "s"), exp)
    for i, (name, overrides) in enumerate([("", {}), *exp["design"]["ablations"].items()]):
        b.finished(2 * i, overrides, 0.9 - 0.02 * i, variant=name, n_steps=6)
        b.claim(2 * i + 1, 0, b.spec_for(2 * i + 1, overrides, variant=name, repeat=1))
        b.attempt(2 * i + 1, 0)
        if name == "gelu":
            b.failed(2 * i + 1, 0, kind="lost", message="host vanished")
    res = load(tmp_path / "s")
    files = write_report(res, tmp_path / "out")
    assert {f.name for f in files.figures} == {"ablation.png", "factor-variant.png", "curves-variant.png"}
    md = files.markdown.read_text()
    assert "not finished yet" in md and "## Failures" in md and "lost: host vanished" in md
    assert "n<2" not in md  # tables show dashes, the chart says so in its labels
    assert "| no_dropout | 1 | 0.88 | - | - | -0.02 | - | -2.2% | - | - | - | - | none* | 2 |" in md
    assert "- no_dropout: fewer than 2 trials on a side: no test" in md
    empty = StoreBuilder(open_store(tmp_path / "e"), ablation_experiment())
    empty.claim(0, 0, empty.spec_for(0, {}))
    files = write_report(load(tmp_path / "e"), tmp_path / "out-empty")
    assert files.figures == () and "No finished trial" in files.markdown.read_text()


@pytest.mark.procs
def test_analysis_does_not_import_torch(cli_env: dict[str, str]) -> None:
    code = (
        "import sys, ablator.analysis, ablator.analysis.cli, ablator.analysis.report; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


PRIVATE_EXPERIMENT = """
name: tiny-private
entry: trainlib:TinyWrapper
config:
  model: {hidden: 16}
  train: {batch_size: 8, epochs: 1, eval_every: 4, optimizer: {name: adam, lr: 0.01}}
metric: {name: val_accuracy, mode: max}
design: {kind: ablation, repeats: 1, seed: 0, ablations: {wide: {model.hidden: 32}}}
"""


@pytest.mark.procs
def test_a_private_run_store_can_be_analysed(
    tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials run with `ablator run` (no launch) are analysed and reported like launched ones."""
    from ablator.cli import main

    exp = tmp_path / "exp.yaml"
    exp.write_text(PRIVATE_EXPERIMENT)
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "train"))  # trainlib
    env = cli_env
    store = tmp_path / "runs"
    for trial in ("0", "1"):
        assert main(["run", str(exp), "--store", str(store), "--trial", trial, "--no-progress"]) == 0
    assert (store / "private.json").is_file() and not (store / "experiment.json").exists()
    out = _cli("analyze", str(store), "--json", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["experiment"] == "tiny-private" and data["status"] == {"completed": 2}
    assert data["budget"] is None  # no pending rows: a private store runs single trials
    levels = {r["level"]: r["n"] for r in data["effects"]["levels"]}
    assert levels == {"baseline": 1, "wide": 1}
    shutil.rmtree(store / "cache")  # the snapshot `analyze` wrote
    res = load(store)
    assert res.info.from_summaries == 2  # `run` wrote each finished trial's summary
    assert (store / "trials" / "000001" / "summary.msgpack").is_file()
    assert res.trials.equals(load(store, cache=False).trials)
    assert res.trials["variant"].to_list() == ["baseline", "wide"]
    assert res.trials["setup_s"].drop_nulls().len() == 2 and (res.trials["duration_s"] > 0).all()
    # A store with trials but no experiment at all says what it is and what to do.
    (store / "private.json").unlink()
    out = _cli("analyze", str(store), env=env)
    assert out.returncode == 1 and "private `ablator run` store" in out.stderr


@pytest.mark.procs
def test_cli_analyze_and_report_on_s3(s3_url: str, local_cache: Path, tmp_path: Path) -> None:
    """The same commands on an S3 store (moto), through real processes."""
    from ablator.analysis.snapshot import write_trial_summary
    from ablator.store import open_store
    from analysis.synthstore import StoreBuilder, ablation_experiment

    exp = ablation_experiment(repeats=3)
    b = StoreBuilder(open_store(s3_url), exp)
    i = 0
    for name, overrides in [("", {}), *exp["design"]["ablations"].items()]:
        for r in range(3):
            value = 0.9 - (0.1 if name == "no_batchnorm" else 0.0) + 0.002 * r + 0.0007 * ((i * 7) % 5)
            b.finished(i, overrides, value, variant=name, repeat=r, seed=500 + r, n_steps=4)
            write_trial_summary(b.store, i, ablation=True)
            i += 1
    env = child_env(ABLATOR_CACHE_DIR=str(local_cache))  # after s3_url: AWS_* point at the moto server
    out = _cli("analyze", s3_url, "--json", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rows = {r["level"]: r for r in data["effects"]["levels"]}
    assert data["status"] == {"completed": 12} and rows["no_batchnorm"]["test"] == "paired"
    assert rows["no_batchnorm"]["verdict"] == "worse" and data["effects"]["n_comparisons"] == 3
    out = _cli("report", s3_url, "--out", str(tmp_path / "rep"), env=env)
    assert out.returncode == 0, out.stderr
    assert "paired" in (tmp_path / "rep" / "report.md").read_text()
