"""``TrialContext``: the trial-function style, for code that brings its own loop.

A trial function ``trial(config, ctx) -> dict[str, float]`` can run anything (a Lightning
Trainer, a Hugging Face loop, scikit-learn, a black box) and talks to ablator only through
``ctx``::

    def trial(config: MyConfig, ctx: TrialContext) -> dict[str, float]:
        torch.manual_seed(ctx.seed)
        model = build(config).to(ctx.device)
        opt = torch.optim.Adam(model.parameters())
        start = 0
        if (ckpt := ctx.load_checkpoint()) is not None:   # after building: it restores the RNG too
            state, start = ckpt
            model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        for step in range(start + 1, 1001):
            ...
            if step % 100 == 0:
                ctx.report(step, {"val_accuracy": acc})
                ctx.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict()}, step)
                if ctx.should_stop:
                    break
        return {"val_accuracy": acc}

Metric rows and checkpoints go to the store exactly as for a wrapper trial. A checkpoint's state
must load with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and
dicts (checked at the first save).
"""

from __future__ import annotations

import difflib
import math
import operator
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ablator.config import TrainConfig
from ablator.errors import AblatorError, CheckpointError, exception_text
from ablator.pruners import Pruning
from ablator.records import TrialSpec
from ablator.store.base import Store
from ablator.train import seeding
from ablator.train.checkpoint import Checkpointer, Loaded, deserialize, header, load_latest, serialize
from ablator.train.metrics import MetricWriter
from ablator.train.outcome import Fence, Outcome, OutcomeStatus
from ablator.train.progress import Progress
from ablator.train.writer import StoreWriter


