"""A trial's lineage: which attempts' checkpoints and metric rows are canonical.

Attempt ``e`` that resumed from checkpoint ``(p, s)`` of attempt ``p`` makes ``p``'s rows and
checkpoints canonical only up to step ``s``: whatever ``p`` wrote later (a zombie that had not yet
noticed the takeover) is off the lineage. An attempt that started from scratch has no ancestors.

``segments(store, trial, e)`` -> ``[(epoch, upto_step), ...]`` from the oldest ancestor to ``e``
itself, whose bound is None (unbounded). ``chain(store, trial, e)`` is the same lineage as a
result records it: ``[(epoch, resumed_from_step), ...]``.
"""

from __future__ import annotations

from ablator import layout, records
from ablator.errors import CorruptRecordError
from ablator.store.base import Store


def read_attempt(store: Store, trial: int, epoch: int) -> records.Attempt | None:
    """Attempt ``epoch`` of ``trial``; None when absent or corrupt (warned)."""
    return records.read(store, layout.attempt(trial, epoch), records.Attempt)


def segments(store: Store, trial: int, epoch: int) -> list[tuple[int, int | None]]:
    """The lineage of attempt ``epoch``, oldest first; the last bound is None."""
    out: list[tuple[int, int | None]] = [(epoch, None)]
    seen = {epoch}
    current = epoch
    while True:
        att = read_attempt(store, trial, current)
        if att is None or att.resumed_from is None:
            break
        parent, step = att.resumed_from
        if parent in seen or parent >= current:  # a corrupt record must not loop us forever
            break
        out.append((parent, step))
        seen.add(parent)
        current = parent
    out.reverse()
    return out


def chain(store: Store, trial: int, epoch: int) -> list[tuple[int, int | None]]:
    """The lineage of attempt ``epoch`` as ``Result.lineage`` records it: ``(epoch, the step it
    resumed from)`` from the first attempt (None: from scratch) to ``epoch``."""
    segs = segments(store, trial, epoch)
    return [(segs[0][0], None)] + [(segs[k][0], segs[k - 1][1]) for k in range(1, len(segs))]


def parent_epoch(store: Store, trial: int, epoch: int) -> int | None:
    """The newest earlier attempt that got as far as writing its attempt record, or None."""
    entries = store.list(layout.trial_dir(trial))
    best: int | None = None
    for e in entries:
        parsed = layout.parse_record(layout.basename(e.key))
        if parsed and parsed[0] == "attempt" and parsed[1] < epoch and (best is None or parsed[1] > best):
            best = parsed[1]
    return best


def checkpoint_candidates(store: Store, trial: int, epoch: int) -> list[tuple[int, int, str]]:
    """Checkpoints a new attempt ``epoch`` may resume from, newest step first:
    ``[(epoch, step, key), ...]``. The parent attempt's checkpoints count in full; its ancestors'
    only up to the step their successor resumed from."""
    parent = parent_epoch(store, trial, epoch)
    if parent is None:
        return []
    bounds = dict(segments(store, trial, parent))
    out: list[tuple[int, int, str]] = []
    for e in store.list(layout.ckpt_dir(trial)):
        parsed = layout.parse_epoch_step(layout.basename(e.key))
        if parsed is None or parsed[0] not in bounds:
            continue
        ep, step = parsed
        bound = bounds[ep]
        if bound is None or step <= bound:
            out.append((ep, step, e.key))
    out.sort(key=lambda t: (t[1], t[0]), reverse=True)
    return out


def canonical_rows(store: Store, trial: int, epoch: int) -> list[records.MetricRow]:
    """The trial's metric history along the lineage of attempt ``epoch``: each ancestor's rows up
    to its successor's resume step, then the successor's. Corrupt chunks are skipped with a
    warning."""
    segs = segments(store, trial, epoch)
    bounds = dict(segs)
    by_epoch: dict[int, list[records.MetricRow]] = {ep: [] for ep, _ in segs}
    for e in store.list(layout.metrics_dir(trial)):
        parsed = layout.parse_epoch_step(layout.basename(e.key))
        if parsed is None or parsed[0] not in bounds:
            continue
        chunk = records.read(store, e.key, records.MetricsChunk)
        if chunk is not None:
            by_epoch[parsed[0]].extend(chunk.rows)
    rows: list[records.MetricRow] = []
    floor = -1  # the step the previous segment ended at: a successor continues after it
    for ep, bound in segs:
        for row in sorted(by_epoch[ep], key=lambda r: r.step):  # stable: same-step rows keep order
            if row.step > floor and (bound is None or row.step <= bound):
                rows.append(row)
        if bound is not None:
            floor = bound
    return rows


def stored_log(store: Store, index: int, epoch: int) -> bytes:
    """Trial ``index``'s log of attempt ``epoch`` (empty when there is none). A log over the
    store's size limit (never one an agent wrote: they are bounded) reads as one line saying so,
    like any unreadable record, instead of being read whole."""
    try:
        return store.get(layout.log(index, epoch)) or b""
    except CorruptRecordError as exc:
        return f"[log not shown: {exc}]\n".encode()
