"""``ablator run`` and :func:`ablator.run`: one trial in this process, the prototype path.

Two kinds of store:

* **A private store** (no ``experiment.json``; by default ``./ablator-runs/<name>``): the trial
  runs here and nowhere else. Each invocation is a new attempt (``claim.e<n>``) that resumes from
  the previous one's newest checkpoint, so Ctrl-C and running again continues where it stopped.
  A later invocation takes over from an earlier one still running (the earlier one stops at its
  next write). A trial that has a result is not run again.
* **A launched store** (``ablator launch`` created it): ``run`` claims the trial exactly as an
  agent does (store self-test, heartbeat, lease, fencing, the stall watchdog) and refuses one
  that is done or failed for good. One that is running elsewhere is never run twice: ``run``
  waits and takes it over when the claimer judges its holder dead (the agent's liveness rule),
  and gives up when a ``stop`` record appears.

``--smoke`` trains and evaluates a few batches in a throwaway in-memory store. ``--from STORE``
runs a trial of another store with the exact spec recorded there (its ``claim.e0000``).

Ctrl-C once: the trial checkpoints and stops (a release, so the next run resumes); twice: abort.

This lives next to the agent because it claims like one; :mod:`ablator.train` runs an attempt
against whatever :class:`~ablator.train.Fence` it is given and knows nothing of the claim
protocol.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar, cast

import msgspec

from ablator import layout, lineage, records
from ablator.errors import (
    AblatorError,
    ExperimentMismatch,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    TrialFailed,
    exception_text,
)
from ablator.lease import AttemptFence, Held, Membership
from ablator.pruners import pruner_of
from ablator.records import Outcome
from ablator.spec import checked_experiment, read_spec
from ablator.store import open_store
from ablator.store.base import Store
from ablator.store.retry import (
    DEFAULT_STORE_TIMEOUT,
    Outage,
    RetryingStore,
    unavailable_cause,
    wait_for_store,
)
from ablator.train.progress import ProgressLike

DEFAULT_ROOT = "ablator-runs"
T = TypeVar("T")


def run(
    experiment: str | os.PathLike[str] | Any | None = None,
    *,
    store: str | os.PathLike[str] | Store | None = None,
    trial: int | None = None,
    smoke: bool = False,
    overrides: Sequence[str] = (),
    from_store: str | os.PathLike[str] | Store | None = None,
    device: str | None = None,
    progress: ProgressLike = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
) -> Outcome:
    """Run one trial of an experiment in this process and return its :class:`Outcome`.

    >>> ablator.run("examples/digits/experiment.yaml", smoke=True)          # doctest: +SKIP
    >>> ablator.run("examples/digits/experiment.yaml", trial=3)             # ./ablator-runs/digits-ablation

    ``experiment``: a file or an :class:`ablator.experiment.Experiment`; ``trial``: the plan's
    index (default 0, the baseline); ``store``: a private or a launched store (default
    ``./ablator-runs/<name>``); ``overrides``: ``--set`` values (``config.train.epochs=2``);
    ``from_store``: take the experiment and the trial's recorded spec from that store instead.
    ``store_timeout``: seconds the store may not answer (transient errors are retried with
    back-off, as an agent does: while the trial is set up, while it trains, and for its last
    record) before run gives up; on a launched store the lease may run out first (then the
    trial is left to be taken over, never failed: docs/failures.md).
    """
    from ablator import experiment as X
    from ablator.train.execute import execute_trial

    exp, spec_recorded = _load(experiment, from_store, overrides, trial or 0, store_timeout)
    entry = X.validate(exp)
    index = trial or 0
    metric = (exp.metric.name, exp.metric.mode)
    if exp.resources.gpu == "required":
        from ablator.train.execute import resolve_device

        if device is None and resolve_device(None).type == "cpu":
            raise AblatorError(
                "the experiment's trials need a GPU ($.resources.gpu: required) and this machine has none "
                "that torch can use; run it where there is one, or pass --device cpu to train on the CPU anyway"
            )
    if smoke:
        if store is not None:
            raise AblatorError("--smoke runs in a throwaway in-memory store; drop --store")
        target = open_store(f"memory://ablator-smoke-{uuid.uuid4().hex}")
        patient = _Patience(target.url, store_timeout)
    else:
        where = store if store is not None else Path(DEFAULT_ROOT) / exp.name
        patient = _Patience(str(where), store_timeout)
        target = patient("opening the store", lambda: open_store(where))
        patient.outage.url = target.url

    # verified against its hash: an edited one is refused, not run
    launched = patient("reading the experiment", lambda: read_spec(target))
    if spec_recorded is not None:
        spec = spec_recorded
    else:
        from ablator.lease import read_budget

        budget = X.budget(exp, entry)
        # A launched experiment may have grown (--extend); a private store runs the plan as is.
        if launched is not None:
            budget = patient("reading the budget", lambda: read_budget(target, budget))
        spec = _spec(exp, index, entry, budget)
    if launched is not None:
        return _run_launched(
            exp, entry, spec, target, launched, index, metric, device, progress, smoke, patient
        )

    patient("recording the experiment", lambda: _record_private_experiment(target, exp))
    epoch, spec = patient("claiming the trial", lambda: _claim_private(target, spec, index))
    # No lease to outlive here (nobody else's heartbeat judges this run): the trial's writes wait
    # for the store until --store-timeout, as the start does.
    training = RetryingStore(target, keep_trying=lambda: True, outage=patient.outage, say=_say)
    fence = AttemptFence(training, index, epoch)
    with _ctrl_c_stops(fence):
        try:
            outcome = execute_trial(
                entry,
                spec,
                training,
                index,
                epoch,
                fence=fence,
                device=device,
                progress=progress,
                smoke=smoke,
                metric=metric,
                pruner=pruner_of(exp.design),
            )
        except LeaseLost:
            raise
        except BaseException as exc:
            gone = unavailable_cause(exc)
            if gone is not None:  # the store, not the trial: nothing to record, nothing lost
                raise StoreUnavailable(
                    f"{gone}. Trial {index} was not failed: run the same command again once the store "
                    "answers, to resume it from its last checkpoint"
                ) from exc
            _write_failure(target, index, epoch, exc, patient)
            _raise_trial_failed(exc, index, target.url, layout.failed(index, epoch))
    if outcome.status == "stopped":
        rec = records.Release(
            trial=index, epoch=epoch, agent_id=_agent_id(), reason="interrupted", step=outcome.checkpoint_step
        )
        patient(
            "writing the release", lambda: target.create(layout.release(index, epoch), records.encode(rec))
        )
    else:
        final = AttemptFence(target, index, epoch)  # on the store itself: patient() retries it

        def write_result() -> bool:
            final.check()
            result = records.Result.of(
                outcome,
                trial=index,
                epoch=epoch,
                agent_id=_agent_id(),
                lineage=lineage.chain(target, index, epoch),
            )
            return target.create(layout.result(index), records.encode(result), durable=True)

        if patient("writing the result", write_result):
            _summarize(target, index, exp, patient)
    _print_summary(exp, index, spec, target, outcome)
    return outcome


def cli_run(args: Any) -> int:
    """``python -m ablator run EXP [--store URL] [--trial N] [--smoke] [--set k=v] [--from STORE]
    [--device D] [--no-progress]``."""
    if args.experiment is None and args.from_store is None:
        raise AblatorError("run: give an experiment file, or --from STORE to rerun a trial of a store")
    outcome = run(
        args.experiment,
        store=args.store,
        trial=args.trial,
        smoke=args.smoke,
        overrides=args.overrides,
        from_store=args.from_store,
        device=args.device,
        progress="log" if args.no_progress else True,
        store_timeout=args.store_timeout,
    )
    # early stopping and divergence are outcomes, not errors; a Ctrl-C stop exits as an interrupt
    # does (130), so that a script running `ablator run` stops too
    return 130 if outcome.status == "stopped" else 0


# --- the experiment and the trial's spec ------------------------------------------------------


def _load(
    experiment: Any, from_store: Any, overrides: Sequence[str], index: int, store_timeout: float
) -> tuple[Any, records.TrialSpec | None]:
    from ablator import experiment as X

    if from_store is None:
        if experiment is None:
            raise AblatorError("run: give an experiment file (or from_store=...)")
        if isinstance(experiment, X.Experiment):
            if overrides:
                raise AblatorError("run: overrides apply to an experiment file, not to an Experiment object")
            return experiment, None
        return X.load_experiment(experiment, overrides), None
    if experiment is not None:
        raise AblatorError("run: give an experiment file or --from STORE, not both")
    if overrides:
        raise AblatorError(
            "run --from reruns a trial with the spec recorded in the store; --set does not apply"
        )
    src = open_store(from_store, read_only=True)
    patient = _Patience(src.url, store_timeout)
    # A launched store, or a private one that `ablator run` wrote (its experiment under its own key).
    where = layout.EXPERIMENT
    # verified just below, with the schema
    exp_rec = patient("reading the experiment", lambda: read_spec(src, layout.EXPERIMENT, verify=False))
    if exp_rec is None:
        where = layout.PRIVATE_EXPERIMENT
        exp_rec = patient("reading the experiment", lambda: read_spec(src, where, verify=False))
    if exp_rec is None:
        raise AblatorError(
            f"--from {src.url}: no {layout.EXPERIMENT} or {layout.PRIVATE_EXPERIMENT} there "
            "(neither a launched store nor one `ablator run` wrote): give the store URL that `launch` or `run` "
            "printed"
        )
    exp = checked_experiment(exp_rec, f"{src.url}/{where}")
    key = layout.claim(index, 0)
    data = patient("reading the trial's claim", lambda: src.get(key))
    if data is None:
        raise AblatorError(f"--from {src.url}: trial {index} was never started there ({key} is absent)")
    claim = records.decode(data, records.Claim, f"{src.url}/{key}")
    if claim.spec is None:
        raise AblatorError(f"--from {src.url}: {key} holds no trial spec")
    return exp, claim.spec


def _raise_trial_failed(exc: BaseException, index: int, url: str, key: str) -> None:
    """Re-raise ``exc`` as a :class:`TrialFailed` when it came from the user's code (the CLI
    reports that as the trial's failure, exit 1, not as a bug of ablator); ablator's own errors,
    Ctrl-C and exits pass through unchanged."""
    if isinstance(exc, AblatorError) or not isinstance(exc, Exception):
        raise exc
    traceback.print_exception(exc, file=sys.stderr)
    raise TrialFailed(
        f"trial {index} raised {exception_text(exc)} (traceback above; recorded in {url}/{key})"
    ) from exc


def _spec(exp: Any, index: int, entry: Any, budget: int | None = None) -> records.TrialSpec:
    from ablator import experiment as X

    if index < 0:
        raise AblatorError(f"--trial {index}: trial indexes start at 0")
    if budget is None:
        budget = X.budget(exp, entry)
    if index >= budget:
        raise AblatorError(
            f"--trial {index}: the experiment has {budget} trials (0 to {budget - 1}); "
            "grow a launched experiment with `ablator launch --extend N`"
        )
    if exp.design.kind == "tpe":
        if index != 0:
            raise AblatorError(
                f"--trial {index}: a tpe design chooses each trial's config from finished results (agents do); "
                "ablator run runs its base config as trial 0"
            )
        return X.spec_from_overrides(exp, 0, {}, 0, entry, variant=X.BASELINE)
    return X.trial_spec(exp, index, entry)


# --- private stores ---------------------------------------------------------------------------


def _summarize(store: Store, index: int, exp: Any, patient: _Patience) -> None:
    """The finished trial's one-file summary for analysis (``layout.trial_summary``), waiting for
    the store like every other write. The summary is derived from the records (readers fall back
    to them without it): a store that stays away for --store-timeout costs a warning, not the
    finished trial's exit status."""
    from ablator.analysis.snapshot import write_trial_summary

    ablation = exp.design.kind == "ablation"
    try:
        patient("writing the trial's summary", lambda: write_trial_summary(store, index, ablation=ablation))
    except StoreUnavailable as exc:
        _say(f"trial {index}'s summary was not written ({exc}); analysis reads its records instead")