class TrialContext:
    """What a trial function gets besides its config. Attributes: ``config``, ``trial``,
    ``epoch`` (the attempt), ``seed``, ``device``, ``smoke`` (train only a few batches),
    ``resumed_from`` ((epoch, step) of the checkpoint this attempt resumes, or None)."""

    def __init__(
        self,
        *,
        config: Any,
        spec: TrialSpec,
        store: Store,
        trial: int,
        epoch: int,
        fence: Fence,
        device: torch.device,
        progress: Progress,
        smoke: bool,
        metric: tuple[str, str] | None,
        loaded: Loaded | None,
        writer: StoreWriter,
        clock_origin: float,
        pruning: Pruning | None = None,
    ) -> None:
        self.config = config
        self.spec = spec
        self.trial = trial
        self.epoch = epoch
        self.seed = spec.seed
        self.device = device
        self.smoke = smoke
        self.resumed_from = None if loaded is None else (loaded.epoch, loaded.step)
        self._store = store
        self._fence = fence
        self._progress = progress
        self._metric = metric
        self._metric_seen = False  # the experiment metric was reported (the typo check is done)
        self._loaded = loaded
        self._rng_restored = False
        self._writer = writer
        tc = getattr(config, "train", None)
        tc = tc if isinstance(tc, TrainConfig) else None
        self._patience = tc.early_stopping_patience if tc is not None else None
        self._min_delta = tc.early_stopping_min_delta if tc is not None else 0.0
        keep = tc.keep_checkpoints if tc is not None else 2
        start = -1 if loaded is None else loaded.step
        self._rows = MetricWriter(
            store, trial, epoch, writer, fence, start_step=start, clock_origin=clock_origin
        )
        self._ckpt = Checkpointer(store, trial, epoch, writer, fence, keep)
        self._validated = False
        # what a checkpoint carries besides the user's state, so that best and patience survive
        restored = loaded.payload["ctx"] if loaded is not None else {}
        self._latest: dict[str, float] = dict(restored.get("latest", {}))
        self._best_value: float | None = restored.get("best_value")
        self._best_step: int | None = restored.get("best_step")
        self._best_metrics: dict[str, float] = dict(restored.get("best_metrics", {}))
        self._bad_evals: int = restored.get("bad_evals", 0)
        self._pruning = pruning
        if pruning is not None:
            pruning.restore(restored.get("pruning"))  # decided rungs, the curve so far
        self._last_ckpt_step: int | None = None if loaded is None else loaded.step
        self.status: OutcomeStatus | None = None  # "early_stopped" / "diverged" / "pruned" once decided
        self.message = ""
        self._finished = False

    # -- the contract ---------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True when the trial should save a checkpoint and return: early stopping fired, the
        metric diverged, the experiment's pruner pruned the trial (it ends ``pruned``), or the
        agent asked this trial to stop (drain, operator stop)."""
        return self.status is not None or self._fence.should_stop

    def finished(self) -> None:
        """Say that the trial ran to its end. A trial function that returns while a stop was
        requested (:attr:`should_stop` by a drain or an operator's stop) is released -- the next
        holder resumes it from its newest checkpoint, or from scratch -- unless it said so: a
        trial cut short must never be recorded as completed with partial metrics."""
        self._finished = True

    def report(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (numbers or 0-d tensors) at ``step``. A report that carries the
        experiment metric counts as an evaluation for best tracking and early stopping, and is
        where the experiment's pruner decides (then :attr:`should_stop` turns True)."""
        step = _checked_step(step)
        if not isinstance(metrics, Mapping):
            raise AblatorError(
                f"ctx.report(step={step}, ...): metrics must be a dict of name -> number, found {type(metrics).__name__}"
            )
        values = {str(k): _metric_value(k, v, f"ctx.report(step={step})") for k, v in metrics.items()}
        self._check_metric_name(values)
        self._rows.add(step, values)
        self._latest.update(values)
        for name in ("train_loss", "loss"):
            if name in values and not math.isfinite(values[name]):
                self._set_status("diverged", f"{name} is {values[name]} at step {step}")
        important = False
        if self._metric is not None and self._metric[0] in values:
            important = True
            name, mode = self._metric
            value = values[name]
            if not math.isfinite(value):
                self._set_status("diverged", f"{name} is {value} at step {step}")
            else:
                best = self._best_value
                improved = best is None or (
                    value > best + self._min_delta if mode == "max" else value < best - self._min_delta
                )
                if improved:
                    self._best_value, self._best_step, self._bad_evals = value, step, 0
                    self._best_metrics = dict(self._latest)
                else:
                    self._bad_evals += 1
                if self._patience is not None and self._bad_evals >= self._patience:
                    self._set_status("early_stopped", f"no improvement of {name} in {self._patience} reports")
                if self.status is None and self._pruning is not None:
                    why = self._pruning.report(step, value)
                    if why is not None:
                        self._set_status("pruned", why)
        self._progress.update(step, values, important=important)
        if self._rows.due():
            self._rows.flush()
        self._writer.check()

    def save_checkpoint(self, state: Mapping[str, Any], step: int) -> str:
        """Save ``state`` as the checkpoint of ``step`` (metrics reported so far go to the store
        first). Returns its store key."""
        if self._last_ckpt_step is not None and step <= self._last_ckpt_step:
            raise AblatorError(
                f"ctx.save_checkpoint(step={step}): steps must increase; the last checkpoint is at step {self._last_ckpt_step}"
            )
        self._rows.checkpointed(step)  # rows reported so far reach the store before the checkpoint
        payload = header(self.spec, self.trial, self.epoch, step, "function")
        payload["state"] = dict(state)
        payload["rng"] = seeding.capture_rng(self.device)
        payload["ctx"] = {
            "latest": dict(self._latest),
            "best_value": self._best_value,
            "best_step": self._best_step,
            "best_metrics": dict(self._best_metrics),
            "bad_evals": self._bad_evals,
            "pruning": self._pruning.state() if self._pruning is not None else None,
        }
        hint = (
            f"ctx.save_checkpoint(step={step}): the state holds something a checkpoint cannot hold. A "
            "checkpoint may hold only tensors, numbers, strings, None, lists, tuples and dicts "
            "(state_dict() values are fine; convert numpy arrays with torch.from_numpy). Details: "
        )
        try:
            data = serialize(payload)
        except Exception as exc:  # e.g. a lambda, a local class
            # torch.save pickles in memory (the store gets only what weights_only=True loads back):
            # an object it cannot pickle raises PicklingError (matched by name, so that the
            # package never imports pickle), AttributeError or TypeError.
            if not isinstance(exc, (AttributeError, TypeError)) and type(exc).__name__ != "PicklingError":
                raise
            raise CheckpointError(hint + exception_text(exc)) from exc
        if not self._validated:  # fail now, not at resume time, on state that cannot be loaded back
            try:
                deserialize(data, f"ctx.save_checkpoint(step={step})")
            except CheckpointError as exc:
                raise CheckpointError(hint + str(exc)) from exc
            self._validated = True
        self._last_ckpt_step = step
        return self._ckpt.save(step, data, best_step=self._best_step)

    def load_checkpoint(self) -> tuple[dict[str, Any], int] | None:
        """``(state, step)`` of the checkpoint this attempt resumes from, or None. The first call
        also restores the RNG states saved with it: call it after building the model."""
        if self._loaded is None:
            return None
        if not self._rng_restored:
            seeding.restore_rng(self._loaded.payload["rng"], self.device)
            self._rng_restored = True
        return self._loaded.payload["state"], self._loaded.step

    # -- internals ------------------------------------------------------------------------------
    def _check_metric_name(self, values: Mapping[str, float]) -> None:
        """A reported name that is almost the experiment's metric, while the metric itself was
        never reported, is a typo (in the experiment or the trial): caught at the first report
        rather than by ``analyze`` after the whole study."""
        if self._metric is None or self._metric_seen or self._best_value is not None:
            return
        name = self._metric[0]
        if name in values:
            self._metric_seen = True
            return
        close = difflib.get_close_matches(name, list(values), n=1, cutoff=0.8)
        if close:
            raise AblatorError(
                f"ctx.report: the experiment's metric is {name!r} ($.metric.name), which this trial never "
                f"reported, but it reported {close[0]!r}: did you mean {close[0]!r}? Fix the metric name in the "
                "experiment file or the name the trial reports"
            )

    def _set_status(self, status: OutcomeStatus, message: str) -> None:
        if self.status is None:
            self.status, self.message = status, message

    def _finish(self, returned: Any, t_start: float) -> Outcome:
        if returned is None:
            final = dict(self._latest)
        elif isinstance(returned, Mapping):
            try:
                final = {
                    str(k): float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in returned.items()
                }
            except (TypeError, ValueError) as exc:
                raise AblatorError(
                    f"trial {self.trial}: the trial function must return dict[str, float]: {exc}"
                ) from exc
        else:
            raise AblatorError(
                f"trial {self.trial}: the trial function returned {type(returned).__name__}; expected dict[str, float] or None"
            )
        if (
            self._metric is not None
            and self._best_value is None
            and self._metric[0] not in final
            and self.status is None  # a pruned, diverged or drained trial may end before its first evaluation
            and not self._fence.should_stop
        ):
            reported = sorted(set(self._latest) | set(final))
            raise AblatorError(
                f"trial {self.trial}: the experiment's metric {self._metric[0]!r} ($.metric.name) was never reported "
                f"nor returned (reported: {', '.join(reported) or 'nothing'}); report it with "
                f"ctx.report(step, {{{self._metric[0]!r}: value}}) or return it, or fix the experiment's metric"
            )
        self._rows.flush()
        self._writer.drain()
        status = self.status
        if status is None:
            # Returning while a stop was requested is a preemption, checkpointed or not (a
            # release), unless the trial said it finished.
            status = "stopped" if self._fence.should_stop and not self._finished else "completed"
        if self._pruning is not None and status in ("completed", "early_stopped"):
            self._pruning.finished()  # the median rule learns from finished curves
        return Outcome(
            status=status,
            metrics=final,
            best=dict(self._best_metrics),
            best_step=self._best_step,
            steps=max(self._rows.last_step, 0),
            duration_s=time.monotonic() - t_start,
            setup_s=self._rows.warmup_s(),
            resumed_from=self.resumed_from,
            message=self.message,
            checkpoint_step=self._ckpt.last_step,
        )


MAX_STEP = 2**53
"""The largest step ``ctx.report`` takes: steps are stored and plotted as float64 too, which
holds every whole number up to 2**53 exactly."""


def _metric_value(name: Any, value: Any, where: str) -> float:
    """``value`` as a float: a number, a 0-d (or one-element) tensor or numpy scalar; anything
    else is an :class:`AblatorError` naming the metric, not a bare ``ValueError``."""
    try:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise AblatorError(
                    f"{where}: metric {str(name)!r} is a tensor of {value.numel()} values; report one number "
                    "(e.g. .mean())"
                )
            return float(value.detach().item())
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise AblatorError(
            f"{where}: metric {str(name)!r} must be a number (or a one-value tensor), found {type(value).__name__}"
        ) from None


def _checked_step(step: Any) -> int:
    """``step`` as an int, or an :class:`AblatorError` saying what a step must be."""
    if isinstance(step, bool):
        raise AblatorError(f"ctx.report(step={step!r}): step must be a whole number (an int), not a bool")
    try:
        value = operator.index(step)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise AblatorError(
            f"ctx.report(step={step!r}): step must be a whole number (an int: the batch, update or epoch "
            f"count), found {type(step).__name__}"
        ) from None
    if not 0 <= value <= MAX_STEP:
        raise AblatorError(f"ctx.report(step={value}): step must be between 0 and 2**53, found {value}")
    return value


def run_function(
    fn: Callable[[Any, TrialContext], Any],
    config: Any,
    *,
    spec: TrialSpec,
    store: Store,
    trial: int,
    epoch: int,
    fence: Fence,
    device: torch.device,
    progress: Progress,
    smoke: bool,
    metric: tuple[str, str] | None,
    start_attempt: Callable[[tuple[int, int] | None], None],
    pruning: Pruning | None = None,
) -> Outcome:
    """Run one attempt of a trial function."""
    t_start = time.monotonic()
    seeding.seed_everything(spec.seed)
    loaded = None if smoke else load_latest(store, trial, epoch, spec, kind="function")
    start_attempt(None if loaded is None else (loaded.epoch, loaded.step))
    writer = StoreWriter(name=f"ablator-writer-{trial}-{epoch}")
    try:
        ctx = TrialContext(
            config=config,
            spec=spec,
            store=store,
            trial=trial,
            epoch=epoch,
            fence=fence,
            device=device,
            progress=progress,
            smoke=smoke,
            metric=metric,
            loaded=loaded,
            writer=writer,
            clock_origin=t_start,
            pruning=pruning,
        )
        progress.start(trial=trial, epoch=epoch, total=None, initial=0 if loaded is None else loaded.step)
        tc = getattr(config, "train", None)
        with seeding.deterministic_mode(tc.deterministic if isinstance(tc, TrainConfig) else False):
            returned = fn(config, ctx)
        return ctx._finish(returned, t_start)
    finally:
        writer.close()
        progress.close()
