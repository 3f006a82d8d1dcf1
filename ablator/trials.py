"""``ablator trials STORE`` (one line per trial) and ``ablator logs STORE TRIAL`` (a trial's logs
and tracebacks), and the running-trial lines of ``ablator status``.

Nothing here decides a trial's state: the state is the one :func:`ablator.lease.read_trial`
gives (judged on the store's clock by :func:`ablator.status.collect_trials`), and everything else
a line shows (variant, parameters, metric, attempts, takeovers, host, errors) is what
:func:`ablator.analysis.load` reads. Read-only: the store is opened with ``read_only=True``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import msgspec
import polars as pl

from ablator import layout, records
from ablator.errors import AblatorError, StoreError
from ablator.lease import TERMINAL
from ablator.lineage import stored_log
from ablator.spec import decode_spec
from ablator.store import Store, open_store

#: Seconds between two polls of ``logs --follow`` and ``status --watch``'s default.
FOLLOW_INTERVAL_S = 1.0


class TrialLine(msgspec.Struct, kw_only=True):
    """One trial as ``ablator trials`` shows it (``--json`` prints a list of these).

    ``state``: the trial-state classifier's state (docs/protocol.md "Trial states"); ``status``:
    the result's status for a done trial (completed, early_stopped, diverged, pruned), else the
    state. ``value``: the trial's best value of ``metric`` (a running trial: its latest so far).
    ``errors``: every attempt's error in one line, the first attempt's first (the root cause).
    """

    index: int
    state: str
    status: str
    variant: str | None = None
    params: dict[str, Any] = {}
    metric: str | None = None
    value: float | None = None
    steps: int | None = None
    attempts: int = 0
    failures: int = 0
    takeovers: int = 0
    host: str | None = None
    holder: str | None = None
    errors: str | None = None


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def trial_lines(store: Store, *, url: str | None = None) -> list[TrialLine]:
    """Every trial of the store, its state from the trial-state classifier, the rest from
    :func:`ablator.analysis.load`."""
    from ablator.analysis import load
    from ablator.analysis.effects import factors_of
    from ablator.status import collect_trials

    res = load(store)
    _, states = collect_trials(store, url=url)
    by_index = {st.index: st for st in states}
    metric = res.metric or None
    factors = [f for f in factors_of(res) if f.column != "variant"]
    best = f"best.{metric}" if metric else None
    latest: dict[int, float] = {}
    if metric:
        running = res.trials.filter(pl.col("status") == "running")["index"]
        hist = res.history.filter(pl.col("trial").is_in(running.implode()) & (pl.col("metric") == metric))
        for t, v in hist.sort("trial", "step").group_by("trial").agg(pl.col("value").last()).iter_rows():
            latest[int(t)] = float(v)
    out: list[TrialLine] = []
    for row in res.trials.to_dicts():
        i = int(row["index"])
        st = by_index.get(i)
        state = st.status if st is not None else "pending"
        status = str(row["status"]) if state == "done" and row.get("status") else state
        value = row.get(best) if best and best in row else None
        if value is None and i in latest:
            value = latest[i]
        out.append(
            TrialLine(
                index=i,
                state=state,
                status=status,
                variant=row.get("variant"),
                params={f.name: row.get(f.column) for f in factors if row.get(f.column) is not None},
                metric=metric,
                value=_clean(value),
                steps=row.get("steps"),
                attempts=int(row.get("attempts") or 0),
                failures=int(row.get("failures") or 0),
                takeovers=int(row.get("takeovers") or 0),
                host=row.get("host"),
                holder=st.holder if st is not None else None,
                errors=row.get("error"),
            )
        )
    return out


def matches(line: TrialLine, wanted: set[str]) -> bool:
    """``--state``: a state of the classifier (done, running, failed, ...) or a result status."""
    return line.state in wanted or line.status in wanted


def render_lines(lines: list[TrialLine]) -> str:
    """The table ``ablator trials`` prints."""
    from ablator.analysis import text
    from ablator.analysis.effects import format_level

    metric = next((ln.metric for ln in lines if ln.metric), None)
    headers = ["trial", "state", "variant / parameters", metric or "value", "steps", "attempts", "takeovers"]
    headers += ["host", "error (first attempt first)"]
    rows = []
    for ln in lines:
        what = ln.variant or ", ".join(f"{k}={format_level(v)}" for k, v in ln.params.items()) or text.DASH
        value = text.num(ln.value) if ln.value is not None else text.DASH
        if ln.state == "running" and ln.value is not None:
            value += " (so far)"
        rows.append(
            [
                str(ln.index),
                ln.status,
                what,
                value,
                str(ln.steps) if ln.steps is not None else text.DASH,
                str(ln.attempts),
                str(ln.takeovers),
                ln.host or text.DASH,
                (ln.errors or "").replace("\n", " ")[:160] or text.DASH,
            ]
        )
    return text.table(headers, rows, indent="")


def _open(url: str) -> Store:
    store = open_store(url, read_only=True)
    if store.get(layout.EXPERIMENT) is None and store.get(layout.PRIVATE_EXPERIMENT) is None:
        raise StoreError(
            f"{url}: no experiment here (no {layout.EXPERIMENT}); give the store URL that "
            "`ablator launch` or `ablator run` wrote"
        )
    return store


def cli_trials(args: argparse.Namespace) -> int:
    """``ablator trials STORE [--state S]... [--json]``."""
    store = _open(args.store)
    lines = trial_lines(store, url=store.url)
    if args.state:
        wanted = {s.strip() for arg in args.state for s in arg.split(",") if s.strip()}
        lines = [ln for ln in lines if matches(ln, wanted)]
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(lines), indent=2).decode() + "\n")
    elif not lines:
        print("no trials" + (f" in state {', '.join(args.state)}" if args.state else ""))
    else:
        print(render_lines(lines))
    return 0


# --- logs ------------------------------------------------------------------------------------


def _records(store: Store, index: int) -> tuple[dict[str, dict[int, Any]], bool, set[int]]:
    """(kind -> epoch -> record, whether a result exists, epochs with a log)."""
    types: dict[str, type[records.Record]] = {
        "claim": records.Claim,
        "attempt": records.Attempt,
        "failed": records.Failure,
        "release": records.Release,
    }
    out: dict[str, dict[int, Any]] = {k: {} for k in types}
    prefix = layout.trial_dir(index)
    has_result = False
    logs: set[int] = set()
    for e in store.list(prefix):
        tail = e.key[len(prefix) :]
        if e.key == layout.result(index):
            has_result = True
            continue
        parsed = layout.parse_record(tail)
        if parsed is not None and parsed[0] in types:
            out[parsed[0]][parsed[1]] = records.read(store, e.key, types[parsed[0]])
            continue
        ep = layout.parse_log(index, e.key)
        if ep is not None:
            logs.add(ep)
    return out, has_result, logs


def _header(index: int, ep: int, recs: dict[str, dict[int, Any]], has_result: bool, newest: int) -> str:
    claim, att = recs["claim"].get(ep), recs["attempt"].get(ep)
    fail, rel = recs["failed"].get(ep), recs["release"].get(ep)
    who = claim.agent_id if claim is not None else att.agent_id if att is not None else "?"
    host = att.environment.host if att is not None and att.environment.host else (claim.host if claim else "")
    if fail is not None:
        how = f"failed ({fail.kind})" + (f" at step {fail.step}" if fail.step is not None else "")
    elif rel is not None:
        how = "released" + (f": {rel.reason}" if rel.reason else "")
    elif ep < newest:
        how = "taken over (its holder vanished)"
    elif has_result:
        how = "finished (result written)"
    else:
        how = "running or not yet judged"
    resumed = (
        f", resumed from epoch {att.resumed_from[0]} step {att.resumed_from[1]}"
        if att and att.resumed_from
        else ""
    )
    return (
        f"== trial {index} attempt {ep + 1} (epoch {ep}) by {who}"
        + (f" on {host}" if host else "")
        + f": {how}{resumed} =="
    )


def _no_log(ep: int, recs: dict[str, dict[int, Any]], has_result: bool, newest: int) -> str:
    """What an attempt without a stored log means. The agent stores a log only when the worker
    wrote something (an empty one is never saved), so an attempt that ran and ended without a
    log printed nothing."""
    ran = ep in recs["attempt"]
    ended = ep in recs["failed"] or ep in recs["release"] or ep < newest or has_result
    if ran and ended:
        return "(the trial wrote nothing to stdout/stderr)"
    if ran:
        return "(the trial has written nothing to stdout/stderr yet)"
    if ended:
        return "(no log: this attempt ended before its trial started)"
    return "(no log yet: this attempt has not started its trial)"


def _budget(store: Store) -> int | None:
    """The experiment's number of trials (extensions included), when the store records it."""
    from ablator.lease import read_budget

    spec = _spec(store)
    if spec is None or spec.budget is None:
        return None
    return read_budget(store, spec.budget)


