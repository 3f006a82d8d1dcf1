"""One trial's page: its config and the diff from the baseline, its attempts and takeovers on a
time line, its log tail and tracebacks, its checkpoints.

The table row and the canonical history come from the dashboard's newest
:class:`~ablator.analysis.Results`; the records only this page needs (claims, attempts, failures,
releases, the result, logs, the checkpoint listing) are read here, through the read-only store
handle, with keys from :mod:`ablator.layout` and lineage from :mod:`ablator.lineage`.
Times on the time line are the writers' own wall clocks (``records.Record.wall_time``): for
display only, as everywhere in ablator.
"""

from __future__ import annotations

import math
import time
from typing import Any

import polars as pl

from ablator import layout, lineage, records
from ablator.analysis import Results
from ablator.analysis.effects import format_level
from ablator.analysis.reader import flatten
from ablator.errors import AnalysisError
from ablator.lease.state import scan
from ablator.store import Store

#: Bytes of a log shown (its tail).
LOG_TAIL = 64 * 1024

_TYPES: dict[str, type[records.Record]] = {
    "claim": records.Claim,
    "attempt": records.Attempt,
    "release": records.Release,
    "failed": records.Failure,
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def config_of(res: Results, row: dict[str, Any]) -> dict[str, Any]:
    """A trial's resolved config, flattened (``model.dropout`` -> value), from its table row."""
    return {path: row.get(col) for path, col in res.config_columns.items() if row.get(col) is not None}


def _row(res: Results, index: int) -> dict[str, Any] | None:
    rows = res.trials.filter(pl.col("index") == index).to_dicts()
    return rows[0] if rows else None


def reference(res: Results, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What the trial is compared with: in an ablation the baseline trial of the same repeat (or
    any baseline trial), else the experiment's base config."""
    if res.design.get("kind") == "ablation" and row.get("variant") != "baseline":
        base = res.trials.filter(pl.col("variant") == "baseline")
        same = base.filter(pl.col("repeat") == row.get("repeat")) if row.get("repeat") is not None else base
        pick = (same if same.height else base).head(1).to_dicts()
        if pick:
            return f"baseline trial #{pick[0]['index']}", config_of(res, pick[0])
    return "the experiment's base config", flatten(res.experiment.get("config") or {})


def config_diff(res: Results, row: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Paths whose value differs from the reference, plus every override the trial's spec
    names (an override may equal the base value: it is still what the trial set)."""
    label, ref = reference(res, row)
    mine = config_of(res, row)
    ref_is_base = label.startswith("the experiment")
    paths = set(overrides)
    for path, value in mine.items():
        if (path in ref and ref[path] != value) or (path not in ref and not ref_is_base):
            paths.add(path)
    diff = [
        {
            "path": p,
            "reference": _jsonable(ref.get(p)),
            "value": _jsonable(mine.get(p, overrides.get(p))),
            "override": p in overrides,
        }
        for p in sorted(paths)
    ]
    return {"reference": label, "rows": diff}


def trial_detail(store: Store, res: Results, index: int, *, log_epoch: int | None = None) -> dict[str, Any]:
    """Everything the trial page shows (see the module docstring)."""
    row = _row(res, index)
    if row is None:
        raise AnalysisError(
            f"no trial {index} in {res.url}: it has {res.trials.height} trial(s), indexes 0 to {res.trials.height - 1}"
        )
    entries = store.list(layout.trial_dir(index))
    prefix = layout.trial_dir(index)
    recs: dict[str, dict[int, Any]] = {k: {} for k in _TYPES}
    result: records.Result | None = None
    metric_chunks: dict[int, list[int]] = {}
    ckpts: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    for e in entries:
        tail = e.key[len(prefix) :]
        if tail == layout.basename(layout.result(index)):
            result = records.read(store, e.key, records.Result)
            continue
        parsed = layout.parse_record(tail)
        if parsed is not None:
            # None when it is torn or over the size limit (or was deleted since it was listed)
            recs[parsed[0]][parsed[1]] = records.read(store, e.key, _TYPES[parsed[0]])
            continue
        name = layout.basename(e.key)
        es = layout.parse_epoch_step(name)
        if e.key.startswith(layout.metrics_dir(index)) and es is not None:
            metric_chunks.setdefault(es[0], []).append(es[1])
        elif e.key.startswith(layout.ckpt_dir(index)) and es is not None:
            ckpts.append({"epoch": es[0], "step": es[1], "size": e.size, "key": e.key})
        else:
            sizes[e.key] = e.size

    claims: dict[int, records.Claim | None] = recs["claim"]
    attempts: dict[int, records.Attempt | None] = recs["attempt"]
    releases: dict[int, records.Release | None] = recs["release"]
    failures: dict[int, records.Failure | None] = recs["failed"]
    first = claims.get(0)
    spec = first.spec if first is not None else None
    overrides = flatten(spec.overrides) if spec is not None else {}

    # The canonical lineage: the result's attempt, else the newest attempt's (provisional).
    tip = result.epoch if result is not None else (max(attempts) if attempts else None)
    bounds = dict(lineage.segments(store, index, tip)) if tip is not None else {}
    for c in ckpts:
        bound = bounds.get(c["epoch"], -1) if c["epoch"] in bounds else -1
        c["canonical"] = c["epoch"] in bounds and (bound is None or c["step"] <= bound)
    ckpts.sort(key=lambda c: (c["epoch"], c["step"]))

    epochs = sorted(set(claims) | set(attempts) | set(releases) | set(failures))
    logs = {ep: sizes[layout.log(index, ep)] for ep in epochs if layout.log(index, ep) in sizes}
    now = time.time()
    timeline = []
    # Which epoch ended how, and which one was a takeover: from the listing, by the one trial-state
    # classifier's rules (lease/state.py), as status and analysis count them. The records read
    # above only add what the page shows (times, kinds, reasons); a listed but unreadable one
    # still says how its epoch ended.
    history = scan(index, entries).records
    for ep in epochs:
        claim, att, rel, fail = claims.get(ep), attempts.get(ep), releases.get(ep), failures.get(ep)
        start = next((r.wall_time for r in (claim, att) if r is not None), None)
        outcome, end, why = "running", None, ""
        if result is not None and result.epoch == ep:
            outcome, end, why = result.status, result.wall_time, result.message
        elif ep in history.failures:
            outcome, end, why = (
                (f"failed ({fail.kind})", fail.wall_time, fail.message.strip().split("\n")[0])
                if fail is not None
                else ("failed", None, "its failure record is unreadable")
            )
        elif ep in history.releases:
            outcome, end, why = (
                ("released", rel.wall_time, rel.reason)
                if rel is not None
                else ("released", None, "its release record is unreadable")
            )
        elif history.took_over(ep + 1):
            nxt = claims.get(ep + 1)
            outcome, end, why = (
                "taken over",
                nxt.wall_time if nxt is not None else None,
                "its holder vanished",
            )
        elif row.get("status") != "running":
            outcome = str(row.get("status"))
        takeover = history.took_over(ep)
        env = att.environment if att is not None else None
        timeline.append(
            {
                "epoch": ep,
                "agent_id": (
                    claim.agent_id if claim is not None else att.agent_id if att is not None else None
                ),
                "host": (
                    env.host if env is not None and env.host else claim.host if claim is not None else None
                ),
                "gpu": env.gpu if env is not None else None,
                "start": start,
                "end": end if end is not None else (now if outcome == "running" else None),
                "outcome": outcome,
                "why": why,
                "takeover": takeover,
                "resumed_from": list(att.resumed_from) if att is not None and att.resumed_from else None,
                "canonical": ep in bounds,
                "metric_chunks": len(metric_chunks.get(ep, [])),
                "last_step": max(metric_chunks[ep]) if metric_chunks.get(ep) else None,
            }
        )

    failures_out = [
        {"epoch": ep, "kind": f.kind, "message": f.message, "traceback": f.traceback, "step": f.step}
        for ep, f in sorted(failures.items())
        if f is not None
    ]
    log_info: dict[str, Any] = {"epochs": sorted(logs), "epoch": None, "text": "", "truncated": False}
    if logs:
        ep = log_epoch if log_epoch in logs else max(logs)
        data = lineage.stored_log(store, index, ep)
        log_info.update(
            epoch=ep,
            size=len(data),
            truncated=len(data) > LOG_TAIL,
            text=data[-LOG_TAIL:].decode("utf-8", "replace"),
        )

    hist = res.history.filter(pl.col("trial") == index)
    curves: dict[str, dict[str, list[Any]]] = {}
    for (name,), part in hist.group_by("metric", maintain_order=True):
        part = part.sort("step")
        curves[str(name)] = {"steps": part["step"].to_list(), "values": _jsonable(part["value"].to_list())}

    return {
        "index": index,
        "row": _jsonable({k: v for k, v in row.items() if not k.startswith("config.")}),
        "config": _jsonable(config_of(res, row)),
        "overrides": _jsonable(overrides),
        "diff": config_diff(res, row, overrides),
        "spec": None
        if spec is None
        else {
            "seed": spec.seed,
            "variant": spec.variant,
            "repeat": spec.repeat,
            "config_hash": spec.config_hash,
        },
        "result": None
        if result is None
        else _jsonable(
            {
                "status": result.status,
                "epoch": result.epoch,
                "metrics": result.metrics,
                "best": result.best,
                "best_step": result.best_step,
                "steps": result.steps,
                "duration_s": result.duration_s,
                "message": result.message,
                "lineage": [list(x) for x in result.lineage],
            }
        ),
        "timeline": timeline,
        "failures": failures_out,
        "log": log_info,
        "checkpoints": ckpts,
        "curves": curves,
        "metric": res.metric,
        "levels": {k: format_level(v) for k, v in overrides.items()},
    }


__all__ = ["config_diff", "config_of", "reference", "trial_detail"]