def _record_private_experiment(store: Store, exp: Any) -> None:
    """Record the experiment in a private store once (``layout.PRIVATE_EXPERIMENT``), so that
    ``ablator analyze`` can read it; the first run's experiment stays (each trial's own spec is
    in its ``claim.e0000`` anyway)."""
    from ablator import experiment as X

    if store.url.startswith("memory://"):
        return  # --smoke: a throwaway store
    spec = records.ExperimentSpec(
        name=exp.name, experiment=msgspec.to_builtins(exp), experiment_hash=X.experiment_hash(exp)
    )
    store.create(layout.PRIVATE_EXPERIMENT, records.encode_json(spec))


def _claim_private(store: Store, spec: records.TrialSpec, index: int) -> tuple[int, records.TrialSpec]:
    """Claim the next attempt of ``index`` in a private store; refuse a done trial, or one whose
    recorded config differs from this one. Returns the epoch and the spec to run: the one the
    trial's first attempt recorded (its seed and variant as well as its config: the protocol's
    "nothing later recomputes it"), else ``spec``."""
    from ablator import config as config_mod

    first = store.get(layout.claim(index, 0))
    if first is not None:
        claim0 = records.decode(first, records.Claim, layout.claim(index, 0))
        if claim0.spec is not None and claim0.spec.config_hash == spec.config_hash:
            spec = claim0.spec
        elif claim0.spec is not None:
            changes = config_mod.diff(claim0.spec.config, spec.config)
            lines = "\n".join(f"  {p}: {a!r} (stored) -> {b!r} (now)" for p, a, b in changes)
            raise AblatorError(
                f"trial {index} in {store.url} was started with another config:\n{lines}\n"
                f"Delete {layout.trial_dir(index)} there to start over, or use another --store"
            )
    if store.exists(layout.result(index)):
        res = records.read(store, layout.result(index), records.Result)
        what = f"{res.status}, {_fmt_metrics(res.metrics)}" if res is not None else "unreadable result"
        raise AblatorError(
            f"trial {index} in {store.url} is done ({what}). To run it again, delete "
            f"{layout.trial_dir(index)} there, or use another --store"
        )
    epochs = [
        parsed[1]
        for e in store.list(layout.trial_dir(index))
        if (parsed := layout.parse_record(layout.basename(e.key))) is not None and parsed[0] == "claim"
    ]
    epoch = max(epochs) + 1 if epochs else 0
    while True:
        rec = records.Claim(
            trial=index, epoch=epoch, agent_id=_agent_id(), host=_host(), spec=spec if epoch == 0 else None
        )
        if store.create(layout.claim(index, epoch), records.encode(rec), durable=epoch == 0):
            return epoch, spec
        epoch += 1  # another run claimed it a moment ago: take over after it


