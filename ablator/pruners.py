"""Early stopping across trials without a coordinator: asynchronous successive halving (ASHA) and
the median rule, decided by each trial from what the store holds.

The experiment chooses a pruner in ``design.pruner``::

    design:
      kind: random
      trials: 81
      space: {...}
      pruner: {kind: asha, min_steps: 100, reduction_factor: 3, max_steps: 2700}
      # or:   {kind: median, warmup_steps: 300, min_trials: 5}

**ASHA** (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020). Rung
``r`` sits at step ``min_steps * reduction_factor**r`` (rungs at or past ``max_steps`` do not
exist: a trial that gets there simply finishes). At the first report of the experiment metric at
or past a rung's step, a trial reads the values that other trials recorded at that rung, decides
whether its own value is in the top ``1/reduction_factor`` of them (itself included), and then
records its value *and that decision* in a create-once record ``pruning/rung-<r>/<trial>``. A
trial that is not promoted ends with status ``pruned``. The record is the trial's memory: a
takeover that resumes the trial, or an attempt that re-reaches the rung, finds it and keeps the
decision instead of deciding again. With fewer than ``reduction_factor`` values at a rung, a
trial is promoted only if it is the best so far (Optuna's rule; the paper's scheduler would hold
it back instead of deciding).

**Median rule** (Golovin et al., "Google Vizier", KDD 2017; Optuna's ``MedianPruner``). Once
``min_trials`` trials have finished (completed or early-stopped) and past ``warmup_steps``, a
trial whose best value so far is worse than the median of the finished trials' values at the
same step is pruned. Each finished trial writes its learning curve once
(``pruning/curves/<trial>``); readers cache what they read (records never change).

The rules themselves are pure functions (:func:`rung_step`, :func:`asha_promotes`,
:func:`median_prunes`); :class:`Pruning` is the small store-backed part that a training loop
calls with each value of the metric. ``docs/experiment.md`` compares both with Optuna's pruners.
"""

from __future__ import annotations

import difflib
import math
import statistics
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ablator import layout, records
from ablator.errors import ConfigError
from ablator.store.base import Store

if TYPE_CHECKING:
    from ablator.train.outcome import Fence

Mode = Literal["min", "max"]


class Asha(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="asha", tag_field="kind"
):
    """``{kind: asha, min_steps, reduction_factor, max_steps, brackets}``: asynchronous successive
    halving. Steps are the steps a trial reports at (optimizer steps for a ModelWrapper trial).
    ``brackets`` > 1 is asynchronous Hyperband: trial ``i`` runs in bracket ``i % brackets``,
    whose first rung is rung ``bracket`` (later brackets judge later), and competes only with
    the trials of its bracket."""

    min_steps: int = 1
    reduction_factor: int = 3
    max_steps: int | None = None
    brackets: int = 1


class Median(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="median", tag_field="kind"
):
    """``{kind: median, warmup_steps, min_trials}``: prune a trial whose best value so far is worse
    than the median of the finished trials' values at the same step."""

    warmup_steps: int = 0
    min_trials: int = 5


PrunerConfig = Asha | Median
PRUNER_KINDS = ("asha", "median")


def parse_pruner(data: Any, path: str = "$.design.pruner") -> tuple[PrunerConfig | None, list[str]]:
    """``design.pruner`` as a typed config, and its problems (each naming ``path``)."""
    if data is None:
        return None, []
    if not isinstance(data, dict):
        return None, [f"{path}: expected a mapping like {{kind: asha, min_steps: 100}}, found {data!r}"]
    kind = data.get("kind")
    types: dict[str, type[Asha] | type[Median]] = {"asha": Asha, "median": Median}
    if kind not in types:
        return None, [f"{path}.kind: expected one of {', '.join(PRUNER_KINDS)}, found {kind!r}"]
    cls = types[kind]
    problems = []
    fields = [f for f in cls.__struct_fields__]
    for name in data:
        if name != "kind" and name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{path}.{name}: not a field of the {kind} pruner{hint}; its fields: {', '.join(fields)}"
            )
    if problems:
        return None, problems
    try:
        return msgspec.convert(data, cls), []
    except msgspec.ValidationError as exc:
        return None, [f"{path}: {exc}".replace("`$.", f"`{path}.")]