def _print_failure(fail: records.Failure, log: str, out: Any) -> None:
    """The failure record's message, and its traceback unless the log already shows it (the
    worker prints a trial's traceback to its stderr, which is the log)."""
    print(f"-- error ({fail.kind}): {fail.message.strip()}", file=out)
    tb = fail.traceback.strip()
    if tb and tb not in log:
        print(tb, file=out)


def show_logs(store: Store, index: int, *, attempt: int | None = None, out: Any = None) -> int:
    """Print trial ``index``'s attempts (or only ``attempt``, numbered from 1): each one's
    header, its log, and its failure's message and traceback. Returns the newest epoch shown."""
    out = out or sys.stdout
    recs, has_result, logs = _records(store, index)
    epochs = sorted(set().union(*(set(v) for v in recs.values())) | logs)
    if not epochs:
        budget = _budget(store)
        if budget is not None and not 0 <= index < budget:
            raise AblatorError(
                f"{store.url} has no trial {index}: the experiment has trials 0..{budget - 1} "
                f"(see `ablator trials {store.url}`)"
            )
        raise AblatorError(
            f"trial {index} of {store.url} has not started: no claim, attempt or log "
            f"(see `ablator trials {store.url}`)"
        )
    if attempt is not None:
        if attempt - 1 not in epochs:
            raise AblatorError(
                f"trial {index} has no attempt {attempt}: its attempts are "
                f"{', '.join(str(e + 1) for e in epochs)} (--attempt counts from 1)"
            )
        epochs = [attempt - 1]
    newest = max(set().union(*(set(v) for v in recs.values())) | logs)
    for ep in epochs:
        print(_header(index, ep, recs, has_result, newest), file=out)
        data = stored_log(store, index, ep)
        text = data.decode("utf-8", "replace") if data else ""
        if text:
            out.write(text if text.endswith("\n") else text + "\n")
        else:
            print(_no_log(ep, recs, has_result, newest), file=out)
        fail = recs["failed"].get(ep)
        if fail is not None:
            _print_failure(fail, text, out)
    out.flush()
    return epochs[-1]


