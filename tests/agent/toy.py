"""Tiny CPU trials for the agent tests: function-style, reporting steps and checkpointing through
``ctx``, and told by their config to raise, abort the process, hang, or do nothing at all.

``unless_file``: the misbehaviour applies only while that file does not exist (the "bug fix" of
the ``retry --failed`` test). ``trace_dir``: every attempt appends ``trial epoch start_step`` to
``<trace_dir>/<trial>.txt``, so that tests see where each attempt began.

No torch at import: the agent's own process imports the entry to validate it, and the tests
start many agents on a small machine.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from ablator.config import BaseConfig


class ToyConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 4
    checkpoint_every: int = 2
    sleep: float = 0.0
    mode: Literal["ok", "raise", "abort", "hang", "noop"] = "ok"
    unless_file: str = ""
    fail_at: int = 1
    only_epoch: int = -1  # misbehave only in this attempt (-1: in every attempt)
    x: float = 0.0
    trace_dir: str = ""
    hold_file: str = ""  # when set, keep stepping past ``steps`` until this file exists
    hold_epoch: int = -1  # hold only in this attempt (-1: in every attempt)


def trial(config: ToyConfig, ctx: Any) -> dict[str, float]:
    if config.mode == "noop":
        return {"score": config.x}
    start = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        state, start = loaded
        assert int(state["step"]) == start
    if config.trace_dir:
        with open(os.path.join(config.trace_dir, f"{ctx.trial}.txt"), "a") as f:
            f.write(f"{ctx.trial} {ctx.epoch} {start}\n")
    misbehave = (
        config.mode != "ok"
        and not (config.unless_file and os.path.exists(config.unless_file))
        and config.only_epoch in (-1, ctx.epoch)
    )
    score = config.x + start
    step = start
    while True:
        step += 1
        held = (
            config.hold_file and config.hold_epoch in (-1, ctx.epoch) and not os.path.exists(config.hold_file)
        )
        if step > config.steps and not held:
            break
        if misbehave and step >= config.fail_at:
            if config.mode == "raise":
                raise ValueError(f"toy trial {ctx.trial} raised at step {step} on purpose")
            if config.mode == "abort":
                os.abort()
            if config.mode == "hang":
                time.sleep(3600)  # reports nothing: the agent must fail it as stalled
        if config.sleep:
            time.sleep(config.sleep)
        score = config.x + step
        print(f"toy trial {ctx.trial} epoch {ctx.epoch} step {step}", flush=True)
        ctx.report(step, {"score": score})
        if step % config.checkpoint_every == 0:
            ctx.save_checkpoint({"step": step}, step)
            if ctx.should_stop:
                break
    return {"score": score}
