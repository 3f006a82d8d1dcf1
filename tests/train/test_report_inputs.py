"""``ctx.report`` checks what a trial function hands it (issue 12): the step must be a whole
number in range, and a metric name that is almost the experiment's is a typo caught at once."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import torch
import trainlib as T
from testkit import put_claim

from ablator.entrypoint import EntryPoint
from ablator.errors import AblatorError
from ablator.store import open_store
from ablator.train import NoFence, Outcome, TrialContext, execute_trial


class Opaque:
    """Picklable, but not a type weights_only=True loads."""


def _run(fn: Any, metric: tuple[str, str] = ("val_accuracy", "max")) -> Outcome:
    store = open_store(f"memory://report-{uuid.uuid4().hex}")
    spec = T.spec_for(T.tiny_config(batch_size=8, epochs=1))
    put_claim(store, spec.index, 0, spec=spec)
    entry = EntryPoint(kind="function", obj=fn, config_type=T.TinyConfig)
    return execute_trial(
        entry, spec, store, 0, 0, fence=NoFence(), device="cpu", progress=False, metric=metric
    )


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (1.5, r"ctx.report\(step=1.5\): step must be a whole number .* found float"),
        (10**30, r"step must be between 0 and 2\*\*53"),
        (-5, r"ctx.report\(step=-5\): step must be between 0"),
        (True, "not a bool"),
        ("3", "found str"),
    ],
)
def test_a_bad_step_is_refused_with_what_a_step_is(step: Any, message: str) -> None:
    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(step, {"val_accuracy": 0.5})
        return {}

    with pytest.raises(AblatorError, match=message):
        _run(trial)


def test_numpy_integer_steps_are_steps() -> None:
    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(np.int64(3), {"val_accuracy": 0.5})
        return {}

    out = _run(trial)
    assert out.status == "completed" and out.steps == 3


def test_a_metric_name_typo_is_caught_at_the_first_report() -> None:
    reports: list[int] = []

    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        for step in range(1, 4):
            ctx.report(step, {"train_loss": 1.0, "val_acuracy": 0.5})  # the typo
            reports.append(step)
        return {}

    with pytest.raises(AblatorError, match=r"metric is 'val_accuracy' .* did you mean 'val_acuracy'\?"):
        _run(trial)
    assert reports == []  # at the first report, not after the trial


def test_a_metric_never_reported_fails_the_trial_with_the_names_it_did_report() -> None:
    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"train_loss": 1.0})  # no evaluation yet: not an error by itself
        return {"accuracy": 0.5}

    with pytest.raises(
        AblatorError,
        match=r"'val_accuracy' .* was never reported nor returned \(reported: accuracy, train_loss\)",
    ):
        _run(trial)

    def evaluates_later(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"train_loss": 1.0})
        ctx.report(2, {"train_loss": 0.5, "val_accuracy": 0.7})
        return {}

    assert _run(evaluates_later).status == "completed"


def test_a_checkpoint_that_cannot_hold_the_state_says_so_first() -> None:
    from ablator.errors import CheckpointError

    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"val_accuracy": 0.5})
        ctx.save_checkpoint({"thing": Opaque()}, 1)
        return {}

    with pytest.raises(CheckpointError) as info:
        _run(trial)
    text = str(info.value)
    local = type("Local", (), {})  # cannot even be pickled

    def unpicklable(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.save_checkpoint({"thing": local()}, 1)
        return {}

    with pytest.raises(CheckpointError, match=r"^ctx.save_checkpoint\(step=1\): the state holds something"):
        _run(unpicklable)
    assert text.startswith("ctx.save_checkpoint(step=1): the state holds something a checkpoint cannot hold")
    assert "Unsupported global" in text and "Opaque" in text
    assert (
        "\x1b[" not in text and "weights_only=False" not in text and "weights_only` set to `False" not in text
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("high", r"metric 'val_accuracy' must be a number \(or a one-value tensor\), found str"),
        (torch.ones(3), r"metric 'val_accuracy' is a tensor of 3 values; report one number"),
        (object(), "found object"),
    ],
)
def test_metric_values_that_are_not_numbers_are_named(value: Any, message: str) -> None:
    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"val_accuracy": value})
        return {}

    with pytest.raises(AblatorError, match=message):
        _run(trial)


def test_numpy_and_one_value_tensors_are_numbers() -> None:
    def trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, {"val_accuracy": np.float32(0.25), "loss": torch.tensor([0.5], requires_grad=True)})
        return {}

    assert _run(trial).best["val_accuracy"] == 0.25