def follow(store: Store, index: int, *, interval: float = FOLLOW_INTERVAL_S, out: Any = None) -> None:
    """Print each attempt's log as it grows, then its error, until the trial is done or failed
    for good (``TERMINAL``); Ctrl-C stops it. A log is stored as a whole file that grows (the
    agent replaces it periodically), so only the bytes not yet printed are written."""
    from ablator.lease import read_trial
    from ablator.status import limits_of

    out = out or sys.stdout
    limits = limits_of(_spec(store))
    printed: dict[int, int] = {}
    headers: dict[int, str] = {}
    errors_shown: set[int] = set()
    while True:
        # Judged before this pass reads the records, so the pass that ends the loop prints
        # everything the terminal state was reached with (the last log bytes, the outcome).
        # Never "orphaned" here: a follower waits for a takeover rather than judging holders.
        state = read_trial(store, index, judge=None, limits=limits)
        recs, has_result, logs = _records(store, index)
        epochs = sorted(set().union(*(set(v) for v in recs.values())) | logs)
        for ep in epochs:
            # the plain command's header (holder, host, outcome); printed again after the
            # attempt's log when its outcome changes (it ends, or it is taken over)
            header = _header(index, ep, recs, has_result, epochs[-1])
            if ep not in headers:
                print(header, file=out)
                headers[ep] = header
            data = stored_log(store, index, ep) if ep in logs else b""
            start = printed.get(ep, 0)
            if len(data) > start:
                out.write(data[start:].decode("utf-8", "replace"))
                printed[ep] = len(data)
            fail = recs["failed"].get(ep)
            if fail is not None and ep not in errors_shown:
                _print_failure(fail, data.decode("utf-8", "replace"), out)
                errors_shown.add(ep)
            if headers[ep] != header:  # after its log: how the attempt ended
                print(header, file=out)
                headers[ep] = header
        out.flush()
        if state.status in TERMINAL:
            print(f"== trial {index} is {state.status} ==", file=out)
            out.flush()
            return
        time.sleep(interval)


def _spec(store: Store) -> records.ExperimentSpec | None:
    data = store.get(layout.EXPERIMENT)
    if data is None:
        return None
    try:
        return decode_spec(data, layout.EXPERIMENT)
    except AblatorError:
        return None


def cli_logs(args: argparse.Namespace) -> int:
    """``ablator logs STORE TRIAL [--attempt N] [--follow]``."""
    store = _open(args.store)
    if args.follow:
        follow(store, args.trial)
    else:
        show_logs(store, args.trial, attempt=args.attempt)
    return 0


__all__ = [
    "TrialLine",
    "cli_logs",
    "cli_trials",
    "follow",
    "matches",
    "render_lines",
    "show_logs",
    "trial_lines",
]