def pruner_of(design: Any) -> PrunerConfig | None:
    """The typed pruner of a validated design (``experiment.Design``), or None."""
    cfg, problems = parse_pruner(design.pruner)
    if problems:
        raise ConfigError(problems)
    return cfg


def config_problems(data: Any, design_kind: str, allow_pruning: bool) -> list[str]:
    """Problems of ``design.pruner`` (``$.design...`` paths), for the experiment's checks."""
    pruner, out = parse_pruner(data)
    if data is None:
        if allow_pruning and design_kind != "ablation":
            out.append(
                "$.design.allow_pruning: only an ablation design needs it (other designs take a pruner as is)"
            )
        return out
    if design_kind == "ablation" and not allow_pruning:
        out.append(
            "$.design.pruner: an ablation compares finished trainings, so it runs every trial in full; "
            "drop the pruner, or set design.allow_pruning: true to prune variants on purpose"
        )
    if isinstance(pruner, Asha):
        if pruner.min_steps < 1:
            out.append(f"$.design.pruner.min_steps: must be >= 1, found {pruner.min_steps}")
        if pruner.reduction_factor < 2:
            out.append(f"$.design.pruner.reduction_factor: must be >= 2, found {pruner.reduction_factor}")
        if pruner.max_steps is not None and pruner.max_steps <= pruner.min_steps:
            out.append(
                f"$.design.pruner.max_steps: must exceed min_steps ({pruner.min_steps}), found {pruner.max_steps}"
            )
        if pruner.brackets < 1:
            out.append(f"$.design.pruner.brackets: must be >= 1, found {pruner.brackets}")
        elif (
            pruner.max_steps is not None
            and pruner.min_steps >= 1
            and pruner.reduction_factor >= 2
            and rung_step(pruner, pruner.brackets - 1) >= pruner.max_steps
        ):
            out.append(
                f"$.design.pruner.brackets: bracket {pruner.brackets - 1} would start at step "
                f"{rung_step(pruner, pruner.brackets - 1)}, not below max_steps ({pruner.max_steps}); use fewer brackets"
            )
    elif isinstance(pruner, Median):
        if pruner.warmup_steps < 0:
            out.append(f"$.design.pruner.warmup_steps: must be >= 0, found {pruner.warmup_steps}")
        if pruner.min_trials < 1:
            out.append(f"$.design.pruner.min_trials: must be >= 1, found {pruner.min_trials}")
    return out


# --- the rules: pure functions -------------------------------------------------------------------


def rung_step(cfg: Asha, rung: int) -> int:
    """The step of rung ``rung``: ``min_steps * reduction_factor ** rung``."""
    return int(cfg.min_steps * cfg.reduction_factor**rung)


def bracket_of(cfg: Asha, trial: int) -> int:
    """The Hyperband bracket of trial ``trial`` (0 without brackets)."""
    return trial % max(cfg.brackets, 1)


def rungs(cfg: Asha, upto: int, bracket: int = 0) -> list[int]:
    """The rungs of ``bracket`` whose step is at most ``upto`` (and below ``max_steps``), lowest
    first. Rungs are numbered alike in every bracket: bracket ``b`` starts at rung ``b``."""
    out: list[int] = []
    r = bracket
    while True:
        s = rung_step(cfg, r)
        if s > upto or (cfg.max_steps is not None and s >= cfg.max_steps):
            return out
        out.append(r)
        r += 1