def _agent_id() -> str:
    return f"run-{_host()}-{os.getpid()}"


def _host() -> str:
    import socket

    return socket.gethostname()


def _write_failure(store: Store, index: int, epoch: int, exc: BaseException, patient: _Patience) -> None:
    """Record a private store's failed attempt (a Ctrl-C abort as a release), waiting for the
    store up to --store-timeout as every other write does; a record that still cannot be
    written is given up (the trial's own error is what run reports)."""
    kind: records.FailureKind = "checkpoint" if type(exc).__name__ == "CheckpointError" else "exception"
    if isinstance(exc, KeyboardInterrupt):
        rec_r = records.Release(trial=index, epoch=epoch, agent_id=_agent_id(), reason="aborted (Ctrl-C)")
        with contextlib.suppress(Exception):
            store.create(layout.release(index, epoch), records.encode(rec_r))
        return
    rec = records.Failure(
        trial=index,
        epoch=epoch,
        agent_id=_agent_id(),
        kind=kind,
        message=exception_text(exc),
        traceback="".join(traceback.format_exception(exc)),
    )
    with contextlib.suppress(Exception):  # the original error matters more than this record
        patient(
            "writing the failure record",
            lambda: store.create(layout.failed(index, epoch), records.encode(rec), durable=True),
        )


