"""A tiny function-style trial for the GPU agent tests. It never allocates on its device (the
tests' CUDA is a CPU-only torch in disguise, see ``fakegpu``); it records where it ran and
misbehaves as its config says.

Every attempt writes ``<trace_dir>/<trial>-e<epoch>.json`` with its device, the worker's
``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``, ``CUBLAS_WORKSPACE_CONFIG`` and torch threads, and
how many trials were running at once (``<trace_dir>/running/``). At import the module appends
``pid CUDA_VISIBLE_DEVICES`` to ``$GPUTOY_IMPORTS`` (the agent's process imports it too).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from ablator.config import BaseConfig

if os.environ.get("GPUTOY_IMPORTS"):
    with open(os.environ["GPUTOY_IMPORTS"], "a") as _f:
        _f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}\n")


class GpuToyConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 3
    sleep: float = 0.0
    # device_error: a faulty GPU's error while on CUDA; oom_crowded: CUDA out of memory while
    # more than ``crowd`` trials run at once
    mode: Literal["ok", "device_error", "oom_crowded", "oom"] = "ok"
    crowd: int = 2
    x: float = 0.0
    trace_dir: str = ""
    hold_file: str = ""  # trials after the first keep stepping until this file exists


def trial(config: GpuToyConfig, ctx: Any) -> dict[str, float]:
    import torch

    running = Path(config.trace_dir) / "running" if config.trace_dir else None
    me = None
    if running is not None:
        running.mkdir(parents=True, exist_ok=True)
        me = running / f"{ctx.trial}-{ctx.epoch}-{os.getpid()}"
        me.touch()
    try:
        crowd = len(list(running.iterdir())) if running is not None else 1
        if config.trace_dir:
            record = {
                "trial": ctx.trial,
                "epoch": ctx.epoch,
                "device": str(ctx.device),
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "order": os.environ.get("CUDA_DEVICE_ORDER"),
                "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                "threads": torch.get_num_threads(),
                "crowd": crowd,
                "t": time.time(),
            }
            with open(Path(config.trace_dir) / f"{ctx.trial}-e{ctx.epoch}.json", "w") as f:
                json.dump(record, f)
        on_gpu = ctx.device.type == "cuda"
        if on_gpu and config.mode == "device_error":
            raise RuntimeError("CUDA error: uncorrectable ECC error encountered")
        if on_gpu and config.mode == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        score = config.x
        step = 0
        while step < config.steps or (
            config.hold_file and ctx.trial >= 1 and not os.path.exists(config.hold_file)
        ):
            step += 1
            if step > 4000:
                raise RuntimeError(f"gputoy trial {ctx.trial}: {config.hold_file} never appeared")
            if config.sleep:
                time.sleep(config.sleep)
            crowded = running is not None and len(list(running.iterdir())) > config.crowd
            if on_gpu and config.mode == "oom_crowded" and crowded:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            score = config.x + step
            ctx.report(step, {"score": score})
        return {"score": score}
    finally:
        if me is not None:
            me.unlink()
