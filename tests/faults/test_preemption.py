"""Preemption before the first checkpoint (issue 11 item 1): a trial function that returns while
a stop was requested is released, never recorded as completed with partial metrics, unless it
says that it finished."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import pytest
import trainlib as T
from testkit import put_claim

from ablator.entrypoint import EntryPoint
from ablator.store import open_store
from ablator.train import Outcome, TrialContext, execute_trial

pytestmark = pytest.mark.procs  # the attempt record's environment probe starts a process


class Draining:
    """The agent asks the trial to stop from the start (a SIGTERM right after the claim)."""

    should_stop = True

    def check(self) -> None:
        pass


def _run(fn: Any) -> Outcome:
    store = open_store(f"memory://preempt-{uuid.uuid4().hex}")
    spec = T.spec_for(T.tiny_config())
    put_claim(store, spec.index, 0, spec=spec)
    entry = EntryPoint(kind="function", obj=fn, config_type=T.TinyConfig)
    return execute_trial(
        entry,
        spec,
        store,
        spec.index,
        0,
        fence=Draining(),
        device="cpu",
        progress=False,
        metric=("score", "max"),
    )


def test_returning_on_a_stop_before_any_checkpoint_is_a_release() -> None:
    def forty_steps(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        score = 0.0
        for step in range(1, 41):
            score = step / 50
            ctx.report(step, {"score": score})
            if step % 10 == 0:
                ctx.save_checkpoint({"step": step}, step)
            if ctx.should_stop and step >= 3:
                break  # as documented: return when asked to stop
        return {"score": score}

    out = _run(forty_steps)
    assert out.status == "stopped"  # released: the next holder starts it again
    assert out.checkpoint_step is None


def test_a_trial_that_says_it_finished_is_completed_even_when_asked_to_stop() -> None:
    def short(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
        for step in range(1, 4):
            ctx.report(step, {"score": step})
        ctx.finished()
        return {"score": 3.0}

    out = _run(short)
    assert out.status == "completed" and out.metrics == {"score": 3.0}
