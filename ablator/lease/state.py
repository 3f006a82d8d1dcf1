"""Trial state: what a trial's records say about it (docs/protocol.md "Trial states").

:func:`read_trial` reads a trial's records from the store; shared by the claimer, ``ablator
status``, the operations (``retry --failed``, ``gc``) and analysis.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, get_args

from ablator import layout, records
from ablator.lease.limits import LeaseLimits
from ablator.store.base import Entry, Store

# --- the vocabulary ----------------------------------------------------------------------------

#: Every state a trial can be in, in the order ``ablator status`` prints them. The one list:
#: status, the operations and analysis use these names (analysis shows a done trial by its
#: result's status, ``records.ResultStatus``, instead of "done").
TrialStatus = Literal[
    "pending", "running", "done", "failed", "retryable", "released", "orphaned", "needs_repair"
]
TRIAL_STATUSES: tuple[TrialStatus, ...] = get_args(TrialStatus)
#: States in which a trial may be claimed (a takeover creates ``claim.e<epoch + 1>``).
TAKEABLE: frozenset[TrialStatus] = frozenset({"released", "orphaned"})
#: States that never change by themselves (``retry --failed`` can reopen "failed").
TERMINAL: frozenset[TrialStatus] = frozenset({"done", "failed", "needs_repair"})

#: What is known of ``result.msgpack``: absent; listed but not read (claimers only need to know
#: that one exists); read and valid; listed but unreadable or corrupt.
ResultState = Literal["absent", "listed", "valid", "corrupt"]


# --- the classifier: records in, one state out -------------------------------------------------


@dataclass(frozen=True)
class TrialRecords:
    """What a trial's folder holds: the epochs of each record kind, what is known of its result,
    and the kind of the newest claimed epoch's failure (None when that epoch did not fail, or its
    record is unreadable). Build one from a listing with :func:`scan`."""

    claims: frozenset[int] = frozenset()
    attempts: frozenset[int] = frozenset()
    releases: frozenset[int] = frozenset()
    failures: frozenset[int] = frozenset()
    result: ResultState = "absent"
    top_failure: records.FailureKind | None = None

    @property
    def top(self) -> int | None:
        """The highest claimed epoch (takeovers create epoch + 1, so epochs are consecutive)."""
        return max(self.claims) if self.claims else None

    @property
    def open_epoch(self) -> int | None:
        """The top epoch when its claim is the trial's last word (no result, and that epoch
        neither failed nor was released): it is running or orphaned, as its holder's liveness
        says; None otherwise."""
        top = self.top
        if self.result != "absent" or top is None or top in self.failures or top in self.releases:
            return None
        return top

    def counted_failures(self, forgiven: int = -1) -> int:
        """Failed attempts that count against ``max_attempts``: those after ``forgiven`` (the
        highest epoch an operator's ``retry --failed`` forgave)."""
        return sum(1 for e in self.failures if e > forgiven and e in self.claims)

    def took_over(self, epoch: int) -> bool:
        """Whether claimed ``epoch`` started because its predecessor vanished (epoch - 1 neither
        failed nor let go): a takeover. Epoch 0, and an epoch never claimed, is none."""
        return (
            epoch >= 1
            and epoch in self.claims
            and (epoch - 1) not in self.failures
            and (epoch - 1) not in self.releases
        )

    def takeovers(self, forgiven: int = -1) -> int:
        """Epochs after ``forgiven`` that started because their predecessor vanished
        (:meth:`took_over`). ``forgiven=-1``: every takeover in the trial's history."""
        return sum(1 for e in self.claims if e - 1 > forgiven and self.took_over(e))


@dataclass(frozen=True)
class Verdict:
    """What :func:`classify` says. ``epoch``: the top claimed epoch (None when pending);
    ``failures``/``takeovers``: counted since the last forgiveness; ``failure``: the kind of the
    top epoch's failure when the trial is ``failed`` or ``retryable`` (None when unreadable)."""

    status: TrialStatus
    epoch: int | None
    failures: int
    takeovers: int
    failure: records.FailureKind | None = None


def classify(recs: TrialRecords, *, max_attempts: int, forgiven: int = -1, orphaned: bool = False) -> Verdict:
    """A trial's state from its records (docs/protocol.md "Trial state"); pure. ``forgiven``: the
    highest epoch whose failure an operator's ``retry --failed`` forgave (-1: none); ``orphaned``:
    the observer's verdict on the holder of :attr:`TrialRecords.open_epoch` (only looked at when
    there is one; readers that do not judge liveness pass False and see "running").

    Order: a result -> done (listed or valid) or needs_repair (corrupt: never treated as absent,
    that could make a second result); no claim -> pending; the top epoch failed -> retryable when
    an operator forgave it, failed when its kind is "lost" (a trial that killed every holder) or
    the counted failures reached ``max_attempts``, else retryable; released -> released; else
    orphaned or running.
    """
    top = recs.top
    failures = recs.counted_failures(forgiven)
    takeovers = recs.takeovers(forgiven)

    def verdict(status: TrialStatus, failure: records.FailureKind | None = None) -> Verdict:
        return Verdict(status=status, epoch=top, failures=failures, takeovers=takeovers, failure=failure)

    if recs.result == "corrupt":
        return verdict("needs_repair")
    if recs.result != "absent":
        return verdict("done")
    if top is None:
        return verdict("pending")
    if top in recs.failures:
        kind = recs.top_failure
        if top <= forgiven:
            return verdict("retryable", kind)
        if kind == "lost" or failures >= max_attempts:
            return verdict("failed", kind)
        return verdict("retryable", kind)
    if top in recs.releases:
        return verdict("released")
    return verdict("orphaned" if orphaned else "running")


@dataclass(frozen=True)
class Listing:
    """A trial's records as listed (:func:`scan`): the epochs of each kind and the entries of
    its claims and result (their modification times matter to ``status``)."""

    records: TrialRecords
    claim_entries: Mapping[int, Entry]
    result_entry: Entry | None


def scan(index: int, entries: Iterable[Entry]) -> Listing:
    """Sort the keys of trial ``index`` (a listing of its folder, or of ``trials/``) into record
    kinds by epoch. Keys of other trials and of its sub-folders (metrics, checkpoints, logs) are
    ignored."""
    prefix = layout.trial_dir(index)
    result_key = layout.result(index)
    kinds: dict[str, set[int]] = {"claim": set(), "attempt": set(), "release": set(), "failed": set()}
    claim_entries: dict[int, Entry] = {}
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
        kinds[kind].add(ep)
        if kind == "claim":
            claim_entries[ep] = e
    recs = TrialRecords(
        claims=frozenset(kinds["claim"]),
        attempts=frozenset(kinds["attempt"]),
        releases=frozenset(kinds["release"]),
        failures=frozenset(kinds["failed"]),
        result="absent" if result_entry is None else "listed",
    )
    return Listing(recs, claim_entries, result_entry)


# --- reading a trial from the store ------------------------------------------------------------


@dataclass(frozen=True)
class TrialState:
    """A trial's state, derived from its records only (docs/protocol.md "Trial state").

    ``epoch``: the highest claimed epoch (None when pending); ``holder``: that claim's agent (None
    when unknown or corrupt, or not read); ``failures``: failed attempts not forgiven by
    ``retry``; ``takeovers``: epochs that started because the previous holder vanished (since
    the last forgiveness); ``problems``: corrupt records, by key.
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
    judge: Judge | None,
    limits: LeaseLimits,
    forgiven: int = -1,
    validate_result: bool = False,
) -> TrialState:
    """The state of trial ``index``: reads what :func:`classify` needs and asks it. ``entries``:
    its keys (from a listing of ``trials/`` or of its own folder); listed here when None.
    ``judge``: whether an open claim is orphaned (None: nobody's liveness is judged here, an
    open claim is running). ``forgiven``: the highest epoch whose failure a ``retry`` record
    forgave. ``validate_result``: decode ``result.msgpack`` (``status`` does; claimers only need
    to know that one exists). Corrupt records are reported with a
    :class:`~ablator.records.CorruptRecordWarning` and listed in ``problems``.
    """
    if entries is None:
        entries = store.list(layout.trial_dir(index))
    listing = scan(index, entries)
    recs = listing.records
    problems: list[str] = []
    result: records.Result | None = None
    if recs.result == "listed" and validate_result:
        key = layout.result(index)
        result = records.read(store, key, records.Result)
        if result is None:
            problems.append(key)  # listed but unreadable or corrupt: never "absent"
        recs = replace(recs, result="corrupt" if result is None else "valid")
    failure: records.Failure | None = None
    top = recs.top
    if recs.result == "absent" and top is not None and top in recs.failures:
        key = layout.failed(index, top)
        failure = records.read(store, key, records.Failure)
        if failure is None:
            problems.append(key)
        else:
            recs = replace(recs, top_failure=failure.kind)
    holder: str | None = None
    orphaned = False
    open_epoch = recs.open_epoch
    if open_epoch is not None:
        key = layout.claim(index, open_epoch)
        claim = records.read(store, key, records.Claim)
        if claim is None:
            problems.append(key)  # a corrupt claim: holder unknown, taken over after a lease
        else:
            holder = claim.agent_id
        if judge is not None:
            orphaned = judge(index, open_epoch, holder, listing.claim_entries[open_epoch])
    v = classify(recs, max_attempts=limits.max_attempts, forgiven=forgiven, orphaned=orphaned)
    return TrialState(
        index=index,
        status=v.status,
        epoch=v.epoch,
        holder=holder,
        failures=v.failures,
        takeovers=v.takeovers,
        result=result,
        last_failure=failure,
        claim_entry=None if open_epoch is None else listing.claim_entries[open_epoch],
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class Budget:
    """What the budget records say (docs/failures.md "Mistaken and hostile inputs").

    ``trials``: the launched budget ``base`` plus every readable extension (a correction subtracts; never
    below the launched budget), an unreadable extension counting as what a later extension
    settled it at (:attr:`records.Extension.settles`), else as 0. ``unreadable``: keys of
    extension records that do not decode and that no later extension settled: their size is
    unknown, so agents start no trial past ``trials`` until an operator settles them (``launch
    --extend N``) or restores them.
    """

    trials: int
    unreadable: tuple[str, ...] = ()
    #: the extensions' sum (negative after a correction that took back more than was added)
    extended: int = 0


def unreadable_extension_message(key: str, trials: int) -> str:
    """What a reader says about an unreadable extension record ``key`` (``trials``: the budget
    without it): what it means, and the two remedies."""
    return (
        f"{key}: an extension of the budget that does not decode, so its number of trials is unknown; "
        f"no trial past {trials:,} (the budget without it) is started until it is settled. Restore the file "
        "from a backup, or run `python -m ablator launch EXPERIMENT_FILE --store URL --extend N`: the new "
        "extension counts the unreadable one as the trials already started beyond the rest of the budget, "
        "and adds N"
    )


def budget_of(store: Store, base: int, cache: dict[str, records.Extension | None] | None = None) -> Budget:
    """The budget: ``base`` plus the extensions (``extend/<k>.msgpack``). ``cache`` (key ->
    record, None when it does not decode) spares re-reading extensions already seen (they are
    create-once); an unreadable one is warned about (a
    :class:`~ablator.records.CorruptRecordWarning` naming it and the remedy) when first read."""
    cache = {} if cache is None else cache
    fresh: list[str] = []
    for e in store.list(layout.EXTEND_DIR):
        if e.key in cache:
            continue
        try:
            data = store.get(e.key)
            if data is None:
                continue  # listed, then gone (a store copied while it changed): not seen yet
            cache[e.key] = records.decode(data, records.Extension, e.key)
        except records.CorruptRecordError:  # torn, or over the size limit (RecordTooLarge)
            cache[e.key] = None
            fresh.append(e.key)
    readable = sorted((ext for ext in cache.values() if ext is not None), key=lambda ext: ext.k)
    settled: dict[str, int] = {}
    for ext in readable:  # the first extension that settles a record decides (two racing operators)
        for k, n in ext.settles.items():
            settled.setdefault(layout.extension(k), n)
    total = sum(ext.trials for ext in readable)
    total += sum(n for key, n in settled.items() if cache.get(key, 0) is None)
    unreadable = tuple(sorted(key for key, ext in cache.items() if ext is None and key not in settled))
    # A negative extension is an operator's correction (``launch --extend -N``); it never takes
    # the budget below the launched one.
    trials = max(base, base + total)
    for key in fresh:
        if key in unreadable:
            warnings.warn(
                unreadable_extension_message(key, trials), records.CorruptRecordWarning, stacklevel=2
            )
    return Budget(trials=trials, unreadable=unreadable, extended=total)


def read_budget(store: Store, base: int, cache: dict[str, records.Extension | None] | None = None) -> int:
    """``base`` plus every budget extension: :attr:`Budget.trials` of :func:`budget_of`."""
    return budget_of(store, base, cache).trials


def read_forgiven(store: Store, cache: dict[str, records.Retry | None] | None = None) -> dict[int, int]:
    """trial -> highest epoch whose failure an operator's ``retry`` forgave."""
    cache = {} if cache is None else cache
    for e in store.list(layout.RETRY_DIR):
        if e.key not in cache:
            cache[e.key] = records.read(store, e.key, records.Retry)
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
