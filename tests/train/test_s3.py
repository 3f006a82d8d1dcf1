"""Both trial styles train, evaluate, checkpoint and resume through an S3 store (the moto server
speaking the real S3 API to s3fs), exactly as through a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trainlib as T
from testkit import put_claim

from ablator import layout, lineage, records
from ablator.entrypoint import EntryPoint
from ablator.store import open_store
from ablator.store.base import Store
from ablator.train import NoFence, Outcome, TrialContext, execute_trial
from ablator.train.checkpoint import deserialize


def attempt(store: Store, entry: EntryPoint, spec: records.TrialSpec, epoch: int) -> Outcome:
    put_claim(store, spec.index, epoch, spec=spec)
    return execute_trial(
        entry,
        spec,
        store,
        spec.index,
        epoch,
        fence=NoFence(),
        device="cpu",
        progress=False,
        metric=("val_accuracy", "max"),
    )


def crash_then_resume(
    store: Store, entry: EntryPoint, crashing: EntryPoint, spec: records.TrialSpec
) -> Outcome:
    with pytest.raises(T.Crash):
        attempt(store, crashing, spec, 0)
    return attempt(store, entry, spec, 1)


def crashing_trial(config: T.TinyConfig, ctx: TrialContext) -> dict[str, float]:
    """tiny_trial, crashing right after its checkpoint of step 10."""
    save = ctx.save_checkpoint

    def save_then_crash(state: Any, step: int) -> str:
        key = save(state, step)
        if step == 10:
            raise T.Crash("after step 10")
        return key

    ctx.save_checkpoint = save_then_crash  # type: ignore[method-assign]
    return T.tiny_trial(config, ctx)


WRAPPER = EntryPoint(kind="wrapper", obj=T.TinyWrapper, config_type=T.TinyConfig)
FUNCTION = EntryPoint(kind="function", obj=T.tiny_trial, config_type=T.TinyConfig)
CRASHING = {
    "wrapper": EntryPoint(kind="wrapper", obj=T.CrashingWrapper(crash_at=14), config_type=T.TinyConfig),
    "function": EntryPoint(kind="function", obj=crashing_trial, config_type=T.TinyConfig),
}


@pytest.mark.parametrize("style", ["wrapper", "function"])
def test_train_checkpoint_and_resume_through_s3_match_a_local_store(
    s3_url: str, tmp_path: Path, style: str
) -> None:
    cfg = T.tiny_config(batch_size=8, epochs=3, eval_every=6, checkpoint_every=4, optimizer={"lr": 0.05})
    spec = T.spec_for(cfg, seed=3)
    entry = WRAPPER if style == "wrapper" else FUNCTION
    s3 = open_store(s3_url)
    local = open_store(tmp_path / "local")
    outs = [crash_then_resume(store, entry, CRASHING[style], spec) for store in (s3, local)]
    expected_resume = (0, 12) if style == "wrapper" else (0, 10)
    assert [o.resumed_from for o in outs] == [expected_resume] * 2
    assert outs[0].status == outs[1].status == "completed"
    assert outs[0].metrics == outs[1].metrics and outs[0].best == outs[1].best
    hist = [[(r.step, r.values) for r in lineage.canonical_rows(st, 0, 1)] for st in (s3, local)]
    assert hist[0] == hist[1] and hist[0][-1][0] == 36
    a = deserialize(s3.read(layout.checkpoint(0, 1, 36)))
    b = deserialize(local.read(layout.checkpoint(0, 1, 36)))
    ma, mb = (a["model"], b["model"]) if style == "wrapper" else (a["state"]["model"], b["state"]["model"])
    assert set(ma) == set(mb) and all(ma[k].equal(mb[k]) for k in ma)
    # the attempt record in S3 names the checkpoint the second attempt resumed from
    att = records.decode(s3.read(layout.attempt(0, 1)), records.Attempt)
    assert att.resumed_from == expected_resume