# --- launched stores --------------------------------------------------------------------------


def _run_launched(
    exp: Any,
    entry: Any,
    spec: records.TrialSpec,
    store: Store,
    rec: records.ExperimentSpec,
    index: int,
    metric: tuple[str, str],
    device: str | None,
    progress: ProgressLike,
    smoke: bool,
    patient: _Patience,
) -> Outcome:
    from ablator import experiment as X
    from ablator import lease
    from ablator.train.execute import execute_trial

    if rec.experiment_hash != X.experiment_hash(exp):
        raise ExperimentMismatch(
            f"{store.url} holds experiment {rec.name!r} (hash {rec.experiment_hash[:12]}), not this one "
            f"({X.experiment_hash(exp)[:12]}); run with the launched experiment file, or --from {store.url}"
        )
    from ablator.store import self_test

    # as an agent does: refuses a store whose create-if-absent lets two writers win
    patient("testing the store", lambda: self_test(store))
    limits = lease.LeaseLimits.from_limits(exp.limits)
    membership = lease.Membership(store, limits)
    patient("writing the first heartbeat", membership.start)
    try:
        claimer = lease.Claimer(store, membership, budget=X.budget(exp, entry))

        def new_spec(i: int) -> records.TrialSpec:
            if exp.design.kind == "tpe":
                raise AblatorError(
                    f"trial {i} of {store.url} is not started yet, and a tpe design's new trials are chosen by agents"
                )
            return X.trial_spec(exp, i, entry)

        # (a claim whose reply was lost is read back by the next try: never held by nobody)
        held = patient("claiming the trial", lambda: _claim_or_wait(claimer, index, new_spec, limits))
        # As an agent's worker trains: every write and fence check waits for the store while
        # the lease lasts (the heartbeat thread renews it, and fences the trial once renewals
        # have failed for lease - 2 heartbeats); past it the attempt is fenced, never failed.
        training = RetryingStore(
            store,
            keep_trying=lambda: held.closed is None and time.monotonic() < held.valid_until(),
            outage=patient.outage,
            say=_say,
        )
        fence = _TrainingFence(held, AttemptFence(training, index, held.epoch))
        watch = _StallWatch(progress, held, float(exp.limits.stall_seconds), membership)
        with _ctrl_c_stops(fence), watch:
            try:
                outcome = execute_trial(
                    entry,
                    held.spec,
                    training,
                    index,
                    held.epoch,
                    fence=fence,
                    device=device,
                    progress=watch,
                    smoke=smoke,
                    metric=metric,
                    agent_id=membership.agent_id,
                    pruner=pruner_of(exp.design),
                )
            except LeaseLost as exc:
                _lease_lost(held, index, str(exc), store)
            except KeyboardInterrupt:
                with contextlib.suppress(AblatorError):
                    held.release("aborted (Ctrl-C)")
                raise
            except BaseException as exc:
                gone = unavailable_cause(exc)
                if gone is not None:
                    _store_gone(held, index, gone, patient.outage)
                message, tb = exception_text(exc), "".join(traceback.format_exception(exc))
                try:
                    with contextlib.suppress(LeaseLost):  # not ours any more: its next holder runs it again
                        patient("writing the failure record", lambda: held.fail("exception", message, tb))
                except StoreUnavailable as lost:  # past --store-timeout: report the trial's own error
                    _say(
                        f"trial {index}'s failure was not recorded ({lost}); it is run again after its lease"
                    )
                _raise_trial_failed(exc, index, store.url, layout.failed(index, held.epoch))
        # The last record, retried until the store takes it or the lease is lost (the
        # heartbeat fences the trial after lease - 2 heartbeats without a renewal).
        try:
            if outcome.status == "stopped":
                patient("writing the release", lambda: held.release("interrupted", outcome.checkpoint_step))
            elif patient("writing the result", lambda: held.finish(outcome)):
                _summarize(store, index, exp, patient)
        except LeaseLost as exc:
            _lease_lost(held, index, str(exc), store)
        except StoreUnavailable as exc:
            _store_gone(held, index, exc, patient.outage)
    finally:
        membership.close()
    _print_summary(exp, index, held.spec, store, outcome)
    return outcome


