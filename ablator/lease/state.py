"""Trial state: what a trial's records say about it (docs/protocol.md "Trial states").

:func:`read_trial` reads a trial's records from the store; shared by the claimer, ``ablator
status``, the operations (``retry --failed``, ``gc``) and analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ablator import layout, records
from ablator.lease.limits import LeaseLimits
from ablator.store.base import Entry, Store

# --- trial state -------------------------------------------------------------------------------

TrialStatus = Literal[
    "pending", "running", "done", "needs_repair", "failed", "retryable", "released", "orphaned"
]
#: States in which a trial may be claimed (a takeover creates ``claim.e<epoch + 1>``).
TAKEABLE: frozenset[str] = frozenset({"released", "orphaned"})
#: States that never change by themselves (``retry --failed`` can reopen "failed").
TERMINAL: frozenset[str] = frozenset({"done", "failed", "needs_repair"})


@dataclass(frozen=True)
class TrialState:
    """A trial's state, derived from its records only (docs/protocol.md "Trial state").

    ``epoch``: the highest claimed epoch (None when pending); ``holder``: that claim's agent (None
    when unknown or corrupt); ``failures``: failed attempts not forgiven by ``retry``;
    ``takeovers``: epochs that started because the previous holder vanished; ``problems``: corrupt
    records, by key.
    """

    index: int
    status: TrialStatus
    epoch: int | None = None
    holder: str | None = None
    failures: int = 0
    takeovers: int = 0
    result: records.Result | None = None
    last_failure: records.Failure | None = None
    claim_entry: Entry | None = None
    problems: tuple[str, ...] = ()


#: ``judge(trial, epoch, holder or None, claim entry) -> orphaned?``
Judge = Callable[[int, int, "str | None", Entry], bool]


def read_trial(
    store: Store,
    index: int,
    entries: Iterable[Entry] | None = None,
    *,
    judge: Judge,
    limits: LeaseLimits,
    forgiven: int = -1,
    validate_result: bool = False,
) -> TrialState:
    """The state of trial ``index``. ``entries``: its keys (from a listing of ``trials/`` or of
    its own folder); listed here when None. ``forgiven``: the highest epoch whose failure a
    ``retry`` record forgave. ``validate_result``: decode ``result.msgpack`` (``status`` does;
    claimers only need to know that one exists).

    Order: a result -> done (a corrupt one -> needs_repair, never absent); else the highest epoch
    e: ``failed.e`` -> retryable while failures < max_attempts (a "lost" failure is final), else
    failed; ``release.e`` -> released; ``claim.e`` -> orphaned if ``judge`` says so, else running.
    Corrupt records are reported with a :class:`~ablator.records.CorruptRecordWarning`.
    """
    if entries is None:
        entries = store.list(layout.trial_dir(index))
    prefix = layout.trial_dir(index)
    result_key = layout.result(index)
    claims: dict[int, Entry] = {}
    failed: set[int] = set()
    released: set[int] = set()
    result_entry: Entry | None = None
    for e in entries:
        if not e.key.startswith(prefix) or "/" in e.key[len(prefix) :]:
            continue  # metrics/, ckpt/, logs/ (or a stray key)
        if e.key == result_key:
            result_entry = e
            continue
        parsed = layout.parse_record(e.key[len(prefix) :])
        if parsed is None:
            continue
        kind, ep = parsed
        if kind == "claim":
            claims[ep] = e
        elif kind == "failed":
            failed.add(ep)
        elif kind == "release":
            released.add(ep)

    problems: list[str] = []
    top = max(claims) if claims else None
    n_failures = sum(1 for x in failed if x > forgiven and x in claims)
    takeovers = sum(
        1 for x in claims if x >= 1 and x - 1 > forgiven and (x - 1) not in failed and (x - 1) not in released
    )

    def state(status: TrialStatus, **kw: Any) -> TrialState:
        return TrialState(
            index=index, status=status, epoch=top, failures=n_failures, takeovers=takeovers, **kw
        )

    if result_entry is not None:
        if not validate_result:
            return state("done")
        data = store.get(result_key)
        res = None if data is None else records.try_decode(data, records.Result, result_key)
        if res is None:
            # Listed but unreadable or corrupt: never "absent" (that could make a second result).
            return state("needs_repair", problems=(result_key,))
        return state("done", result=res)

    if top is None:
        return state("pending")

    if top in failed:
        fkey = layout.failed(index, top)
        data = store.get(fkey)
        failure = None if data is None else records.try_decode(data, records.Failure, fkey)
        if failure is None:
            problems.append(fkey)
        if top <= forgiven:
            status: TrialStatus = "retryable"
        elif failure is not None and failure.kind == "lost":
            status = "failed"  # a trial that killed every holder: final until an operator retries it
        elif n_failures >= limits.max_attempts:
            status = "failed"
        else:
            status = "retryable"
        return state(status, last_failure=failure, problems=tuple(problems))

    if top in released:
        return state("released")

    ckey = layout.claim(index, top)
    data = store.get(ckey)
    claim = None if data is None else records.try_decode(data, records.Claim, ckey)
    holder = None
    if claim is None:
        problems.append(ckey)  # a corrupt claim: holder unknown, taken over after a lease
    else:
        holder = claim.agent_id
    orphaned = judge(index, top, holder, claims[top])
    return state(
        "orphaned" if orphaned else "running",
        holder=holder,
        claim_entry=claims[top],
        problems=tuple(problems),
    )


def read_budget(store: Store, base: int, cache: dict[str, int] | None = None) -> int:
    """``base`` plus every budget extension (``extend/<k>.msgpack``). ``cache`` (key -> trials)
    spares re-reading extensions already seen (they are create-once). A corrupt extension is
    reported and counted as 0; a negative one (a correction) subtracts."""
    cache = {} if cache is None else cache
    for e in store.list(layout.EXTEND_DIR):
        if e.key in cache:
            continue
        data = store.get(e.key)
        ext = None if data is None else records.try_decode(data, records.Extension, e.key)
        cache[e.key] = ext.trials if ext is not None else 0
    # A negative extension is an operator's correction (``launch --extend -N``); it never takes
    # the budget below the launched one.
    return max(base, base + sum(cache.values()))


def read_forgiven(store: Store, cache: dict[str, records.Retry | None] | None = None) -> dict[int, int]:
    """trial -> highest epoch whose failure an operator's ``retry`` forgave."""
    cache = {} if cache is None else cache
    for e in store.list(layout.RETRY_DIR):
        if e.key not in cache:
            data = store.get(e.key)
            cache[e.key] = None if data is None else records.try_decode(data, records.Retry, e.key)
    out: dict[int, int] = {}
    for rec in cache.values():
        if rec is None:
            continue
        for t, ep in rec.epochs.items():
            out[int(t)] = max(out.get(int(t), -1), int(ep))
    return out


def group_by_trial(entries: Iterable[Entry]) -> dict[int, list[Entry]]:
    """Entries of a recursive listing of ``trials/``, by trial index."""
    out: dict[int, list[Entry]] = {}
    for e in entries:
        t = layout.parse_trial(e.key)
        if t is not None:
            out.setdefault(t, []).append(e)
    return out