def asha_promotes(value: float, competing: list[float], reduction_factor: int, mode: Mode) -> bool:
    """Whether ``value`` is in the top ``1/reduction_factor`` of ``competing`` (which includes it).

    With fewer than ``reduction_factor`` values the top fraction is empty; the value is then
    promoted only if it is the best one (as Optuna's ``SuccessiveHalvingPruner`` does). A
    non-finite value is never promoted."""
    if not math.isfinite(value):
        return False
    k = max(len(competing) // reduction_factor, 1)  # how many values the top fraction holds
    ordered = sorted(v for v in competing if math.isfinite(v))
    if not ordered:
        return True
    if mode == "max":
        return value >= ordered[-min(k, len(ordered))]
    return value <= ordered[min(k, len(ordered)) - 1]


def median_prunes(
    best_so_far: float, others_at_step: list[float], finished: int, step: int, cfg: Median, mode: Mode
) -> bool:
    """The median rule: prune when ``finished >= min_trials``, ``step >= warmup_steps``, and the
    trial's best value so far is worse than the median of ``others_at_step`` (the finished
    trials' values at this step; none of them: no decision)."""
    if finished < cfg.min_trials or finished == 0 or step < cfg.warmup_steps:
        return False
    if not math.isfinite(best_so_far):
        return True
    values = [v for v in others_at_step if not math.isnan(v)]
    if not values:
        return False
    median = statistics.median(values)
    return best_so_far < median if mode == "max" else best_so_far > median


# --- the store-backed part -----------------------------------------------------------------------


class Pruning:
    """One attempt's pruner: call :meth:`report` with every value of the experiment metric; a
    returned string says why the trial is pruned (it should then end with status ``pruned``).
    Call :meth:`finished` when the trial completes (the median rule learns from it), and carry
    :meth:`state` in the checkpoint (:meth:`restore` on resume) so that the median rule keeps
    the trial's best value and ASHA does not re-read decided rungs.

    ``fence``: anything with ``check()`` (raises when this attempt may no longer write)."""

    def __init__(
        self,
        cfg: PrunerConfig,
        store: Store,
        trial: int,
        *,
        metric: str,
        mode: Mode,
        fence: Fence | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.trial = trial
        self.metric = metric
        self.mode: Mode = mode
        self.fence = fence
        self.decided: dict[int, bool] = {}  # rung -> promoted (ASHA)
        self.curve: dict[int, float] = {}  # step -> value (median rule)
        self._seen: dict[str, Any] = {}  # key -> decoded record: records never change once written
        self.rung: int | None = None  # the highest rung this trial reached (ASHA)
        self.bracket = bracket_of(cfg, trial) if isinstance(cfg, Asha) else 0

    # -- checkpoint state ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (loads with ``torch.load(weights_only=True)``)."""
        return {
            "decided": [[r, bool(p)] for r, p in sorted(self.decided.items())],
            "curve": [[s, float(v)] for s, v in sorted(self.curve.items())],
        }

    def restore(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        self.decided = {int(r): bool(p) for r, p in data.get("decided", [])}
        self.curve = {int(s): float(v) for s, v in data.get("curve", [])}
        if self.decided:
            self.rung = max(self.decided)

    # -- deciding ------------------------------------------------------------------------------
    def report(self, step: int, value: float) -> str | None:
        """The trial reached ``step`` with ``value`` of the metric: None to continue, else why it
        is pruned."""
        if isinstance(self.cfg, Asha):
            return self._asha(step, value)
        return self._median(step, value)

    def _asha(self, step: int, value: float) -> str | None:
        cfg = self.cfg
        assert isinstance(cfg, Asha)
        for r in rungs(cfg, step, self.bracket):
            promoted = self.decided.get(r)
            if promoted is None:
                promoted, n, kept = self._decide_rung(r, step, value)
            else:
                n, kept = 0, value
            self.decided[r] = promoted
            self.rung = r
            if not promoted:
                what = f" among {n} values recorded there" if n else ""
                return (
                    f"pruned at rung {r} (step {rung_step(cfg, r)}): {self.metric} {kept:.6g} is not in the "
                    f"top 1/{cfg.reduction_factor}{what}"
                )
        return None

    def _decide_rung(self, r: int, step: int, value: float) -> tuple[bool, int, float]:
        """Decide rung ``r`` once. Read the others' values first, then create this trial's record
        (Optuna's order: its pruner reads the trials, then stores the trial's rung value). When the
        record exists already (a resumed attempt, a lost reply), its decision stands."""
        assert isinstance(self.cfg, Asha)
        key = layout.rung(r, self.trial)
        mine = self._read(key, records.RungValue)
        if mine is None:
            others = [
                rec.value
                for t, rec in self._rung_values(r).items()
                if t != self.trial and rec.bracket == self.bracket
            ]
            promoted = asha_promotes(value, [*others, value], self.cfg.reduction_factor, self.mode)
            rec = records.RungValue(
                trial=self.trial, rung=r, step=step, value=value, promoted=promoted, bracket=self.bracket
            )
            if self.fence is not None:
                self.fence.check()
            if self.store.create(key, records.encode(rec), durable=True):
                self._seen[key] = rec
                return promoted, len(others) + 1, value
            mine = self._read(key, records.RungValue)
            if mine is None:  # unreadable: decide as we did, without a record
                return promoted, len(others) + 1, value
        return mine.promoted, 0, mine.value

    def _rung_values(self, r: int) -> dict[int, records.RungValue]:
        out: dict[int, records.RungValue] = {}
        for entry in self.store.list(layout.rung_dir(r)):
            rec = self._read(entry.key, records.RungValue)
            if rec is not None:
                out[rec.trial] = rec
        return out

    def _median(self, step: int, value: float) -> str | None:
        cfg = self.cfg
        assert isinstance(cfg, Median)
        self.curve[step] = value
        finite = [v for v in self.curve.values() if not math.isnan(v)]
        best = (max if self.mode == "max" else min)(finite) if finite else math.nan
        if step < cfg.warmup_steps:
            return None
        curves = self._curves()
        at_step = [c[step] for c in curves if step in c]
        if not median_prunes(best, at_step, len(curves), step, cfg, self.mode):
            return None
        median = statistics.median([v for v in at_step if not math.isnan(v)])
        return (
            f"pruned at step {step}: best {self.metric} so far {best:.6g} is worse than the median "
            f"{median:.6g} of {len(at_step)} finished trials at that step"
        )

    def _curves(self) -> list[dict[int, float]]:
        out = []
        for entry in self.store.list(layout.CURVES_DIR):
            rec = self._read(entry.key, records.Curve)
            if rec is not None and rec.trial != self.trial:
                out.append(dict(zip(rec.steps, rec.values, strict=False)))
        return out

    def finished(self) -> None:
        """The trial finished its training: record its curve once, for the median rule."""
        if not isinstance(self.cfg, Median) or not self.curve:
            return
        steps = sorted(self.curve)
        rec = records.Curve(
            trial=self.trial, metric=self.metric, steps=steps, values=[self.curve[s] for s in steps]
        )
        if self.fence is not None:
            self.fence.check()
        self.store.create(layout.curve(self.trial), records.encode(rec), durable=True)

    def _read(self, key: str, type_: type[records.R]) -> records.R | None:
        rec = self._seen.get(key)
        if rec is None:
            rec = records.read(self.store, key, type_)
            if rec is None:
                return None
            self._seen[key] = rec
        return rec


def make_pruning(
    cfg: PrunerConfig | None,
    store: Store,
    trial: int,
    *,
    metric: tuple[str, str] | None,
    fence: Fence | None = None,
    smoke: bool = False,
) -> Pruning | None:
    """The pruner of one attempt, or None (no pruner, a smoke run, or no metric to judge by)."""
    if cfg is None or smoke or metric is None or metric[1] not in ("min", "max"):
        return None
    mode: Mode = "max" if metric[1] == "max" else "min"
    return Pruning(cfg, store, trial, metric=metric[0], mode=mode, fence=fence)


__all__ = [
    "PRUNER_KINDS",
    "Asha",
    "Median",
    "PrunerConfig",
    "Pruning",
    "asha_promotes",
    "bracket_of",
    "config_problems",
    "make_pruning",
    "median_prunes",
    "parse_pruner",
    "pruner_of",
    "rung_step",
    "rungs",
]