def _lease_lost(held: Held, index: int, why: str, store: Store | None = None) -> NoReturn:
    """The attempt lost its lease (fenced after failed renewals, taken over, or a result
    appeared): as an agent reports a fenced worker, never as a failure. Raises LeaseLost with
    what happens to the trial next (the CLI exits 1: this run did not finish it). ``store``, when
    it answers, tells a trial another holder already finished from one that is left to be taken over."""
    held.lose(why)
    finished = False
    if store is not None:
        with contextlib.suppress(StoreError):
            finished = store.exists(layout.result(index))
    if finished:
        raise LeaseLost(
            f"{why}. Trial {index} was finished by another holder (its result is in the store); "
            "nothing is lost and nothing is left to run"
        )
    raise LeaseLost(
        f"{why}. Trial {index} was not failed: it is left to be taken over (an agent or a later "
        "`ablator run` resumes it from its last checkpoint)"
    )


def _store_gone(held: Held, index: int, exc: StoreUnavailable, outage: Outage) -> NoReturn:
    """Training or the last record ended on a store that did not answer: past --store-timeout
    run gives up with the outage's message; before it, only the lease ran out. Either way the
    trial is left, never failed."""
    if outage.expired():
        held.lose(str(exc))
        raise StoreUnavailable(
            f"{exc}. Trial {index} was not failed: it is taken over after its lease (an agent or a later "
            "`ablator run` resumes it from its last checkpoint)"
        ) from exc
    _lease_lost(held, index, f"the store did not answer before the lease ran out: {exc}")


