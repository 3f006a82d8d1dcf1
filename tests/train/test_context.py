"""The trial-function style: TrialContext's report / save / load / should_stop contract, and a
LightningModule wrapped in a trial function."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
import torch
import trainlib as T
from testkit import put_claim

from ablator import layout, lineage, records
from ablator.entrypoint import EntryPoint
from ablator.errors import AblatorError, CheckpointError
from ablator.store import open_store
from ablator.store.base import Store
from ablator.train import NoFence, Outcome, TrialContext, execute_trial


@pytest.fixture
def store() -> Store:
    return open_store(f"memory://ctx-{uuid.uuid4().hex}")


def run_fn(store: Store, fn: Any, spec: records.TrialSpec, epoch: int = 0, **kw: Any) -> Outcome:
    put_claim(store, spec.index, epoch, spec=spec)
    entry = EntryPoint(kind="function", obj=fn, config_type=T.TinyConfig)
    kw.setdefault("progress", False)
    kw.setdefault("metric", ("val_accuracy", "max"))
    return execute_trial(
        entry, spec, store, spec.index, epoch, fence=kw.pop("fence", NoFence()), device="cpu", **kw
    )


def test_function_trial_reports_checkpoints_and_returns_metrics(store: Store) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, optimizer={"lr": 0.1})
    out = run_fn(store, T.tiny_trial, T.spec_for(cfg))
    assert out.status == "completed" and out.steps == 36 and out.resumed_from is None
    assert set(out.metrics) == {"val_accuracy"}
    rows = lineage.canonical_rows(store, 0, 0)
    assert [r.step for r in rows] == list(range(4, 37, 4))
    assert out.best["val_accuracy"] == max(r.values["val_accuracy"] for r in rows)
    assert out.best["val_accuracy"] > 0.6
    assert out.best_step in [r.step for r in rows]
    keys = [layout.basename(e.key) for e in store.list(layout.ckpt_dir(0))]
    assert "e0000-s00000036.pt" in keys and len(keys) <= 3


def test_load_checkpoint_restores_state_step_and_rng(store: Store) -> None:
    spec = T.spec_for(T.tiny_config(batch_size=8, epochs=1))
    drawn: dict[str, Any] = {}

    def first(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        assert ctx.load_checkpoint() is None and ctx.resumed_from is None
        torch.rand(3)
        ctx.report(1, {"val_accuracy": 0.5})
        ctx.save_checkpoint({"w": torch.arange(3.0), "note": "hi", "n": [1, 2]}, 1)
        drawn["after"] = torch.rand(2)
        raise RuntimeError("crash after the checkpoint")

    with pytest.raises(RuntimeError, match="crash after"):
        run_fn(store, first, spec)

    def second(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        assert ctx.resumed_from == (0, 1)
        torch.rand(5)  # setup that draws from the RNG before loading
        loaded = ctx.load_checkpoint()
        assert loaded is not None
        state, step = loaded
        assert (
            step == 1
            and torch.equal(state["w"], torch.arange(3.0))
            and state["note"] == "hi"
            and state["n"] == [1, 2]
        )
        assert torch.equal(torch.rand(2), drawn["after"])  # the RNG continues where the checkpoint was
        ctx.report(2, {"val_accuracy": 0.25})
        return {"val_accuracy": 0.25}

    out = run_fn(store, second, spec, epoch=1)
    assert out.resumed_from == (0, 1)
    # best survives the resume: the first attempt's 0.5 at step 1
    assert out.best_step == 1 and out.best["val_accuracy"] == 0.5
    assert [r.step for r in lineage.canonical_rows(store, 0, 1)] == [1, 2]


def test_unloadable_state_fails_at_the_first_save(store: Store) -> None:
    import numpy as np

    def bad(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.save_checkpoint({"w": np.zeros(3)}, 1)
        return {}

    with pytest.raises(CheckpointError, match=r"torch\.from_numpy"):
        run_fn(store, bad, T.spec_for(T.tiny_config()))
    assert store.list(layout.ckpt_dir(0)) == []


def test_report_after_the_checkpoint_of_its_step_is_an_error(store: Store) -> None:
    def late(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.save_checkpoint({}, 5)
        ctx.report(5, {"val_accuracy": 1.0})
        return {}

    with pytest.raises(AblatorError, match="step 5 reported after step 5 was checkpointed") as info:
        run_fn(store, late, T.spec_for(T.tiny_config()))
    # ... and says how a resumed attempt continues: after the step load_checkpoint returned.
    assert "ctx.load_checkpoint()" in str(info.value) and "start + 1" in str(info.value)


def test_early_stopping_and_divergence_set_should_stop(store: Store) -> None:
    cfg = T.tiny_config(early_stopping_patience=2)

    def flat(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        step = 0
        while not ctx.should_stop:
            step += 1
            ctx.report(step, {"val_accuracy": 0.5})
        return {"val_accuracy": 0.5}

    out = run_fn(store, flat, T.spec_for(cfg))
    assert out.status == "early_stopped" and out.steps == 3 and out.best_step == 1

    def nan(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"train_loss": float("nan")})
        assert ctx.should_stop
        return {}

    out = run_fn(store, nan, T.spec_for(cfg, index=1))
    assert out.status == "diverged" and "nan" in out.message


def test_a_trial_function_must_return_a_dict_of_numbers(store: Store) -> None:
    def wrong(config: T.TinyConfig, ctx: TrialContext) -> Any:
        return [0.5]

    with pytest.raises(AblatorError, match="returned list; expected dict"):
        run_fn(store, wrong, T.spec_for(T.tiny_config()))


def test_a_function_trial_stops_on_request(store: Store) -> None:
    class Fence:
        should_stop = False

        def check(self) -> None:
            pass

    fence = Fence()

    def obedient(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        for step in range(1, 100):
            ctx.report(step, {"val_accuracy": step / 100})
            if step == 3:
                fence.should_stop = True
            if ctx.should_stop:
                ctx.save_checkpoint({"step": step}, step)
                break
        return {}

    out = run_fn(store, obedient, T.spec_for(T.tiny_config()), fence=fence)
    assert out.status == "stopped" and out.checkpoint_step == 3


@pytest.mark.procs  # Lightning probes the host (e.g. for `srun`) in subprocesses
@pytest.mark.filterwarnings(
    # lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates; not ours to fix
    r"ignore:.*isinstance\(treespec, LeafSpec\).*",
    # on a host with Slurm installed Lightning advises `srun`; a trial is one process by design
    # (the example says so too, and passes LightningEnvironment: see docs/engines.md)
    r"ignore:The `srun` command is available on your system",
)
def test_a_lightning_module_in_a_trial_function_trains_checkpoints_and_resumes(store: Store) -> None:
    pytest.importorskip("lightning")
    cfg = T.tiny_config(batch_size=16, epochs=3, optimizer={"lr": 0.2})
    spec = T.spec_for(cfg)

    class Fence:
        """An agent draining from the start: the trial stops at its first chance, which is right
        after its first checkpoint (the callback saves, then looks at ``ctx.should_stop``).
        Asking only once a ``.pt`` is in the store would race with the background writer."""

        should_stop = True

        def check(self) -> None:
            pass

    first = run_fn(store, T.lightning_trial, spec, fence=Fence())
    assert first.status == "stopped" and first.checkpoint_step == 6  # 96 samples / 16 = 6 steps per epoch
    second = run_fn(store, T.lightning_trial, spec, epoch=1)
    assert second.resumed_from == (0, 6) and second.status == "completed"
    rows = lineage.canonical_rows(store, 0, 1)
    assert [r.step for r in rows] == [6, 12, 18]  # Lightning continued at epoch 2, not from scratch
    assert second.metrics["val_accuracy"] == rows[-1].values["val_accuracy"]
    assert second.best["val_accuracy"] == max(r.values["val_accuracy"] for r in rows)
    ckpt = torch.load(io.BytesIO(store.read(layout.checkpoint(0, 1, 18))), weights_only=True)
    assert ckpt["state"]["global_step"] == 18 and ckpt["state"]["epoch"] == 2
