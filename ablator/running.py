"""Progress of running trials: what ``ablator status`` shows for each (step, metric, pace, ETA).

Read from a trial's claim, newest attempt and canonical metric rows; the trial's state itself
comes from the one classifier (:mod:`ablator.lease.state`).
"""

from __future__ import annotations

import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from ablator import lineage
from ablator.lease import TrialState
from ablator.store import Store


class RunningTrial(msgspec.Struct, kw_only=True):
    """A running trial in ``ablator status``: its newest attempt's progress.

    ``total``: the steps the trial will run when known (``train.max_steps`` without ``epochs`` in
    its config), else the median steps of the finished trials (``total_estimated``: True), else
    None. ``rate``: steps per second over the attempt's reported rows; ``eta_s``: ``(total -
    step) / rate``.
    """

    index: int
    variant: str | None = None
    epoch: int | None = None
    step: int | None = None
    total: int | None = None
    total_estimated: bool = False
    metric: str | None = None
    value: float | None = None
    rate: float | None = None
    eta_s: float | None = None
    host: str | None = None
    holder: str | None = None


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _known_total(config: dict[str, Any]) -> int | None:
    train = config.get("train")
    if isinstance(train, dict) and train.get("epochs") is None and isinstance(train.get("max_steps"), int):
        return int(train["max_steps"])
    return None


def running_trials(
    store: Store,
    states: list[TrialState],
    *,
    experiment: dict[str, Any] | None,
    finished_steps: list[int] | None = None,
) -> list[RunningTrial]:
    """Progress of every running trial in ``states`` (reads its claim, newest attempt and
    canonical metric rows)."""
    from ablator.analysis.reader import Context, read_trial

    exp = experiment or {}
    metric_spec = exp.get("metric")
    metric = metric_spec.get("name") if isinstance(metric_spec, dict) else None
    ablation = (exp.get("design") or {}).get("kind") == "ablation"
    median = int(statistics.median(finished_steps)) if finished_steps else None

    def one(st: TrialState) -> RunningTrial:
        data = read_trial(store, st.index, Context(ablation=ablation))
        row = data.row
        line = RunningTrial(
            index=st.index,
            variant=row.get("variant"),
            epoch=st.epoch,
            holder=st.holder,
            host=row.get("host"),
            metric=metric,
        )
        config = {k[len("config.") :]: v for k, v in row.items() if k.startswith("config.")}
        nested: dict[str, Any] = {}
        for path, v in config.items():
            node = nested
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        line.total = _known_total(nested)
        if line.total is None and median is not None:
            line.total, line.total_estimated = median, True
        tip = row.get("epoch")
        rows = lineage.canonical_rows(store, st.index, tip) if tip is not None else []
        if rows:
            line.step = rows[-1].step
            if metric is not None:
                vals = [r.values[metric] for r in rows if metric in r.values]
                line.value = _clean(vals[-1]) if vals else None
            mine = [r for r in rows if r.time > 0]
            # The pace of the newest attempt only: rows of earlier attempts count from their own start.
            tail = mine[-min(len(mine), 50) :]
            if len(tail) >= 2 and tail[-1].time > tail[0].time and tail[-1].step > tail[0].step:
                line.rate = (tail[-1].step - tail[0].step) / (tail[-1].time - tail[0].time)
            if line.rate and line.total is not None:
                line.eta_s = max(0.0, (line.total - line.step) / line.rate)
        return line

    running = [st for st in states if st.status == "running"]
    # One trial's reads are a few round trips on S3: the running trials in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(running)))) as pool:
        return list(pool.map(one, running))


__all__ = ["RunningTrial", "running_trials"]