class _TrainingFence:
    """The fence of a trial ``ablator run`` trains in this process (a
    :class:`~ablator.train.Fence`): the membership's own deadline first (``held``: renewals that
    failed for lease - 2 heartbeats fence it, as they fence an agent's trials), then the
    takeover/result rule through ``attempt`` (an :class:`AttemptFence` on the retrying store, as
    an agent's worker checks it). A loss found either way lets go of ``held``. Stops are
    ``held``'s (Ctrl-C here, an operator's ``ablator stop`` through the heartbeat)."""

    def __init__(self, held: Held, attempt: AttemptFence) -> None:
        self.held = held
        self.attempt = attempt

    def check(self) -> None:
        """Raise LeaseLost unless this run may still write for its trial."""
        self.held.check(remote=False)
        try:
            self.attempt.check()
        except LeaseLost as exc:
            self.held.lose(str(exc))
            raise

    @property
    def should_stop(self) -> bool:
        """Whether the trainer should checkpoint and return."""
        return self.held.should_stop

    def request_stop(self) -> None:
        """Ask the trainer to checkpoint at its next chance and return."""
        self.held.request_stop()


def _claim_or_wait(claimer: Any, index: int, new_spec: Any, limits: Any) -> Held:
    """Claim trial ``index``; while it is running elsewhere, watch its holder as an agent does
    and take it over once the claimer judges the holder dead (its heartbeat unrenewed for its
    lease, timed on the store's clock at first sight; a dead pid of this very machine at once).
    Refuses a done or failed trial, and gives up when a ``stop`` record appears."""
    waiting = False
    while True:
        if claimer.stop_requested(refresh=True):
            raise AblatorError(
                f"{claimer.store.url} has a stop record ({layout.STOP}): ablator run does not claim trial {index}; "
                "run `ablator resume` to lift the stop, then run again"
            )
        held = claimer.claim(index, new_spec)
        if held is not None:
            if waiting:
                print(
                    f"ablator run: took over trial {index} (epoch {held.epoch})", file=sys.stderr, flush=True
                )
            return cast(Held, held)
        st = claimer.state(index)
        if st.status != "running":
            holder = f" by {st.holder}" if st.holder else ""
            raise AblatorError(
                f"trial {index} in {claimer.store.url} is {st.status}{holder}: ablator run claims a trial like an "
                "agent and does not become a second writer (run it when it is released or failed, or in a "
                "private --store)"
            )
        if not waiting:
            waiting = True
            print(
                f"ablator run: trial {index} is running by {st.holder}; waiting to take it over if that holder dies "
                f"(lease {limits.lease_seconds:g} s; Ctrl-C to give up)",
                file=sys.stderr,
                flush=True,
            )
        # Half a heartbeat between looks: the claimer's liveness rule needs reads that often to
        # take a dead holder's trial within lease + 2 heartbeats of its last heartbeat.
        time.sleep(limits.heartbeat_seconds / 2)


class _Patience:
    """A step of run's start that needs the store, tried again while the store does not answer
    (StoreUnavailable), with the agent's back-off and its message once ``store_timeout`` passes
    (:func:`ablator.store.retry.wait_for_store`)."""

    def __init__(self, url: str, store_timeout: float) -> None:
        self.outage = Outage(url, store_timeout)

    def __call__(self, doing: str, fn: Callable[[], T]) -> T:
        return wait_for_store(fn, self.outage, doing=doing, say=_say)


