"""The ``tpe`` design: adaptive search with Optuna's TPE sampler, without a shared database.

There is no coordinator and no Optuna storage shared between agents. Each agent keeps one
in-process Optuna study and follows the design's *journal* in the store: create-once entries
``design/log/<seq>`` numbered from 0 without gaps (``records.DesignEvent``), appended by the
agent that saw the event:

* ``claimed`` -- a trial (new or taken over) started running a point (its ``params``);
* ``finished`` -- it ended with a result, whose objective value the entry carries;
* ``ended`` -- it stopped running without a result (failed, released, lost).

**What the sampler sees.** Before every suggestion the agent reads the journal entries written
since its last suggestion (one read per new entry, plus one for the first missing one: the cost
grows with what happened since, never with the budget or the trials already seen). So a
suggestion sees every result that was recorded in the journal at that moment, and exactly the
trials that are running (claimed and not yet finished or ended) as *pending* points: Optuna's
constant liar counts a pending point as a bad result, so agents that claim at the same moment
spread out instead of sampling the same point. An agent's own trial counts as finished as soon as
its worker reports the outcome, before the agent asks for its next point. Pruned trials are told
``PRUNED``; failed or diverged trials (no usable value) are told ``FAIL`` and ignored by TPE.

The first ``n_startup_trials`` points of the whole experiment are random: a suggestion is random
while fewer than that many trials have finished or are running, in the store, not in one agent.

What it cannot see: a result whose agent died between writing it and journaling it (the trial
stays a pending point, which TPE avoids a little, and its value is not learned), and trials run
outside agents (``ablator run --trial`` on a launched store), which write no journal entries.

The chosen point is recorded in the claim (``TrialSpec.overrides`` and ``TrialSpec.params``,
the sampler's own coordinates) and in ``design/points/<point>`` (every repeat of a point runs the
same config).

Requires ``optuna``: the ``tpe`` extra (``python -m pip install -e '.[tpe]'`` from the ablator checkout).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ablator import layout, records
from ablator.errors import AblatorError, extra_hint
from ablator.space import Choice, Range, Space

if TYPE_CHECKING:
    import optuna

    from ablator.store.base import Store

N_STARTUP_TRIALS = 10


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise AblatorError(
            f'design kind "tpe" needs optuna, which is not installed: {extra_hint("tpe", ["optuna>=3.5"])}'
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distribution(optuna: Any, dim: Range | Choice) -> Any:
    """The Optuna distribution of a dimension. Discrete numeric ranges (bins, steps, log factors)
    become an integer index over their values, so that TPE keeps their order."""
    D = optuna.distributions
    if isinstance(dim, Choice):
        return D.CategoricalDistribution(list(range(len(dim.options))))
    values = dim.grid_values()
    if dim.integer and dim.step is None and dim.bins is None:
        return D.IntDistribution(int(dim.lo), int(dim.hi), log=dim.log and dim.lo > 0)
    if values is not None:
        return D.IntDistribution(0, len(values) - 1)
    return D.FloatDistribution(float(dim.lo), float(dim.hi), log=dim.log)


class _OptunaPicker:
    """A :class:`ablator.space.Picker` that asks an Optuna trial (define-by-run, so conditional
    dimensions are suggested only when their option is drawn)."""

    def __init__(self, optuna: Any, trial: optuna.Trial) -> None:
        self.optuna = optuna
        self.trial = trial

    def _suggest(self, dim: Range | Choice) -> Any:
        dist = _distribution(self.optuna, dim)
        D = self.optuna.distributions
        if isinstance(dist, D.CategoricalDistribution):
            return self.trial.suggest_categorical(dim.name, list(dist.choices))
        if isinstance(dist, D.IntDistribution):
            return self.trial.suggest_int(dim.name, dist.low, dist.high, log=dist.log)
        return self.trial.suggest_float(dim.name, dist.low, dist.high, log=dist.log)

    def choose(self, dim: Choice) -> int:
        return int(self._suggest(dim))

    def number(self, dim: Range) -> Any:
        raw = self._suggest(dim)
        values = dim.grid_values()
        if dim.integer and dim.step is None and dim.bins is None:
            return int(raw)
        if values is not None:
            return values[int(raw)]
        return float(raw)


class _ReplayPicker:
    """Re-draws a recorded point from its params (to list the distributions of the active
    dimensions); a param missing for an active dimension is an error."""

    def __init__(self, optuna: Any, params: dict[str, Any]) -> None:
        self.optuna = optuna
        self.params = params
        self.distributions: dict[str, Any] = {}

    def _get(self, dim: Range | Choice) -> Any:
        if dim.name not in self.params:
            raise KeyError(dim.name)
        self.distributions[dim.name] = _distribution(self.optuna, dim)
        return self.params[dim.name]

    def choose(self, dim: Choice) -> int:
        return int(self._get(dim))

    def number(self, dim: Range) -> Any:
        return self._get(dim)


def objective_value(result: records.Result, metric: str) -> float | None:
    """The value TPE learns from: the best value of ``metric`` (else its final value); None for
    results that carry no usable value (diverged, pruned, missing or non-finite)."""
    return outcome_value(result.status, result.metrics, result.best, metric)


def outcome_value(
    status: str, metrics: Mapping[str, float], best: Mapping[str, float], metric: str
) -> float | None:
    """:func:`objective_value` of an outcome's parts (an agent has them before the result)."""
    if status not in ("completed", "early_stopped"):
        return None
    value = best.get(metric, metrics.get(metric))
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class TpeDesign:
    """One agent's view of a ``tpe`` experiment (see the module docstring for what it sees).

    The agent calls :meth:`choose` while claiming a new trial, :meth:`discard` when it lost that
    claim, :meth:`claimed` when it holds a trial (new or taken over), :meth:`finished` when its
    worker reported an outcome (before claiming again) and :meth:`published` once the result is
    written, and :meth:`ended` when a trial it held stops without a result."""

    def __init__(
        self,
        store: Store,
        space: Space,
        *,
        metric: str,
        mode: Literal["min", "max"],
        seed: int = 0,
        n_startup_trials: int = N_STARTUP_TRIALS,
    ) -> None:
        self.optuna = _import_optuna()
        self.store = store
        self.space = space
        self.metric = metric
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna flags some sampler options as experimental
            self.study = self.optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        self._next_seq = 0  # the next journal entry to read
        self._running: dict[int, int] = {}  # trial index -> optuna trial number, while running
        self._epoch: dict[int, int] = {}  # trial index -> the epoch that runs it
        self._suggested: dict[int, int] = {}  # trial index -> this agent's suggestion, not yet claimed
        self._done: set[int] = set()  # trials whose result the study has
        self._points: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.entries_read = 0  # journal entries read so far (the cost of following it)
        self.random_draws = 0  # suggestions drawn at random (start-up)

    # -- the journal --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the journal entries written since the last refresh."""
        while True:
            key = layout.design_event(self._next_seq)
            too_large = False
            try:
                data = self.store.get(key)
            except records.CorruptRecordError as exc:  # over the size limit: skipped like a torn one
                warnings.warn(str(exc), records.CorruptRecordWarning, stacklevel=2)
                data, too_large = b"", True
            if data is None:
                return
            self._next_seq += 1
            self.entries_read += 1
            event = None if too_large else records.try_decode(data, records.DesignEvent, key)
            if event is not None:
                self._apply(event)

    def _apply(self, ev: records.DesignEvent) -> None:
        if ev.trial in self._done:
            return  # one result per trial; later entries (a duplicate) change nothing
        state = self.optuna.trial.TrialState
        if ev.kind == "claimed":
            self._epoch[ev.trial] = max(ev.epoch, self._epoch.get(ev.trial, 0))
            if ev.trial not in self._running:
                number = self._add_pending(ev.params)
                if number is not None:
                    self._running[ev.trial] = number
            return
        if ev.kind == "ended" and ev.epoch < self._epoch.get(ev.trial, 0):
            return  # an older attempt's end, journaled after a takeover's claim: still running
        number = self._running.pop(ev.trial, None)
        if ev.kind == "ended":
            if number is not None:
                self.study.tell(number, state=state.FAIL)
            return
        if number is None:  # its claim was never journaled (a writer died): learn it anyway
            number = self._add_pending(ev.params)
        self._done.add(ev.trial)
        if number is not None:
            self._tell(number, ev.value, ev.pruned)

    def _tell(self, number: int, value: float | None, pruned: bool) -> None:
        state = self.optuna.trial.TrialState
        if value is not None:
            self.study.tell(number, value)
        elif pruned:
            self.study.tell(number, state=state.PRUNED)
        else:
            self.study.tell(number, state=state.FAIL)

    def _append(self, trial: int, epoch: int, kind: str, **fields: Any) -> None:
        """Append an entry: at the end of the journal as this agent knows it, else the next free
        number (the entries skipped are read by the next refresh)."""
        self.refresh()
        seq = self._next_seq
        while True:
            rec = records.DesignEvent(seq=seq, trial=trial, epoch=epoch, kind=kind, **fields)  # type: ignore[arg-type]
            # Durable like every record a decision hangs on: a torn entry would cost the other
            # agents' samplers this event (see ``refresh`` for how one is read).
            if self.store.create(layout.design_event(seq), records.encode(rec), durable=True):
                return
            seq += 1

    def _add_pending(self, params: dict[str, Any]) -> int | None:
        if not params:
            return None
        replay = _ReplayPicker(self.optuna, params)
        try:
            self.space.draw(replay)
        except (KeyError, IndexError, ValueError):
            return None  # a point from another space (or none): TPE cannot learn from it
        self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask(replay.distributions)
        return int(trial.number)

    # -- what the agent tells -----------------------------------------------------------------------

    def claimed(self, trial: int, epoch: int, params: dict[str, Any]) -> None:
        """This agent holds ``trial`` (epoch ``epoch``): it is running. Journaled."""
        number = self._suggested.pop(trial, None)
        self._epoch[trial] = max(epoch, self._epoch.get(trial, 0))
        if trial not in self._done and trial not in self._running:
            if number is None:
                number = self._add_pending(params)
            if number is not None:
                self._running[trial] = number
        elif number is not None:
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self._append(trial, epoch, "claimed", params=dict(params))

    def finished(self, trial: int, value: float | None, *, pruned: bool = False) -> None:
        """This agent's worker reported ``trial``'s outcome: the study learns it now, before the
        agent asks for its next point (the journal entry follows with :meth:`published`)."""
        if trial in self._done:
            return
        number = self._running.pop(trial, None)
        self._done.add(trial)
        if number is not None:
            self._tell(number, value, pruned)

    def published(
        self, trial: int, epoch: int, params: dict[str, Any], value: float | None, *, pruned: bool = False
    ) -> None:
        """``trial``'s result is in the store: journal it for the other agents."""
        self.finished(trial, value, pruned=pruned)
        self._append(trial, epoch, "finished", params=dict(params), value=value, pruned=pruned)

    def ended(self, trial: int, epoch: int) -> None:
        """``trial`` stopped running here without a result (failed, released). Journaled; nothing
        for a trial whose outcome :meth:`finished` already told."""
        if trial in self._done:
            return
        if epoch >= self._epoch.get(trial, 0):  # (a takeover's claim, if read first, stays running)
            number = self._running.pop(trial, None)
            if number is not None:
                self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self._append(trial, epoch, "ended")

    # -- choosing ---------------------------------------------------------------------------------

    def suggest(self, index: int, point: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new point for trial ``index``: (overrides by config path, the sampler's params). It
        is pending in this agent's study until the trial ends. ``point`` seeds the sampler
        (default ``index``)."""
        self.refresh()
        seed_key = index if point is None else point
        finished = sum(
            1 for t in self.study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")
        )
        # Start-up counts the experiment's trials, running ones included: Optuna counts only the
        # finished ones, which with several agents makes every agent draw at random for longer.
        startup = self.n_startup_trials - len(self._running)
        n_startup = max(startup, 1 if finished == 0 else 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A fresh random state per point: what the claimer picks depends on the seed, the
            # point and what it saw, not on how many claims this agent made before.
            self.study.sampler = self.optuna.samplers.TPESampler(
                seed=(self.seed * 1_000_003 + seed_key) % 2**32,
                constant_liar=True,
                n_startup_trials=n_startup,
            )
            trial = self.study.ask()
            overrides = self.space.draw(_OptunaPicker(self.optuna, trial))
        if finished < n_startup:
            self.random_draws += 1
        self._suggested[index] = int(trial.number)
        return overrides, dict(trial.params)

    def choose(self, index: int, point: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The config of ``point`` for trial ``index`` (one of its repeats): the point's
        ``design/points`` record when one exists, else a new suggestion recorded there with
        create-if-absent, so that every repeat of a point runs the same config whichever agent
        claims it first."""
        cached = self._points.get(point)
        if cached is not None:
            return cached
        key = layout.design_point(point)
        found = self._read_point(key)
        if found is None:
            overrides, params = self.suggest(index, point)
            rec = records.DesignPoint(point=point, overrides=overrides, params=params)
            if self.store.create(key, records.encode(rec), durable=True):
                found = (overrides, params)
            else:  # another agent chose this point first: use its choice, drop ours
                found = self._read_point(key)
                if found is None:
                    # The point's record exists but is torn (a power loss on a disk that did
                    # not keep it; _read_point warned): run our own choice rather than fail
                    # every claim of this point. Its repeats may then differ; the claims record
                    # what each one ran.
                    found = (overrides, params)
                else:
                    self.discard(index)
        self._points[point] = found
        return found

    def _read_point(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        rec = records.read(self.store, key, records.DesignPoint)
        return None if rec is None else (rec.overrides, rec.params)

    def discard(self, index: int) -> None:
        """Forget this agent's suggestion for ``index`` (it lost the claim race, or the point was
        chosen by another agent): it is no longer pending."""
        number = self._suggested.pop(index, None)
        if number is not None:
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)

    @property
    def n_finished(self) -> int:
        return len(self._done)

    @property
    def running(self) -> set[int]:
        """The trials the study holds as pending points (running, as far as the journal says)."""
        return set(self._running)


__all__ = ["TpeDesign", "objective_value", "outcome_value"]
