"""The ``tpe`` design: adaptive search with Optuna's TPE sampler, without a shared database.

There is no coordinator and no Optuna storage shared between agents. The agent that claims
trial ``n`` asks a sampler that has seen what the store holds: the finished trials' results, and
the running trials' points as *pending* (Optuna's constant liar: a pending point counts as a bad
result, so agents that claim at the same moment spread out instead of sampling the same point).
The chosen point is recorded in the claim (``TrialSpec.overrides`` and ``TrialSpec.params``,
the sampler's own coordinates), so every later reader uses the recorded config and a rebuilt
sampler sees exactly what the claimer chose.

Incremental: each agent keeps one in-process Optuna study. Trials whose result it has seen are
never read again; a claim reads only the trials it has not yet seen finish (those running
anywhere, and new ones), so the store work per claim does not grow with the results.

Requires ``optuna`` (``pip install "ablator[tpe]"``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Literal

from ablator import layout, records
from ablator.errors import AblatorError
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
            'design kind "tpe" needs optuna, which is not installed: pip install "ablator[tpe]"'
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
    if result.status not in ("completed", "early_stopped"):
        return None
    value = result.best.get(metric, result.metrics.get(metric))
    if value is None or not math.isfinite(value):
        return None
    return float(value)


EAGER_LOOKS = 8  # an open trial is read at every claim this many times...
MAX_LOOK_GAP = 32  # ...then with doubling gaps, up to this many claims between two reads


class TpeDesign:
    """One agent's view of a ``tpe`` experiment; call :meth:`suggest` with the index it is about
    to claim."""

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
        self._scanned = 0  # every index below this was looked at once
        self._open: dict[int, int | None] = {}  # index -> optuna trial number while not finished
        # Open trials are looked at again with a growing gap (in refreshes, capped): a trial that
        # failed for good never gets a result, and re-reading every such trial at every claim
        # would make a claim's cost grow with the experiment's failures.
        self._refreshes = 0
        self._look_at: dict[int, int] = {}  # index -> the refresh at which to read it again
        self._gap: dict[int, int] = {}  # index -> reads that found no result
        self._done: set[int] = set()
        self._points: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    # -- what the store holds -------------------------------------------------------------------

    def _spec(self, index: int) -> records.TrialSpec | None:
        key = layout.claim(index, 0)
        data = self.store.get(key)
        if data is None:
            return None
        claim = records.try_decode(data, records.Claim, key)
        return None if claim is None else claim.spec

    def _add_pending(self, params: dict[str, Any]) -> int | None:
        replay = _ReplayPicker(self.optuna, params)
        try:
            self.space.draw(replay)
        except (KeyError, IndexError, ValueError):
            return None  # a point from another space (or none): TPE cannot learn from it
        self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask(replay.distributions)
        return int(trial.number)

    def refresh(self, upto: int) -> None:
        """Learn about every trial below ``upto``: newly claimed ones become pending points,
        newly finished ones get their value. Reads only trials not yet seen finished."""
        self._refreshes += 1
        for index in [*sorted(self._open), *range(self._scanned, upto)]:
            if index >= upto or index in self._done:
                continue
            if self._look_at.get(index, 0) > self._refreshes:
                continue
            number = self._open.get(index)
            if index not in self._open:
                spec = self._spec(index)
                if spec is None:
                    if index >= self._scanned:
                        self._open[index] = None  # a gap: not claimed yet, look again later
                    continue
                number = self._add_pending(spec.params) if spec.params else None
                self._open[index] = number
            elif number is None:
                spec = self._spec(index)
                if spec is not None and spec.params:
                    number = self._open[index] = self._add_pending(spec.params)
            data = self.store.get(layout.result(index))
            if data is None:
                misses = self._gap.get(index, 0) + 1
                self._gap[index] = misses
                # Every claim for the first few misses (a running trial), then doubling gaps.
                gap = 1 if misses <= EAGER_LOOKS else min(2 ** (misses - EAGER_LOOKS), MAX_LOOK_GAP)
                self._look_at[index] = self._refreshes + gap
                continue
            result = records.try_decode(data, records.Result, layout.result(index))
            if result is None:
                continue
            if number is not None:
                value = objective_value(result, self.metric)
                state = self.optuna.trial.TrialState
                if value is None:
                    self.study.tell(number, state=state.FAIL)
                else:
                    self.study.tell(number, value)
            self._open.pop(index, None)
            self._look_at.pop(index, None)
            self._gap.pop(index, None)
            self._done.add(index)
        self._scanned = max(self._scanned, upto)

    # -- choosing ---------------------------------------------------------------------------------

    def suggest(self, index: int, point: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new point for trial ``index``: (overrides by config path, the sampler's params). It
        stays pending in this agent's study until the trial's result shows up. ``point`` seeds
        the sampler (default ``index``)."""
        self.refresh(index)
        seed_key = index if point is None else point
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A fresh random state per point: what the claimer picks depends on the seed, the
            # point and what it saw, not on how many claims this agent made before.
            self.study.sampler = self.optuna.samplers.TPESampler(
                seed=(self.seed * 1_000_003 + seed_key) % 2**32,
                constant_liar=True,
                n_startup_trials=self.n_startup_trials,
            )
            trial = self.study.ask()
            overrides = self.space.draw(_OptunaPicker(self.optuna, trial))
        self._open[index] = int(trial.number)
        self._scanned = max(self._scanned, index + 1)
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
            if self.store.create(key, records.encode(rec)):
                found = (overrides, params)
            else:  # another agent chose this point first: use its choice, drop ours
                self.discard(index)
                found = self._read_point(key)
                if found is None:
                    raise AblatorError(f"tpe point {key!r} in {self.store.url} exists but cannot be read")
        self._points[point] = found
        return found

    def _read_point(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        data = self.store.get(key)
        rec = None if data is None else records.try_decode(data, records.DesignPoint, key)
        return None if rec is None else (rec.overrides, rec.params)

    def discard(self, index: int) -> None:
        """Forget this agent's suggestion for ``index`` (it lost the claim race): the next refresh
        reads the point that the winner recorded."""
        number = self._open.get(index)
        if number is not None:
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self._open[index] = None

    @property
    def n_finished(self) -> int:
        return len(self._done)


__all__ = ["TpeDesign", "objective_value"]
