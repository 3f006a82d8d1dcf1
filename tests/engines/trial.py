"""A tiny CPU trial for the engine tests: steps with a short sleep, a checkpoint every step, and
a trace of every attempt (``<trace_dir>/<trial>.txt`` gets ``trial epoch start_step env``, where
env lists the launcher variables the trial process saw). No torch at import."""

from __future__ import annotations

import os
import time
from typing import Any

from ablator.config import BaseConfig
from ablator.engines.environment import is_launcher_variable


class EngineTrialConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 3
    sleep: float = 0.0
    trace_dir: str = ""
    hold_file: str = ""  # when set, keep stepping past ``steps`` until this file exists
    x: float = 0.0


def trial(config: EngineTrialConfig, ctx: Any) -> dict[str, float]:
    start = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        start = int(loaded[1])
    if config.trace_dir:
        seen = sorted(k for k in os.environ if is_launcher_variable(k))
        with open(os.path.join(config.trace_dir, f"{ctx.trial}.txt"), "a") as f:
            f.write(f"{ctx.trial} {ctx.epoch} {start} {','.join(seen) or '-'}\n")
    step = start
    while True:
        step += 1
        if step > config.steps and not (config.hold_file and not os.path.exists(config.hold_file)):
            break
        if config.sleep:
            time.sleep(config.sleep)
        ctx.report(step, {"score": config.x + step})
        ctx.save_checkpoint({"step": step}, step)
        if ctx.should_stop:
            break
    return {"score": config.x + step}
