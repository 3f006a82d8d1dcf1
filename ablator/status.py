"""``python -m ablator status STORE [--json] [--check]``: what a store's experiment is doing.

Trial counts by state, every agent (live or dead) with its host, GPUs, held trials and heartbeat
age, and progress. Works from any machine that can read the store; it writes nothing but a tiny
clock probe (and, with ``--check``, the self-test's scratch keys), both deleted again.

A one-shot reader cannot time heartbeats on its own clock the way agents do (it looks once), so
it judges ages by the *store's* clock: a heartbeat's modification time against that of a probe
key it writes itself. Wall clocks of other machines are never used. Where the probe cannot be
written (a read-only store), ages are "unknown" and claimed trials count as running.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from ablator import layout, records
from ablator.agent.devices import gpu_fits, gpus_out_of_service, memory_summary
from ablator.errors import AblatorError, CorruptRecordError, ExperimentTampered, StoreError
from ablator.lease import (
    TRIAL_STATUSES,
    LeaseLimits,
    TrialState,
    group_by_trial,
    read_budget,
    read_forgiven,
    read_trial,
)
from ablator.running import RunningTrial, running_trials
from ablator.spec import read_spec, verify_hash
from ablator.store import Capabilities, Store, open_store
from ablator.store.base import Entry, RecordTooLarge
from ablator.store.clock import probe_now, slack

#: State names in the order they are printed (the one vocabulary of ``ablator.lease.state``).
STATES = TRIAL_STATUSES


class AgentStatus(msgspec.Struct, kw_only=True):
    """One agent as ``status`` sees it. ``age_s``: seconds since its last heartbeat by the
    store's clock (None: unknown); ``live``: age within its declared lease and not exited."""

    agent_id: str
    host: str = ""
    pid: int | None = None
    state: str = "unknown"
    live: bool | None = None
    age_s: float | None = None
    lease_s: float | None = None
    heartbeat_s: float | None = None
    gpus: list[str] = []
    slots: int | None = None
    held: list[tuple[int, int]] = []
    counter: int | None = None
    corrupt: bool = False
    out_of_service: list[str] = []  # "gpu1 (GPU-...): why" for each device the agent stopped using


class Progress(msgspec.Struct, kw_only=True):
    finished: int  # done + failed for good (+ needs repair: they will not run again)
    total: int | None
    fraction: float | None


class StatusReport(msgspec.Struct, kw_only=True):
    """What ``status --json`` prints."""

    store: str
    experiment: str | None
    budget: int | None
    base_budget: int | None
    counts: dict[str, int]
    progress: Progress
    agents: list[AgentStatus]
    clock: str  # "store" or "unknown: <why>"
    needs_repair: list[int] = []
    orphaned: list[int] = []
    running: list[int] = []
    problems: list[str] = []
    check: dict[str, Any] | None = None
    waiting: list[str] = []  # why takeable trials are not running (no agent, no GPU, stopped, ...)
    warnings: list[str] = []  # e.g. agents on different torch/CUDA versions
    running_trials: list[RunningTrial] = []  # progress of each running trial


def _store_now(store: Store, url: str) -> tuple[float | None, str]:
    """The store's clock (:func:`ablator.store.clock.probe_now`), probed through a writable
    handle: ``status`` may have opened the store read-only."""
    try:
        writable = store if not store.read_only else open_store(url)
    except (AblatorError, OSError) as exc:
        return None, f"unknown: the store cannot be written from here ({exc})"
    return probe_now(writable)


def limits_of(spec: records.ExperimentSpec | None) -> LeaseLimits:
    """The experiment's lease limits (the defaults where it has none or they do not parse)."""
    if spec is not None:
        with contextlib.suppress(AblatorError):
            return LeaseLimits.from_mapping(spec.experiment.get("limits"), source=layout.EXPERIMENT)
    return LeaseLimits()


