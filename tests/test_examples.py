"""Every example runs through the CLI: ``ablator plan`` validates it and ``ablator run --smoke``
trains a few steps of its first trial; the function-trial (Lightning) example also trains a real
trial into a store, and resumes exactly after a stop."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from testkit import ablator_cli, child_env

from ablator import layout, lineage, records
from ablator import plan as ablator_plan
from ablator.store import open_store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "digits": "examples/digits/experiment.yaml",
    "sweep": "examples/sweep/experiment.yaml",
    "function_trial": "examples/function_trial/experiment.yaml",
}
# lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates; not ours to fix
LIGHTNING_WARNING = r"ignore:.*isinstance\(treespec, LeafSpec\).*"


def needs(example: str) -> None:
    if example == "function_trial":
        pytest.importorskip("lightning")
    pytest.importorskip("sklearn")  # every example trains on scikit-learn's bundled digits


def env() -> dict[str, str]:
    # one torch thread per process: on a small shared machine more threads only fight
    return child_env(OMP_NUM_THREADS="1")


def ablator(*args: str, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = ablator_cli(*args, cwd=cwd, env=env(), timeout=timeout)
    assert proc.returncode == 0, (
        f"ablator {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


@pytest.mark.procs
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_plan_validates_the_example(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    needs(example)
    text = ablator("plan", EXAMPLES[example]).stdout
    monkeypatch.syspath_prepend(str(ROOT))
    plan = json.loads(ablator_plan(str(ROOT / EXAMPLES[example])).to_json())
    assert plan["name"] in text and f"valid: {plan['budget']} trials" in text
    assert plan["valid"] is True
    assert plan["budget"] == len(plan["trials"]) > 1
    design = plan["design"]
    if example == "digits":  # an ablation design against a baseline, 3 seeds per config
        assert design["kind"] == "ablation" and design["repeats"] == 3
        assert plan["trials"][0]["variant"] == "baseline"
        assert plan["budget"] == (1 + len(design["variants"])) * 3
    elif example == "sweep":  # a search over learning rate, weight decay and width
        assert design["kind"] in ("quasi_random", "tpe")
        assert {d["path"] for d in design["space"]} == {
            "train.optimizer.lr",
            "train.optimizer.weight_decay",
            "model.hidden",
        }
        # ASHA judges at the evaluations after epochs 1 and 3 (23 steps per epoch)
        assert design["pruner"] == {"kind": "asha", "min_steps": 23, "reduction_factor": 3, "max_steps": 138}
        assert "pruner asha (min_steps 23, reduction_factor 3, max_steps 138)" in text
    else:
        assert plan["entry"]["kind"] == "function"


@pytest.mark.procs
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_smoke_run_of_the_example(example: str, tmp_path: Path) -> None:
    needs(example)
    # from another folder: the entry imports through PYTHONPATH, and --smoke writes nothing here
    out = ablator("run", str(ROOT / EXAMPLES[example]), "--smoke", "--no-progress", cwd=tmp_path).stdout
    summary = [line for line in out.splitlines() if line.startswith("trial 0")][-1]
    assert "completed after 3 steps" in summary, out
    assert "val_accuracy" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.procs
def test_function_trial_trains_reports_and_checkpoints_into_the_store(tmp_path: Path) -> None:
    needs("function_trial")
    store_dir = tmp_path / "store"
    ablator("run", EXAMPLES["function_trial"], "--store", str(store_dir), "--trial", "3", "--no-progress")
    store = open_store(str(store_dir), read_only=True)
    result = records.decode(store.read(layout.result(3)), records.Result, "result")
    assert result.status == "completed" and result.epoch == 0
    assert result.metrics["val_accuracy"] > 0.8  # 4 epochs of a 64-wide MLP on digits
    rows = lineage.canonical_rows(store, 3, 0)
    per_epoch = result.steps // 4
    assert [r.step for r in rows] == [per_epoch * k for k in (1, 2, 3, 4)]  # a report per validation
    assert all("val_accuracy" in r.values and "train_loss" in r.values for r in rows)
    assert rows[-1].values["val_accuracy"] == result.metrics["val_accuracy"]
    # Lightning's own checkpoint, in the store, loadable without pickle
    ckpts = sorted(e.key for e in store.list(layout.ckpt_dir(3)) if e.key.endswith(".pt"))
    assert ckpts and ckpts[-1] == layout.checkpoint(3, 0, result.steps)
    import torch

    ckpt = torch.load(io.BytesIO(store.read(ckpts[-1])), weights_only=True)
    state = ckpt["state"]
    assert state["global_step"] == result.steps and state["epoch"] == 3
    assert any(k.startswith("net.") for k in state["state_dict"])


@pytest.mark.filterwarnings(LIGHTNING_WARNING)
def test_function_trial_resumes_where_a_stopped_attempt_left_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt asked to stop (an agent draining) checkpoints at its first validation; the next
    attempt continues from that checkpoint and ends with the same history as an uninterrupted run."""
    needs("function_trial")
    monkeypatch.syspath_prepend(str(ROOT))
    from ablator.entrypoint import resolve_entry
    from ablator.experiment import load_experiment, trial_spec
    from ablator.train import NoFence, execute_trial

    exp = load_experiment(ROOT / EXAMPLES["function_trial"], ["config.train.epochs=3"])
    entry = resolve_entry(exp.entry)
    spec = trial_spec(exp, 1, entry)  # dropout 0.3: the RNG state matters too

    class Draining:
        """An agent asking its trial to stop: the trial checkpoints at its next validation."""

        should_stop = True

        def check(self) -> None:
            pass

    def attempt(store: Any, epoch: int, fence: Any) -> Any:
        return execute_trial(
            entry,
            spec,
            store,
            1,
            epoch,
            fence=fence,
            device="cpu",
            progress=False,
            metric=("val_accuracy", "max"),
        )

    def history(store: Any, epoch: int) -> list[tuple[int, dict[str, float]]]:
        return [(r.step, r.values) for r in lineage.canonical_rows(store, 1, epoch)]

    whole = open_store(f"memory://function-trial-whole-{uuid.uuid4().hex}")
    assert attempt(whole, 0, NoFence()).status == "completed"

    split = open_store(f"memory://function-trial-split-{uuid.uuid4().hex}")
    first = attempt(split, 0, Draining())
    assert first.status == "stopped"
    second = attempt(split, 1, NoFence())
    assert second.status == "completed" and second.resumed_from == (0, first.checkpoint_step)
    assert [step for step, _ in history(split, 1)] == [first.checkpoint_step * k for k in (1, 2, 3)]
    assert history(split, 1) == history(whole, 0)
