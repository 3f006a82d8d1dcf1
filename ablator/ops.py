"""Operating an experiment: ``launch`` (with a code snapshot), ``stop``, ``retry --failed``, ``gc``.

Everything here talks to the store only through create-if-absent records, so it is safe while
agents run: ``launch`` creates ``experiment.json`` once, ``--extend N`` creates one
:class:`~ablator.records.Extension`, ``stop`` creates ``control/stop.msgpack``, ``retry``
creates one :class:`~ablator.records.Retry`. Nothing is rewritten; ``gc`` deletes only
checkpoints that no attempt can resume from any more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ablator import __version__, codesnap, layout, records
from ablator.errors import AblatorError, ConfigError, ExperimentMismatch, ExperimentTampered
from ablator.spec import checked_experiment, read_spec, stored_diff

if TYPE_CHECKING:
    import argparse

    from ablator.experiment import Experiment
    from ablator.lease import LeaseLimits, TrialState
    from ablator.store.base import Store

log = logging.getLogger(__name__)


# --- launch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchResult:
    """What :func:`launch` did. ``created``: this call created the experiment; ``extension``:
    the number of the extension record it wrote (``--extend``); ``budget``: trials now, with
    every extension."""

    spec: records.ExperimentSpec
    created: bool
    budget: int
    extension: int | None = None
    message: str = ""


@contextlib.contextmanager
def _on_path(directory: str | None) -> Iterator[None]:
    """Import from ``directory`` first for the duration (validating against the snapshot's code)."""
    if directory is None:
        yield
        return
    path = str(Path(directory).resolve())
    sys.path.insert(0, path)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(path)


def _spec_diff(old: records.ExperimentSpec, new: records.ExperimentSpec) -> list[str]:
    lines = stored_diff(old.experiment, new.experiment)
    if old.code_sha256 != new.code_sha256:
        lines.append(f"  code snapshot: {old.code_sha256 or '(none)'} -> {new.code_sha256 or '(none)'}")
    return lines


def _read_experiment(
    store: Store, wanted: records.ExperimentSpec | None = None
) -> records.ExperimentSpec | None:
    """The launched experiment, verified against its hash; an edited one is refused, with what
    differs from ``wanted`` (the experiment being launched) when given."""
    spec = read_spec(store, verify=False)
    if spec is None:
        return None
    try:
        checked_experiment(spec, f"{store.url}/{layout.EXPERIMENT}")
    except ExperimentTampered as exc:
        if wanted is None:
            raise
        lines = stored_diff(spec.experiment, wanted.experiment)
        raise ExperimentTampered(
            f"{exc}\nwhat the stored file says -> what your experiment file says:\n"
            + "\n".join(lines or ["  (the same content: only the stored experiment_hash was changed)"])
        ) from None
    return spec


def launch(
    experiment_file_or_obj: str | os.PathLike[str] | Experiment,
    store: str | os.PathLike[str] | Store,
    *,
    extend: int | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
) -> LaunchResult:
    """Validate an experiment (everything ``plan`` checks) and create it in ``store``.

    Create-if-absent: launching the same experiment (and code) again is a no-op that says so; a
    different experiment in the same store raises :class:`ExperimentMismatch` with the diff.
    ``extend=N`` adds N trials to the budget with a create-once extension record (the
    experiment must match). ``code_dir``: snapshot that folder (respecting .gitignore) into
    ``code/<sha256>.zip``; every agent checks the hash, unpacks it and imports from it first.
    Write access to a store means running code on every agent that serves it.

    >>> ablator.launch("examples/digits/experiment.yaml", "runs/digits")   # doctest: +SKIP
    """
    from ablator import experiment as X
    from ablator.planning import plan
    from ablator.store import open_store

    if extend is not None:
        _check_extend(extend)
    snap = codesnap.snapshot_code(code_dir) if code_dir is not None else None
    code_root = os.fspath(code_dir) if code_dir is not None else None
    with _on_path(code_root):
        if isinstance(experiment_file_or_obj, X.Experiment):
            if overrides:
                raise ConfigError(
                    "launch(): overrides apply to an experiment file; change the Experiment instead"
                )
            exp = experiment_file_or_obj
        else:
            exp = X.load_experiment(experiment_file_or_obj, overrides)
        # plan's checks: the entry point, the base config, the space or ablations, and the
        # configs of the first trials (the whole plan of a small experiment).
        p = plan(exp, limit=1000)
    if snap is not None and code_dir is not None:
        _check_snapshot(snap, code_dir, exp.entry)
    st = open_store(store, force=force)
    spec = records.ExperimentSpec(
        name=exp.name,
        experiment=msgspec.to_builtins(exp),
        experiment_hash=X.experiment_hash(exp),
        code_sha256=snap.sha256 if snap else None,
        code_git_commit=snap.git_commit if snap else None,
        ablator_version=__version__,
        budget=p.budget,
    )
    existing = _read_experiment(st, spec)
    if existing is None and st.list_dirs(layout.TRIALS_DIR):
        # Trials without an experiment: a private `ablator run` store (or a damaged one). Their
        # results came from configs this launch knows nothing about; mixing them in would count
        # them as this experiment's trials.
        raise ExperimentMismatch(
            f"{st.url} holds trials but no {layout.EXPERIMENT} (a private `ablator run` store?); "
            "launch into a new store"
        )
    if existing is not None and existing.experiment_hash == spec.experiment_hash:
        # Already launched. The experiment pins its code snapshot for good (every agent must run
        # the same code), so a changed --code folder cannot change it: say so, upload nothing.
        if snap is not None and existing.code_sha256 != snap.sha256:
            note = (
                f"the code in {code_root} differs from the snapshot this experiment pinned "
                f"({(existing.code_sha256 or 'none')[:12]} vs {snap.sha256[:12]}); agents keep running the "
                "launched snapshot. To run changed code, launch into a new store"
            )
            if extend is None:
                raise ExperimentMismatch(f"{st.url} already holds experiment {existing.name!r}: {note}")
            log.warning("%s", note)
        if snap is not None and existing.code_sha256 == snap.sha256:
            # the same code: upload it again where the store lost it or holds a corrupt copy (the
            # remedy agents name); create-once, so an intact snapshot is left as it is
            codesnap.upload(st, snap)
        snap = None
        spec = msgspec.structs.replace(
            spec, code_sha256=existing.code_sha256, code_git_commit=existing.code_git_commit
        )
    settles: dict[int, int] = {}
    if extend is not None:  # before anything is written: a wrong budget cannot be taken back
        settles = _check_extended_budget(st, existing, p.budget, extend)
    if snap is not None:
        codesnap.upload(st, snap)
    created = st.create(layout.EXPERIMENT, records.encode_json(spec), durable=True)
    if created:
        message = f"launched experiment {exp.name!r} in {st.url}: {p.budget} trials"
        if snap is not None:
            message += f"; code snapshot {snap.sha256[:12]} ({len(snap.files)} files)"
            if snap.special:
                shown = ", ".join(f"{rel} ({kind})" for rel, kind in snap.special[:5])
                more = f" and {len(snap.special) - 5} more" if len(snap.special) > 5 else ""
                message += (
                    f"; left out {len(snap.special)} file(s) that are not regular files: {shown}{more} "
                    "(a snapshot holds files; exclude them in .gitignore to silence this)"
                )
    else:
        old = _read_experiment(st, spec)
        if old is None:
            raise AblatorError(f"{st.url}/{layout.EXPERIMENT} vanished while launching; launch again")
        if old.experiment_hash != spec.experiment_hash or old.code_sha256 != spec.code_sha256:
            lines = _spec_diff(old, spec)
            raise ExperimentMismatch(
                f"{st.url} already holds experiment {old.name!r}, which differs from this one:\n"
                + "\n".join(lines or ["  (the experiments hash differently)"])
                + "\nlaunch into a new store (or, to add trials to the running one, --extend N with its file)"
            )
        spec = old
        message = f"experiment {exp.name!r} is already launched in {st.url} (same experiment): nothing to do"
    from ablator.lease import read_budget

    base = spec.budget if spec.budget is not None else p.budget
    extension = None
    if extend is not None:
        extension = _create_extension(st, extend, settles)
        if created:
            message = f"{message}; extended by {extend} trial(s)"
        elif extend > 0:
            message = (
                f"extended experiment {exp.name!r} in {st.url} by {extend} trial(s) (extension {extension})"
            )
        else:
            message = (
                f"took {-extend} trial(s) back from experiment {exp.name!r} in {st.url} (extension {extension}, "
                "a correction)"
            )
        if settles:
            message += "; " + "; ".join(
                f"the unreadable {layout.extension(k)} now counts as {n} trial(s) (the trials started beyond the "
                "rest of the budget; if it added more, add them with --extend)"
                for k, n in sorted(settles.items())
            )
    return LaunchResult(
        spec=spec, created=created, budget=read_budget(st, base), extension=extension, message=message
    )


def _check_snapshot(snap: codesnap.Snapshot, code_dir: str | os.PathLike[str], entry: str) -> None:
    """Agents run only what the snapshot holds: refuse links it cannot carry, and an entry
    point that imported from the folder but is missing from the snapshot."""
    where = os.fspath(code_dir)
    if snap.skipped:
        shown = ", ".join(f"{s} -> {os.path.realpath(os.path.join(where, s))}" for s in snap.skipped[:5])
        more = f" and {len(snap.skipped) - 5} more" if len(snap.skipped) > 5 else ""
        raise ConfigError(
            f"--code {where}: {len(snap.skipped)} symbolic link(s) point outside the folder ({shown}{more}); "
            "agents on other machines would not have their targets. Copy what they point to into the folder, "
            "or exclude the links in .gitignore; nothing was written"
        )
    why = codesnap.entry_missing(snap, code_dir, entry.split(":", 1)[0].strip())
    if why is not None:
        raise ConfigError(
            f"--code {where}: {why}; agents import from the snapshot alone and would fail with 'no module "
            "named ...'. Make the module a regular file in the folder; nothing was written"
        )


def _check_extend(extend: object) -> None:
    from ablator.experiment import MAX_TRIALS

    if isinstance(extend, bool) or not isinstance(extend, int):
        raise ConfigError(f"--extend {extend!r}: expected a whole number of trials, e.g. --extend 10")
    if extend == 0:
        raise ConfigError(
            "--extend 0: the number of trials to add must be at least 1 (or -N to take back a wrong extension)"
        )
    if abs(extend) > MAX_TRIALS:
        raise ConfigError(
            f"--extend {extend:,}: at most {MAX_TRIALS:,} trials (a larger budget is almost surely a typo); "
            "nothing was written"
        )


def _check_extended_budget(
    st: Store, existing: records.ExperimentSpec | None, planned: int, extend: int
) -> dict[int, int]:
    """Refuse an extension that would take the budget above ``MAX_TRIALS``, or a correction
    (``extend < 0``) that would drop trials already started or go below the launched budget.

    Returns what the new extension settles (:attr:`records.Extension.settles`): each unreadable
    extension record, whose size is lost, counts as the trials already started beyond the rest
    of the budget (the first one takes them all; it was at least that), so that ``--extend N``
    after one adds N to the budget the trials show, instead of running nothing."""
    from ablator.experiment import MAX_TRIALS
    from ablator.lease import budget_of

    base = existing.budget if existing is not None and existing.budget is not None else planned
    current = base
    settles: dict[int, int] = {}
    started = 0
    if existing is not None:
        started = max(layout.trial_indexes(st.list_dirs(layout.TRIALS_DIR)), default=-1) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", records.CorruptRecordWarning)  # settled below, and said so
            budget = budget_of(st, base)
        current = budget.trials
        for i, key in enumerate(budget.unreadable):
            k = layout.parse_extension(key)
            if k is not None:
                settles[k] = max(0, started - current) if i == 0 else 0
        current += sum(settles.values())
    new = current + extend
    if extend > 0 and new > MAX_TRIALS:
        raise ConfigError(
            f"--extend {extend:,}: the budget would be {new:,} trials, more than {MAX_TRIALS:,} (almost "
            "surely a typo); nothing was written"
        )
    if extend < 0:
        if existing is None:
            raise ConfigError(
                f"--extend {extend}: nothing launched in {st.url} yet; there is no extension to take back"
            )
        floor = max(base, started)
        if new < floor:
            raise ConfigError(
                f"--extend {extend}: the budget is {current:,} trials; a correction may take back extensions "
                f"down to {floor:,} (the launched budget of {base:,} and the {started:,} trial(s) already "
                "started), "
                + (
                    f"so at most --extend -{current - floor}"
                    if current > floor
                    else "so nothing can be taken back"
                )
                + "; nothing was written"
            )
    return settles


def _next_number(store: Store, folder: str) -> int:
    n = -1
    for e in store.list(folder):
        stem = layout.basename(e.key).split(".", 1)[0]
        if stem.isdigit():
            n = max(n, int(stem))
    return n + 1


def _create_extension(store: Store, trials: int, settles: dict[int, int] | None = None) -> int:
    k = _next_number(store, layout.EXTEND_DIR)
    record = records.Extension(k=0, trials=trials, settles=dict(settles or {}))
    while True:  # create-once, numbered: two operators extending at once both count
        if store.create(
            layout.extension(k), records.encode(msgspec.structs.replace(record, k=k)), durable=True
        ):
            return k
        k += 1


def cli_launch(args: argparse.Namespace) -> int:
    """``python -m ablator launch EXPERIMENT --store URL [--extend N] [--code DIR] [--set k=v]``."""
    result = launch(
        args.experiment,
        args.store,
        extend=args.extend,
        code_dir=args.code,
        overrides=list(args.overrides or ()),
        force=bool(args.force),
    )
    print(result.message)
    print(f"budget: {result.budget} trials. Start agents with: python -m ablator.agent {args.store}")
    return 0


# --- stop, retry -----------------------------------------------------------------------------


def stop(store: str | os.PathLike[str] | Store, reason: str = "") -> bool:
    """Ask every agent of the experiment to checkpoint and release (or finish) its trials and
    exit: creates ``control/stop.msgpack``. False when it was stopped already. Agents started
    later exit at once; :func:`resume` removes the record."""
    from ablator.store import open_store

    st = open_store(store)
    if _read_experiment(st) is None:
        raise AblatorError(f"no experiment in {st.url}")
    return st.create(layout.STOP, records.encode(records.Stop(reason=reason)), durable=True)


def resume(store: str | os.PathLike[str] | Store) -> bool:
    """Remove the stop record, so that agents run the experiment again. False when there was
    none."""
    from ablator.store import open_store

    st = open_store(store)
    if not st.exists(layout.STOP):
        return False
    st.delete(layout.STOP)
    return True


def cli_stop(args: argparse.Namespace) -> int:
    """``python -m ablator stop STORE [--reason TEXT]``."""
    if args.undo:
        done = resume(args.store)
        print(
            "stop record removed: agents may run the experiment again"
            if done
            else "the experiment was not stopped"
        )
        return 0
    if stop(args.store, args.reason):
        print(f"stop requested: agents checkpoint and release their trials, then exit ({args.store})")
    else:
        print(f"the experiment in {args.store} was already stopped")
    return 0


def _limits(spec: records.ExperimentSpec) -> LeaseLimits:
    from ablator.lease import LeaseLimits

    return LeaseLimits.from_mapping(spec.experiment.get("limits"), source=layout.EXPERIMENT)


def trial_states(
    store: Store, spec: records.ExperimentSpec, trials: Sequence[int] | None = None
) -> dict[int, TrialState]:
    """Each trial's state from its records, as ``retry --failed`` and ``gc`` see it (the one
    classifier of :mod:`ablator.lease.state`; open claims count as running: nobody's liveness
    is judged here). ``trials``: only these (default: every trial folder)."""
    from ablator.lease import group_by_trial, read_forgiven, read_trial

    limits = _limits(spec)
    forgiven = read_forgiven(store)
    grouped = group_by_trial(store.list(layout.TRIALS_DIR))
    wanted = sorted(grouped) if trials is None else sorted(set(trials))
    return {
        i: read_trial(
            store,
            i,
            grouped.get(i, []),
            judge=None,
            limits=limits,
            forgiven=forgiven.get(i, -1),
            validate_result=True,
        )
        for i in wanted
    }


def retry_failed(
    store: str | os.PathLike[str] | Store, trials: Sequence[int] | None = None
) -> records.Retry | None:
    """Make failed trials retryable again (e.g. after a bug fix): a create-once
    :class:`~ablator.records.Retry` record forgives every failure recorded so far, so their
    attempt count starts again; the failure records stay. ``trials``: only these. None when no
    trial had failed. Agents pick the trials up at their next sweep (``--watch`` agents, or
    agents started afterwards)."""
    from ablator.store import open_store

    st = open_store(store)
    spec = _read_experiment(st)
    if spec is None:
        raise AblatorError(f"no experiment in {st.url}")
    states = trial_states(st, spec, trials)
    if trials is not None:
        unknown = [t for t in trials if states[t].status == "pending"]
        if unknown:
            raise AblatorError(f"trial(s) {unknown} of {st.url} have not run yet; nothing to retry")
    epochs = {i: s.epoch for i, s in states.items() if s.status == "failed" and s.epoch is not None}
    if not epochs:
        return None
    k = _next_number(st, layout.RETRY_DIR)
    while True:
        rec = records.Retry(k=k, epochs=epochs)
        if st.create(layout.retry(k), records.encode(rec), durable=True):
            return rec
        k += 1


def cli_retry(args: argparse.Namespace) -> int:
    """``python -m ablator retry STORE --failed [--trial N ...]``."""
    rec = retry_failed(args.store, args.trial)
    if rec is None:
        print("no failed trials: nothing to retry")
        return 0
    shown = ", ".join(str(t) for t in sorted(rec.epochs)[:20]) + (" ..." if len(rec.epochs) > 20 else "")
    print(
        f"{len(rec.epochs)} failed trial(s) are retryable again ({shown}); running agents started with --watch "
        f"pick them up, or start agents: python -m ablator.agent {args.store}"
    )
    return 0


# --- gc ----------------------------------------------------------------------------------------


@dataclass
class GcReport:
    """What :func:`gc` deleted (or would delete, with ``dry_run``) and kept."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def gc(store: str | os.PathLike[str] | Store, *, dry_run: bool = False) -> GcReport:
    """After the experiment is done, delete checkpoints nobody needs: each trial with a result
    keeps the newest checkpoint of its canonical lineage and the one at its best step; a failed
    trial keeps the checkpoint a retry would resume from. Refused while any trial may still run
    (a running or resumable trial may need any checkpoint of its lineage).

    ``retry --failed`` may reopen a failed trial while gc runs, and an agent may then resume it.
    So each trial is decided at the moment of deleting, by the holder's own rules: only
    checkpoints of epochs up to the one judged final are ever deleted (a later attempt's are
    its own), and a trial whose state changed since (a retry forgave it, a new claim exists) is
    left alone; a failed trial always keeps the checkpoint a retry resumes from."""
    from ablator import lineage
    from ablator.lease import TERMINAL, read_budget
    from ablator.store import open_store

    st = open_store(store)
    spec = _read_experiment(st)
    if spec is None:
        raise AblatorError(f"no experiment in {st.url}")
    states = trial_states(st, spec)
    budget = read_budget(st, spec.budget or 0) if spec.budget is not None else None
    open_trials = sorted(i for i, s in states.items() if s.status not in TERMINAL)
    missing = [] if budget is None else [i for i in range(budget) if i not in states]
    if open_trials or missing:
        n = len(open_trials) + len(missing)
        raise AblatorError(
            f"gc {st.url}: the experiment is not done ({n} trial(s) running, resumable or not started); "
            "gc deletes checkpoints that those trials may resume from. Run it once `ablator status` says done"
        )
    report = GcReport()
    retries: dict[str, records.Retry | None] = {}
    for i, s in states.items():
        entries = st.list(layout.ckpt_dir(i))
        if not entries:
            continue
        by_key = {e.key: e for e in entries}
        keep: set[str] = set()
        if s.status == "needs_repair":
            report.kept.extend(by_key)  # an unreadable result: keep everything, decide nothing
            continue
        res = s.result  # decoded by read_trial(validate_result=True) when done
        if s.status == "done" and res is not None:
            bounds = dict(lineage.segments(st, i, res.epoch))
            canonical: list[tuple[int, int, str]] = []
            for key in by_key:
                parsed = layout.parse_epoch_step(layout.basename(key))
                if parsed is None:
                    keep.add(key)
                    continue
                ep, step = parsed
                if ep not in bounds:
                    continue
                bound = bounds[ep]
                if bound is None or step <= bound:
                    canonical.append((step, ep, key))
            if canonical:
                keep.add(max(canonical)[2])
                if res.best_step is not None:
                    keep.update(key for step, _, key in canonical if step == res.best_step)
        else:
            top = (s.epoch or 0) + 1
            candidates = lineage.checkpoint_candidates(st, i, top)
            if candidates:
                keep.add(candidates[0][2])
        for key in by_key:
            parsed = layout.parse_epoch_step(layout.basename(key))
            if parsed is not None and s.epoch is not None and parsed[0] > s.epoch:
                keep.add(key)  # a later attempt's (a retry that started since): never ours to judge
        if any(key not in keep for key in by_key) and not _still_final(st, spec, i, s, retries):
            report.kept.extend(by_key)  # reopened or claimed since it was judged: decide nothing
            continue
        for key, e in by_key.items():
            if key in keep:
                report.kept.append(key)
                continue
            report.deleted.append(key)
            report.freed_bytes += e.size
            if not dry_run:
                st.delete(key)
    return report


def _still_final(
    st: Store, spec: records.ExperimentSpec, i: int, judged: Any, retries: dict[str, records.Retry | None]
) -> bool:
    """Whether trial ``i`` is still in the final state ``judged`` (same status, same epoch), read
    again now (its own folder, and the retry records: ``retries`` caches those already read),
    right before gc deletes any of its checkpoints."""
    from ablator.lease import TERMINAL, read_forgiven, read_trial

    forgiven = read_forgiven(st, retries)
    now = read_trial(st, i, judge=None, limits=_limits(spec), forgiven=forgiven.get(i, -1))
    return now.status in TERMINAL and now.status == judged.status and now.epoch == judged.epoch


def cli_gc(args: argparse.Namespace) -> int:
    """``python -m ablator gc STORE [--dry-run]``."""
    report = gc(args.store, dry_run=bool(args.dry_run))
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {len(report.deleted)} checkpoint(s) ({report.freed_bytes / 2**20:.1f} MiB); "
        f"kept {len(report.kept)} (best and last of each trial)"
    )
    if args.dry_run:
        for key in report.deleted:
            print(f"  {key}")
    return 0


__all__ = [
    "GcReport",
    "LaunchResult",
    "cli_gc",
    "cli_launch",
    "cli_retry",
    "cli_stop",
    "gc",
    "launch",
    "resume",
    "retry_failed",
    "stop",
    "trial_states",
]