def _base_budget(spec: records.ExperimentSpec | None) -> tuple[int | None, str | None]:
    if spec is None:
        return None, "no experiment.json: budget unknown"
    if spec.budget is not None:
        return spec.budget, None
    try:
        from ablator.experiment import budget, experiment_from_dict

        return budget(experiment_from_dict(spec.experiment, source=layout.EXPERIMENT)), None
    except Exception as exc:  # the user's code may not be importable here (a grid needs its config type)
        return None, f"budget unknown: {exc}"


def collect(store: Store, *, url: str | None = None) -> StatusReport:
    """Read the store once and judge every trial and agent (see the module docstring)."""
    return collect_trials(store, url=url)[0]


def collect_trials(store: Store, *, url: str | None = None) -> tuple[StatusReport, list[TrialState]]:
    """:func:`collect`, and the state of every trial with records (by index), judged the same
    way: what ``ablator trials`` lists."""
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", records.CorruptRecordWarning)
        report, states = _collect(store, url or store.url, problems)
    for w in caught:
        msg = str(w.message)
        if msg not in problems:
            problems.append(msg)
    report.problems = problems
    return report, states


def _collect(store: Store, url: str, problems: list[str]) -> tuple[StatusReport, list[TrialState]]:
    spec: records.ExperimentSpec | None = None
    unreadable = False
    try:
        spec = read_spec(store, verify=False)
        if spec is not None:
            verify_hash(spec, layout.EXPERIMENT)
    except ExperimentTampered as exc:
        problems.append(str(exc))  # status still reports the trials; every other reader refuses
    except AblatorError as exc:
        problems.append(str(exc))
        unreadable = True
    limits = limits_of(spec)
    base, why = _base_budget(spec)
    if why and unreadable and spec is None:  # there, but unreadable (the problem above says why)
        why = f"{layout.EXPERIMENT} is unreadable: budget unknown"
    if why:
        problems.append(why)
    budget = read_budget(store, base) if base is not None else None

    now, clock = _store_now(store, url)
    # What an age leaves out: the store's timestamp resolution (a second on S3, ~0 on a disk).
    slack_s = slack(store, now)

    # agents
    agents: dict[str, AgentStatus] = {}
    beats: dict[str, records.Heartbeat] = {}
    for e in store.list(layout.AGENTS_DIR):
        agent_id = layout.parse_agent(e.key)
        if agent_id is None:
            continue
        hb = records.read(store, e.key, records.Heartbeat)
        age = None if now is None or e.mtime is None else max(0.0, now - e.mtime)
        if hb is None:
            agents[agent_id] = AgentStatus(
                agent_id=agent_id, age_s=age, corrupt=True, live=False if age is not None else None
            )
            continue
        beats[agent_id] = hb
        live: bool | None = None
        if hb.state == "exited":
            live = False
        elif age is not None:
            live = age <= hb.lease_s + slack_s
        agents[agent_id] = AgentStatus(
            agent_id=agent_id,
            host=hb.host,
            pid=hb.pid,
            state=hb.state,
            live=live,
            age_s=age,
            lease_s=hb.lease_s,
            heartbeat_s=hb.heartbeat_s,
            gpus=[g.name or f"gpu{g.index}" for g in hb.gpus],
            slots=hb.slots,
            held=[(int(t), int(ep)) for t, ep in hb.held],
            counter=hb.counter,
            out_of_service=gpus_out_of_service(hb.gpus),
        )

    def judge(trial: int, epoch: int, holder: str | None, entry: Any) -> bool:
        if now is None or entry.mtime is None:
            return False  # no clock: cannot tell; counted as running
        claim_age = now - entry.mtime - slack_s
        a = agents.get(holder) if holder is not None else None
        if a is None or a.corrupt or a.lease_s is None:
            return claim_age > limits.lease_seconds  # holder unknown
        if a.state == "exited" or a.live is False:
            return True
        if (trial, epoch) in set(a.held):
            return False
        return claim_age > a.lease_s  # claimed a lease ago and still not listed

    # trials: one recursive listing, then the reads each state needs (in parallel: S3 latency)
    grouped = group_by_trial(store.list(layout.TRIALS_DIR))
    forgiven = read_forgiven(store)

    def one(i: int) -> TrialState:
        return read_trial(
            store,
            i,
            grouped[i],
            judge=judge,
            limits=limits,
            forgiven=forgiven.get(i, -1),
            validate_result=True,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        states = list(pool.map(one, sorted(grouped)))
        # claim.e0000 holds the trial's resolved config, which analysis reads where a trial has no
        # summary. Checked only there (a done trial's summary carries its config: no extra read
        # per finished trial) and where read_trial did not read it already.
        unread = [st for st in states if _config_claim_unchecked(st, grouped[st.index])]
        problems.extend(p for p in pool.map(lambda st: _config_claim_problem(store, st.index), unread) if p)

    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    for st in states:
        counts[st.status] += 1
        for p in st.problems:
            if st.status == "needs_repair":
                problems.append(
                    f"trial {st.index}: {p} is corrupt: needs repair (it is never treated as absent)"
                )
    claimed = {st.index for st in states if st.status != "pending"}
    if budget is not None:
        # counted from the trials that exist: O(trials run), not O(budget)
        counts["pending"] += budget - sum(1 for i in grouped if i < budget)
        extra = sorted(i for i in claimed if i >= budget)
        if extra:
            problems.append(
                f"{len(extra)} trial(s) at or beyond the budget {budget}: {extra[:10]}"
                + "; the budget is taken as at least "
                f"{extra[-1] + 1}. An unreadable extension record (listed above) counts as 0 trials until "
                "it is settled: restore it from a backup, or run `python -m ablator launch EXPERIMENT_FILE "
                "--store URL --extend N` (it counts the unreadable record as the trials started beyond the "
                "rest of the budget, and adds N)"
            )
            budget = extra[-1] + 1  # trials exist up to there: the budget was at least that
    finished = counts["done"] + counts["failed"] + counts["needs_repair"]
    waiting, version_warnings = _explain(store, spec, counts, agents, beats)
    finished_steps = [st.result.steps for st in states if st.result is not None and st.result.steps]
    running_view = running_trials(
        store, states, experiment=spec.experiment if spec is not None else None, finished_steps=finished_steps
    )
    report = StatusReport(
        running_trials=running_view,
        waiting=waiting,
        warnings=version_warnings,
        store=url,
        experiment=spec.name if spec is not None else None,
        budget=budget,
        base_budget=base,
        counts=counts,
        progress=Progress(
            finished=finished,
            total=budget,
            fraction=(finished / budget if budget else None) if budget is not None else None,
        ),
        agents=sorted(agents.values(), key=lambda a: (a.live is not True, a.agent_id)),
        clock=clock,
        needs_repair=[st.index for st in states if st.status == "needs_repair"],
        orphaned=[st.index for st in states if st.status == "orphaned"],
        running=[st.index for st in states if st.status == "running"],
    )
    return report, states


def _config_claim_unchecked(st: TrialState, entries: list[Entry]) -> bool:
    """Whether ``st``'s ``claim.e0000`` is one analysis would read (the trial has no summary) and
    that :func:`read_trial` did not read (it reads the open epoch's claim, and says when it is
    corrupt)."""
    key = layout.claim(st.index, 0)
    keys = {e.key for e in entries}
    if key not in keys or layout.trial_summary(st.index) in keys:
        return False
    return not (st.claim_entry is not None and st.claim_entry.key == key)


def _config_claim_problem(store: Store, index: int) -> str | None:
    """What is wrong with trial ``index``'s ``claim.e0000``, or None when it decodes (or is gone)."""
    key = layout.claim(index, 0)
    try:
        data = store.get(key)
        if data is None:
            return None
        records.decode(data, records.Claim, key)
    except CorruptRecordError as exc:  # torn, or over the size limit (RecordTooLarge)
        return (
            f"trial {index}: {exc}: it is the trial's resolved config, and analysis cannot "
            "read the trial's config from it (a takeover's claim may carry it again; an ablation keeps the "
            "trial in its variant by its index). Restore the file from a backup or a copy of the store"
        )
    return None


def _explain(
    store: Store,
    spec: records.ExperimentSpec | None,
    counts: dict[str, int],
    agents: dict[str, AgentStatus],
    beats: dict[str, records.Heartbeat],
) -> tuple[list[str], list[str]]:
    """Why work is waiting, and warnings about the agents (added for issue 5: the agent)."""
    waiting: list[str] = []
    takeable = sum(counts[k] for k in ("pending", "retryable", "released", "orphaned"))
    live = [beats[a.agent_id] for a in agents.values() if a.live and a.agent_id in beats]
    if takeable:
        resources = spec.experiment.get("resources") if spec is not None else None
        resources = resources if isinstance(resources, dict) else {}
        need_gpu = resources.get("gpu") == "required"
        min_mb = int(resources.get("min_gpu_memory_mb") or 0)
        from ablator.experiment import MAX_TRIALS

        if spec is not None and spec.budget is not None and spec.budget > MAX_TRIALS:
            waiting.append(
                f"{takeable} trial(s) are not run: this ablator's agents refuse a budget over {MAX_TRIALS:,} "
                "trials (see the problem below)"
            )
        elif store.exists(layout.STOP):
            waiting.append(
                f"{takeable} trial(s) wait: the experiment was stopped (ablator stop); "
                "`ablator stop STORE --undo` lets agents run it again"
            )
        elif min_mb and not any(gpu_fits(g, min_mb) for hb in live for g in hb.gpus):
            waiting.append(
                f"{takeable} trial(s) need a GPU with at least {min_mb} MiB available that no live agent "
                f"has ({memory_summary([g for hb in live for g in hb.gpus])})"
            )
        elif need_gpu and not any(not g.out_of_service for hb in live for g in hb.gpus):
            broken = [w for hb in live for w in gpus_out_of_service(hb.gpus)]
            waiting.append(
                f"{takeable} trial(s) need a GPU that no live agent has"
                + (f" in service (out of service: {'; '.join(broken)})" if broken else "")
            )
        elif not live:
            waiting.append(
                f"{takeable} trial(s) wait for an agent: none is live (start one: python -m ablator.agent STORE)"
            )
        elif all(len(hb.held) >= hb.slots for hb in live):
            slots = sum(hb.slots for hb in live)
            waiting.append(
                f"{takeable} trial(s) wait for a free slot: all {slots} slot(s) of the live agents are busy"
            )
    warnings_: list[str] = []
    for name in ("torch", "cuda"):
        seen: dict[str, int] = {}
        for hb in beats.values():
            v = hb.versions.get(name)
            if v is not None:
                seen[v] = seen.get(v, 0) + 1
        if len(seen) > 1:
            shown = ", ".join(f"{v} ({n} agent{'s' if n > 1 else ''})" for v, n in sorted(seen.items()))
            warnings_.append(
                f"agents run different {name} versions: {shown}; results may not be comparable across them"
            )
    return waiting, warnings_


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "age unknown"
    if age < 120:
        return f"{age:.1f}s ago"
    if age < 7200:
        return f"{age / 60:.1f}min ago"
    return f"{age / 3600:.1f}h ago"


def render(report: StatusReport) -> str:
    """The human-readable report."""
    lines = [f"store       {report.store}"]
    if report.experiment is not None:
        lines.append(f"experiment  {report.experiment}")
    if report.budget is not None:
        ext = report.budget - (report.base_budget or 0)
        lines.append(
            f"budget      {report.budget} trials"
            + (f" ({report.base_budget} + {ext} extended)" if ext else "")
        )
    c = report.counts
    lines.append(
        "trials      "
        + "  ".join(
            f"{name.replace('_', ' ')} {c[name]}"
            for name in STATES
            if c[name] or name in ("pending", "running", "done")
        )
    )
    p = report.progress
    if p.total:
        lines.append(f"progress    {p.finished}/{p.total} finished ({100 * (p.fraction or 0):.1f}%)")
    else:
        lines.append(f"progress    {p.finished} finished (budget unknown)")
    live = sum(1 for a in report.agents if a.live)
    dead = sum(1 for a in report.agents if a.live is False)
    clock = "ages by the store's clock" if report.clock == "store" else f"liveness {report.clock}"
    lines.append(f"agents      {live} live, {dead} dead or exited, {len(report.agents)} in all ({clock})")
    shown = [a for a in report.agents if not _folded(a)]
    folded = [a for a in report.agents if _folded(a)]
    for a in shown:
        if a.corrupt:
            lines.append(f"  {a.agent_id:<36} corrupt heartbeat  {_fmt_age(a.age_s)}")
            continue
        status = (
            "live" if a.live else ("exited" if a.state == "exited" else "dead" if a.live is False else "?")
        )
        if a.state == "draining" and a.live:
            status = "draining"
        gpus = f"{len(a.gpus)} GPU ({', '.join(sorted(set(a.gpus)))})" if a.gpus else "CPU"
        lines.append(
            f"  {a.agent_id:<36} {status:<8} {a.host:<16} {gpus:<24} heartbeat {_fmt_age(a.age_s):<14} "
            + holdings(a.held, exited=a.state == "exited")
        )
        for why in a.out_of_service:
            lines.append(f"  {'':<36} out of service: {why}")
    if folded:
        hosts = sorted({a.host for a in folded if a.host})
        lines.append(
            f"  ... and {len(folded)} agent(s) exited or dead more than {FOLD_AFTER_S / 60:.0f} min ago"
            + (f" (on {', '.join(hosts[:5])}{', ...' if len(hosts) > 5 else ''})" if hosts else "")
            + ": `status --json` lists them"
        )
    if report.running_trials:
        lines.append(f"running     {len(report.running_trials)} trial(s)")
        for r in report.running_trials:
            lines.append("  " + running_line(r))
    if report.orphaned:
        lines.append(
            f"orphaned    trials {_short(report.orphaned)} (holder dead or not listing them: an agent that "
            "has watched them for a lease takes them over)"
        )
    if report.needs_repair:
        lines.append(
            f"repair      trials {_short(report.needs_repair)} (corrupt result.msgpack; never re-run "
            "automatically: see docs/failures.md, 'needs repair')"
        )
    for why in report.waiting:
        lines.append(f"waiting     {why}")
    for w in report.warnings:
        lines.append(f"warning     {w}")
    for prob in report.problems:
        lines.append(f"warning     {prob}")
    if report.check is not None:
        lines.append(f"self-test   {report.check.get('self_test')}")
        for k, v in report.check.items():
            if k not in ("self_test", "notes") and v is not None:
                lines.append(f"  {k:<14} {v}")
        for n in report.check.get("notes") or []:
            lines.append(f"  note           {n}")
    return "\n".join(lines)


#: Agents that exited or died longer ago than this are folded into one line of ``status``.
FOLD_AFTER_S = 600.0


def _folded(a: AgentStatus) -> bool:
    gone = a.state == "exited" or a.live is False
    return gone and a.age_s is not None and a.age_s > FOLD_AFTER_S


def holdings(held: list[tuple[int, int]], *, exited: bool = False) -> str:
    """``holds trial 0``, ``holds trials 0, 3 (attempt 2)``, ``holds nothing``."""
    if not held:
        return "holds nothing" if not exited else ""
    parts = [f"{t}" + (f" (attempt {e + 1})" if e else "") for t, e in held]
    return f"holds trial{'s' if len(held) > 1 else ''} " + ", ".join(parts)


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def running_line(r: RunningTrial) -> str:
    """One running trial: ``trial 3  variant no_dropout  step 120/400  score 0.81  2.0 steps/s
    ETA 2.5min  on box-1``."""
    parts = [f"trial {r.index:<5}"]
    if r.variant:
        parts.append(f"variant {r.variant}")
    if r.step is None:
        parts.append("no step reported yet")
    else:
        total = f"/{'~' if r.total_estimated else ''}{r.total}" if r.total is not None else ""
        parts.append(f"step {r.step}{total}")
    if r.metric is not None and r.value is not None:
        parts.append(f"{r.metric} {r.value:.4g}")
    if r.rate:
        parts.append(f"{r.rate:.3g} steps/s")
    if r.eta_s is not None:
        parts.append(f"ETA {'~' if r.total_estimated else ''}{_fmt_seconds(r.eta_s)}")
    if r.epoch:
        parts.append(f"attempt {r.epoch + 1}")
    where = r.host or (r.holder or "")
    if where:
        parts.append(f"on {where}")
    return "  ".join(parts)


def _short(items: list[int], n: int = 20) -> str:
    s = ", ".join(str(i) for i in items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def run_check(store: Store, url: str) -> Capabilities:
    """The store self-test (``ablator.store.self_test``), reported rather than raised."""
    from ablator.store import self_test

    target = store
    if store.read_only:
        try:
            target = open_store(url)
        except AblatorError:
            target = store  # self_test reports "not run: read-only"
    return self_test(target, raise_on_failure=False)


def cli_status(args: argparse.Namespace) -> int:
    """``ablator status STORE [--json] [--check] [--watch [SECONDS]]``: :func:`print_status`."""
    return print_status(args.store, as_json=args.json, check=args.check, watch=args.watch)


def print_status(url: str, *, as_json: bool = False, check: bool = False, watch: float | None = None) -> int:
    """Print the status report of the store at ``url`` (JSON with ``as_json``), with the store
    self-test's capabilities when ``check``; every ``watch`` seconds until Ctrl-C when given.
    Returns the exit status: 0, or 1 when ``check`` found the store untrustworthy."""
    store = open_store(url, read_only=True)
    # Reads go through a read-only handle: a mistyped local path is an error, not a new folder.
    try:
        exists = store.get(layout.EXPERIMENT) is not None or store.list_dirs("")
    except RecordTooLarge:
        exists = True  # there, but unreadable: the report lists it as a problem

    if not exists:
        raise StoreError(
            f"status {url}: no experiment here (no {layout.EXPERIMENT}, nothing stored); give the store URL that "
            "`launch` printed, or create it with `python -m ablator launch EXPERIMENT_FILE --store URL`"
        )
    while True:
        report = collect(store, url=store.url)
        ok = True
        if check:
            caps = run_check(store, url)
            report.check = msgspec.to_builtins(caps)
            ok = caps.self_test == "passed" or caps.self_test.startswith("not run")
        if as_json:
            out = msgspec.json.format(msgspec.json.encode(report), indent=2).decode()
        else:
            out = render(report)
        if watch is None:
            print(out)
            return 0 if ok else 1
        # --watch: a terminal is redrawn in place; a pipe gets one report after another (a
        # timestamped separator between them), so that a log of it reads in order.
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        else:
            sys.stdout.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} (every {watch:g}s; Ctrl-C stops)\n")
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
        time.sleep(watch)


__all__ = [
    "AgentStatus",
    "Progress",
    "StatusReport",
    "cli_status",
    "collect",
    "collect_trials",
    "holdings",
    "limits_of",
    "print_status",
    "render",
    "run_check",
    "running_line",
]