def _say(line: str) -> None:
    print(f"ablator run: {line}", file=sys.stderr, flush=True)


class _StallWatch:
    """The agent's stall watchdog for a trial run in this very process: a
    :class:`~ablator.train.progress.Progress` that forwards to the one shown and notes each step;
    a thread fails the trial as ``stalled`` when no step came for ``limits.stall_seconds`` and
    ends the process (a hung trial cannot be stopped from another thread; the agent kills its
    worker the same way), so that the trial does not stay held by a live but stuck holder.
    Before it ends the process it closes the membership, as an exiting agent does: the last
    heartbeat says ``exited`` and holds nothing, so that even when the failure could not be
    written (the store away, the lease lost) nobody waits a lease for a holder that is gone."""

    def __init__(self, shown: ProgressLike, held: Held, stall_s: float, membership: Membership) -> None:
        from ablator.train.progress import make_progress

        self.shown = make_progress(shown)
        self.held = held
        self.membership = membership
        self.stall_s = stall_s
        self.last = time.monotonic()
        self.step: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ablator-stall-watch", daemon=True)

    def __enter__(self) -> _StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def start(self, *, trial: int, epoch: int, total: int | None, initial: int) -> None:
        self.last = time.monotonic()
        self.shown.start(trial=trial, epoch=epoch, total=total, initial=initial)

    def update(
        self,
        step: int,
        values: Any,
        *,
        train_epoch: int | None = None,
        important: bool = False,
    ) -> None:
        self.last = time.monotonic()
        self.step = step
        self.shown.update(step, values, train_epoch=train_epoch, important=important)

    def close(self) -> None:
        self.shown.close()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.stall_s / 4)):
            idle = time.monotonic() - self.last
            if idle <= self.stall_s or self.held.should_stop:
                continue
            at = f"after step {self.step}" if self.step is not None else "before its first step"
            message = (
                f"no step reported for {idle:.0f} s (limits.stall_seconds={self.stall_s:g}) {at}; "
                "ablator run exited"
            )
            with contextlib.suppress(AblatorError):  # LeaseLost or the store: nothing to record then
                self.held.fail("stalled", message, "", self.step)
            print(f"ablator run: trial {self.held.trial}: {message}", file=sys.stderr, flush=True)
            # The last heartbeat: exited, nothing held (the failure, if written, is its hint).
            # Never let a store error keep a stuck process alive: the exit is what matters.
            with contextlib.suppress(Exception):
                self.membership.close()
            os._exit(1)


# --- the terminal -----------------------------------------------------------------------------


@contextlib.contextmanager
def _ctrl_c_stops(fence: AttemptFence | _TrainingFence) -> Iterator[None]:
    """First Ctrl-C or SIGTERM (a preemption, a batch system's time limit): ask the trial to
    checkpoint and stop, so that it is released, never recorded finished with what it had so far;
    a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        if fence.should_stop:
            raise KeyboardInterrupt
        fence.request_stop()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\nablator run: {name}: stopping after a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _fmt_metrics(values: dict[str, float], limit: int = 6) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in list(values.items())[:limit]) or "no metrics"


def _print_summary(exp: Any, index: int, spec: records.TrialSpec, store: Store, outcome: Outcome) -> None:
    variant = f" ({spec.variant})" if spec.variant else ""
    name = exp.metric.name
    best = outcome.best.get(name)
    best_txt = f"; best {name} {best:.4g} at step {outcome.best_step}" if best is not None else ""
    resumed = f", resumed from step {outcome.resumed_from[1]}" if outcome.resumed_from else ""
    lines = [
        f"trial {index}{variant}: {outcome.status} after {outcome.steps} steps in {_secs(outcome.duration_s)}{resumed}",
        f"  final: {_fmt_metrics(outcome.metrics)}{best_txt}",
    ]
    if outcome.message:
        lines.append(f"  {outcome.message}")
    if outcome.status == "stopped":
        lines.append(
            f"  checkpoint at step {outcome.checkpoint_step}: run the same command again to continue"
        )
    if not store.url.startswith("memory://"):
        lines.append(f"  store: {store.url}")
    print("\n".join(lines), flush=True)


def _secs(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else time.strftime("%Hh%Mm%Ss", time.gmtime(s))
