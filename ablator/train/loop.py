"""The training loop for :class:`~ablator.train.wrapper.ModelWrapper` trials.

:func:`train` reads top to bottom: set up (seed, data, model, optimizer, schedule, AMP), resume
from a checkpoint, then the loop over epochs and batches with gradient accumulation, clipping,
logging, evaluation, early stopping, divergence checks and checkpoints, then the final outcome.
Hooks of the wrapper run at named points (``on_train_start``, ``on_step_end``, ``on_evaluate``,
``on_checkpoint``, ``on_train_end``).

Between log points nothing leaves the device: the training loss is summed on the device and
synced once per log point (``log_every`` steps and every evaluation). Store writes go through
one background thread. (One exception: with ``amp: fp16`` torch's ``GradScaler`` checks the
gradients for inf/NaN on the host at every optimizer step, a sync per step; bf16 needs no
scaler and no sync.)

Exact resume: a checkpoint holds everything the next steps depend on: weights, optimizer,
schedule, loss scaler, the position inside the epoch, the loss window, best/early-stopping
state and the RNG states. Each epoch's batch order comes from a generator seeded by (trial seed,
epoch), so a resumed attempt rebuilds it, re-reads the batches the checkpoint had consumed
(reproducing any randomness of data loading) and only then restores the global RNG states.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ablator.errors import CheckpointError, ConfigError
from ablator.pruners import Pruning
from ablator.records import OutcomeStatus, TrialSpec
from ablator.store.base import Store
from ablator.train import seeding
from ablator.train.checkpoint import Checkpointer, header, load_latest, serialize
from ablator.train.metrics import MetricWriter
from ablator.train.outcome import Fence, Outcome
from ablator.train.progress import Progress
from ablator.train.state import LoopState, TrainPlan
from ablator.train.wrapper import ModelWrapper, scheduler_unit, train_config
from ablator.train.writer import StoreWriter

SMOKE_STEPS = 3  # optimizer steps of a --smoke run
SMOKE_EVAL_BATCHES = 2
PROGRESS_EVERY_S = 1.0  # between log points, the progress display hears the step count this often


def train(
    wrapper: ModelWrapper[Any],
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
    """Train one attempt of a wrapper trial; see the module docstring. ``pruning``: the
    experiment's pruner (``ablator.pruners``), asked at each evaluation."""
    t_start = time.monotonic()
    tc = train_config(config)
    metric_name, mode = metric if metric is not None else (None, "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"metric mode {mode!r}: expected 'min' or 'max'")

    # --- setup: seed, data, model, optimizer, schedule, mixed precision --------------------
    seeding.seed_everything(spec.seed)
    wrapper.device = device
    wrapper.metric_mode = mode
    config = wrapper.derive(config)
    loaders = wrapper.make_dataloaders(config)
    train_loader, val_loader, test_loader = _split_loaders(loaders, type(wrapper).__name__)
    plan = make_plan(tc, train_loader, smoke=smoke)
    model = wrapper.make_model(config)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{type(wrapper).__name__}.make_model returned {type(model).__name__}, not a torch.nn.Module"
        )
    model = model.to(device)
    optimizer = wrapper.make_optimizer(model, config)
    scheduler = wrapper.make_scheduler(optimizer, config, plan)
    unit = scheduler_unit(tc.scheduler) if scheduler is not None else "train"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and tc.scheduler.step_when is None:
        unit = "val"  # a plateau schedule from make_scheduler needs the metric
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.amp]
    wrapper.amp_dtype = amp_dtype
    scaler = torch.amp.GradScaler(device.type) if tc.amp == "fp16" else None
    state = LoopState(model, optimizer, scheduler, scaler, config, plan)
    loss_sum = torch.zeros((), device=device)  # training loss of the current log window, on device
    micro = 0  # micro-batches in that window

    # --- resume: the newest usable checkpoint on this attempt's lineage ---------------------
    # (a smoke run checks the wiring from scratch: it never resumes)
    loaded = None if smoke else load_latest(store, trial, epoch, spec, kind="wrapper")
    pending_rng: dict[str, Any] | None = None
    if loaded is not None:
        p = loaded.payload
        if p["plan"]["batches_per_epoch"] != plan.batches_per_epoch:
            raise CheckpointError(
                f"checkpoint {loaded.key!r} was taken with {p['plan']['batches_per_epoch']} batches per epoch, "
                f"the data now gives {plan.batches_per_epoch}: the run cannot continue where it stopped"
            )
        model.load_state_dict(p["model"])
        optimizer.load_state_dict(p["optimizer"])
        if scheduler is not None and p["scheduler"] is not None:
            scheduler.load_state_dict(p["scheduler"])
        if scaler is not None and p["scaler"] is not None:
            scaler.load_state_dict(p["scaler"])
        lp = p["loop"]
        state.step, state.train_epoch, state.batch_in_epoch = p["step"], p["train_epoch"], p["batch_in_epoch"]
        state.evals, state.bad_evals = lp["evals"], lp["bad_evals"]
        state.best_value, state.best_step, state.best_loss = (
            lp["best_value"],
            lp["best_step"],
            lp["best_loss"],
        )
        state.best_metrics, state.latest = dict(lp["best_metrics"]), dict(lp["latest"])
        state.stop, state.message = lp["stop"], lp["message"]
        if pruning is not None:
            pruning.restore(lp.get("pruning"))  # decided rungs, the curve so far
        loss_sum = p["window"]["loss_sum"].to(device)
        micro = p["window"]["micro"]
        pending_rng = p["rng"]  # restored once the epoch's consumed batches were re-read
    resumed_from = None if loaded is None else (loaded.epoch, loaded.step)
    start_attempt(resumed_from)

    writer = StoreWriter(name=f"ablator-writer-{trial}-{epoch}")
    rows = MetricWriter(store, trial, epoch, writer, fence, start_step=state.step, clock_origin=t_start)
    ckpt = Checkpointer(store, trial, epoch, writer, fence, tc.keep_checkpoints)
    ckpt_every_s = tc.checkpoint_every_minutes * 60 if tc.checkpoint_every_minutes else math.inf
    last_ckpt_time = last_shown = time.monotonic()
    last_ckpt_step = state.step if loaded is not None else None
    accum = max(1, tc.grad_accum)
    n_batches = plan.batches_per_epoch
    last_group = n_batches % accum or accum  # the epoch's last accumulation group may be short
    last_group_start = n_batches - last_group
    log_every = max(1, tc.log_every)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    status: OutcomeStatus = "completed"

    def evaluate(loader: Any, prefix: str) -> dict[str, float]:
        if loader is None:
            return {}
        _seed_loader(loader, seeding.generator(spec.seed, seeding.STREAM_EVAL_DATA), 0)
        model.eval()
        try:
            values = wrapper.evaluate(model, _Limited(loader, SMOKE_EVAL_BATCHES) if smoke else loader)
        finally:
            model.train()
        return _to_host(values, prefix)

    def save_checkpoint() -> None:
        nonlocal last_ckpt_time, last_ckpt_step
        rows.checkpointed(state.step)  # rows up to this step reach the store before the checkpoint
        at_end = state.batch_in_epoch >= n_batches  # resume at the next epoch's start
        payload = header(spec, trial, epoch, state.step, "wrapper")
        payload.update(
            train_epoch=state.train_epoch + 1 if at_end else state.train_epoch,
            batch_in_epoch=0 if at_end else state.batch_in_epoch,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None,
            rng=seeding.capture_rng(device),
            window={"loss_sum": loss_sum, "micro": micro},
            plan={"batches_per_epoch": n_batches, "total_steps": plan.total_steps},
            loop={
                "evals": state.evals,
                "bad_evals": state.bad_evals,
                "best_value": state.best_value,
                "best_step": state.best_step,
                "best_loss": state.best_loss,
                "best_metrics": dict(state.best_metrics),
                "latest": dict(state.latest),
                "stop": state.stop,  # an early-stopped trial that crashed before its result stays stopped
                "message": state.message,
                "pruning": pruning.state() if pruning is not None else None,
            },
        )
        key = ckpt.save(state.step, serialize(payload), best_step=state.best_step)
        last_ckpt_time, last_ckpt_step = time.monotonic(), state.step
        wrapper.on_checkpoint(state, key)

    progress.start(trial=trial, epoch=epoch, total=plan.total_steps, initial=state.step)
    try:
        with seeding.deterministic_mode(tc.deterministic):
            model.train()
            wrapper.on_train_start(state)
            finished = state.step >= plan.total_steps or state.stop is not None
            while not finished:
                # --- one epoch: its own seeded order; a resumed attempt re-reads what it consumed
                _seed_loader(
                    train_loader,
                    seeding.generator(spec.seed, seeding.STREAM_TRAIN_DATA, state.train_epoch),
                    state.train_epoch,
                )
                batches = iter(train_loader)
                for _ in range(state.batch_in_epoch):
                    next(batches)
                if pending_rng is not None:
                    seeding.restore_rng(pending_rng, device)
                    pending_rng = None
                for batch in batches:
                    state.batch_in_epoch += 1
                    batch = wrapper.to_device(batch)
                    if amp_dtype is None:
                        out = wrapper.loss(model, batch)
                    else:
                        with torch.autocast(device.type, dtype=amp_dtype):
                            out = wrapper.loss(model, batch)
                    loss = out[0] if isinstance(out, tuple) else out
                    if accum > 1:
                        group = last_group if state.batch_in_epoch > last_group_start else accum
                        scaled = loss / group
                    else:
                        scaled = loss
                    if scaler is not None:
                        scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                    loss_sum += loss.detach()
                    micro += 1
                    end_of_epoch = state.batch_in_epoch == n_batches
                    if accum > 1 and state.batch_in_epoch % accum and not end_of_epoch:
                        continue  # accumulate the next micro-batch

                    # --- the optimizer step
                    if scaler is not None:
                        if tc.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip, tc.grad_clip_norm_type)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        if tc.grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip, tc.grad_clip_norm_type)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged below)
                    state.step += 1
                    step = state.step
                    if scheduler is not None and (unit == "train" or (unit == "epoch" and end_of_epoch)):
                        scheduler.step()
                    finished = step >= plan.total_steps
                    is_eval = finished or step % plan.eval_every == 0
                    stop_requested = fence.should_stop
                    now = time.monotonic()

                    # --- log point: the one host sync of the window
                    row: dict[str, float] = {}
                    if is_eval or step % log_every == 0:
                        train_loss = (loss_sum / max(1, micro)).item()
                        loss_sum.zero_()
                        micro = 0
                        row["train_loss"] = train_loss
                        row["lr"] = float(lr)
                        _check_divergence(state, tc, train_loss, step)

                    # --- evaluation, best tracking, early stopping
                    if is_eval and state.stop is None:
                        state.evals += 1
                        row.update(evaluate(val_loader, "val_"))
                        value = _metric_value(metric_name, row, mode)
                        if not math.isfinite(value):
                            state.stop, state.message = "diverged", f"{metric_name} is {value} at step {step}"
                        else:
                            if _improved(value, state.best_value, mode, tc.early_stopping_min_delta):
                                state.best_value, state.best_step, state.bad_evals = value, step, 0
                            else:
                                state.bad_evals += 1
                            patience = tc.early_stopping_patience
                            if patience is not None and state.bad_evals >= patience:
                                state.stop = "early_stopped"
                                state.message = f"no improvement of {metric_name} in {patience} evaluations"
                            if state.stop is None and pruning is not None:
                                # across trials: this value against the others' at this step
                                # (at the last step the compute is spent: the trial completes)
                                why = pruning.report(step, value)
                                if why is not None and not finished:
                                    state.stop, state.message = "pruned", why
                        if scheduler is not None and unit == "val":
                            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                                scheduler.step(value)
                            else:
                                scheduler.step()
                        if (finished or state.stop == "early_stopped") and test_loader is not None:
                            row.update(evaluate(test_loader, "test_"))
                        if state.best_step == step:
                            state.best_metrics = {**state.latest, **row}
                        wrapper.on_evaluate(state, row)

                    if row:
                        state.latest.update(row)
                        rows.add(step, row)
                        progress.update(step, row, train_epoch=state.train_epoch, important=is_eval)
                        last_shown = now
                    elif now - last_shown >= PROGRESS_EVERY_S:
                        # the step count only (no sync): bars move, and an agent's stall clock
                        # hears from a trial whose log points are far apart
                        progress.update(step, {}, train_epoch=state.train_epoch)
                        last_shown = now

                    # --- checkpoint: at evaluations (or every N steps / minutes), on stop, at the end
                    if state.stop == "diverged":
                        break  # a diverged model is not worth a checkpoint
                    want = (
                        finished
                        or stop_requested
                        or state.stop is not None
                        or (tc.checkpoint_every is None and is_eval)
                        or (tc.checkpoint_every is not None and step % tc.checkpoint_every == 0)
                        or (is_eval and state.best_step == step)
                        or now - last_ckpt_time >= ckpt_every_s
                    ) and not (smoke and not finished)
                    if want:
                        if tc.diverge_on_nonfinite and not row and not bool(torch.isfinite(loss_sum)):
                            state.stop, state.message = (
                                "diverged",
                                f"non-finite training loss before step {step}",
                            )
                            break
                        save_checkpoint()
                    elif rows.due():
                        rows.flush()
                    writer.check()
                    wrapper.on_step_end(state)
                    if state.stop is not None:
                        break
                    if stop_requested and not finished:
                        # Released at this checkpoint, resumed by the next holder. A stop that
                        # comes with the last step changes nothing: the trial ran to its end.
                        status = "stopped"
                        break
                    if finished:
                        break
                else:  # the epoch ran out of batches
                    state.train_epoch += 1
                    state.batch_in_epoch = 0
                    continue
                break  # leaving the epoch early: finished, stopped or ended
            if state.stop is not None:
                status = state.stop
            if status != "diverged" and last_ckpt_step != state.step:
                save_checkpoint()  # e.g. a hook set ``stop`` between checkpoints
            if pruning is not None and status in ("completed", "early_stopped"):
                pruning.finished()  # the median rule learns from finished curves
            rows.flush()
            writer.drain()
            wrapper.on_train_end(state)
    finally:
        writer.close()
        progress.close()

    return Outcome(
        status=status,
        metrics=dict(state.latest),
        best=dict(state.best_metrics),
        best_step=state.best_step,
        steps=state.step,
        duration_s=time.monotonic() - t_start,
        setup_s=rows.warmup_s(),
        resumed_from=resumed_from,
        message=state.message,
        checkpoint_step=ckpt.last_step,
    )


# --- helpers, in the order the loop uses them ------------------------------------------------


def _split_loaders(loaders: Any, owner: str) -> tuple[Any, Any, Any]:
    if isinstance(loaders, DataLoader) or not isinstance(loaders, tuple | list):
        loaders = (loaders,)
    if not 1 <= len(loaders) <= 3 or loaders[0] is None:
        raise ConfigError(
            f"{owner}.make_dataloaders must return (train, val) or (train, val, test); got {len(loaders)} values"
        )
    padded = [*loaders, None, None]
    return padded[0], padded[1], padded[2]


def make_plan(tc: Any, train_loader: Any, *, smoke: bool = False) -> TrainPlan:
    """Steps per epoch, total steps, evaluation interval."""
    try:
        n_batches = len(train_loader)
    except TypeError:
        raise ConfigError(
            "the train loader has no length: ablator needs len(train_loader) to plan epochs and resume mid-epoch "
            "(give an IterableDataset a __len__)"
        ) from None
    if n_batches <= 0:
        raise ConfigError("the train loader is empty")
    accum = max(1, tc.grad_accum)
    steps_per_epoch = -(-n_batches // accum)
    if tc.epochs is None and tc.max_steps is None:
        raise ConfigError("$.train: set epochs or max_steps (or both)")
    total = tc.epochs * steps_per_epoch if tc.epochs is not None else tc.max_steps
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)
    if smoke:
        total = min(total, SMOKE_STEPS)
    if total <= 0:
        raise ConfigError(f"$.train: epochs={tc.epochs}, max_steps={tc.max_steps} leave nothing to train")
    if smoke:
        eval_every = total
    elif tc.eval_every is not None:
        if tc.eval_every <= 0:
            raise ConfigError(f"$.train.eval_every: must be positive, got {tc.eval_every}")
        eval_every = tc.eval_every
    else:
        if tc.eval_every_epochs <= 0:
            raise ConfigError(f"$.train.eval_every_epochs: must be positive, got {tc.eval_every_epochs}")
        eval_every = max(1, round(tc.eval_every_epochs * steps_per_epoch))
    total_evals = total // eval_every + (1 if total % eval_every else 0)
    return TrainPlan(
        batches_per_epoch=n_batches,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        epochs=-(-total // steps_per_epoch),
        eval_every=eval_every,
        total_evals=total_evals,
    )


def _seed_loader(loader: Any, gen: torch.Generator, epoch: int) -> None:
    """Give a DataLoader (and its sampler) ``gen``: the order and the worker seeds then depend on
    it alone, never on the global RNG."""
    if not isinstance(loader, DataLoader):
        return
    loader.generator = gen  # workers' base seed (drawn from the global RNG when None)
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if sampler is None:
        sampler = loader.sampler
    if hasattr(sampler, "generator"):
        sampler.generator = gen
    set_epoch = getattr(sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    if loader.num_workers > 0 and loader.worker_init_fn is None:
        loader.worker_init_fn = seeding.seed_worker


class _Limited:
    """The first ``n`` batches of a loader (smoke runs)."""

    def __init__(self, loader: Iterable[Any], n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        try:
            return min(self.n, len(self.loader))  # type: ignore[arg-type]
        except TypeError:
            return self.n


def _to_host(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Prefix and sync evaluation metrics with one device-to-host copy."""
    tensor_names = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    synced: dict[str, float] = {}
    if tensor_names:
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in tensor_names])
        synced = dict(zip(tensor_names, stacked.cpu().tolist(), strict=True))
    return {prefix + k: float(synced[k]) if k in synced else float(v) for k, v in values.items()}


def _check_divergence(state: LoopState, tc: Any, train_loss: float, step: int) -> None:
    if not math.isfinite(train_loss):
        if tc.diverge_on_nonfinite:
            state.stop, state.message = "diverged", f"training loss is {train_loss} at step {step}"
        return
    if step < tc.diverge_warmup_steps:
        return
    if (
        tc.diverge_factor is not None
        and state.best_loss is not None
        and train_loss > tc.diverge_factor * state.best_loss
    ):
        state.stop = "diverged"
        state.message = f"training loss {train_loss:.4g} > {tc.diverge_factor} x best {state.best_loss:.4g} at step {step}"
    if state.best_loss is None or train_loss < state.best_loss:
        state.best_loss = train_loss


def _metric_value(name: str | None, row: Mapping[str, float], mode: str) -> float:
    """The experiment metric in an evaluation row (the default metric: ``val_loss`` when there is a
    validation loader, else ``train_loss``)."""
    if name is None:
        name = "val_loss" if "val_loss" in row else "train_loss"
    if name not in row:
        raise ConfigError(
            f"metric {name!r} is not produced by this trial; at an evaluation it reports {', '.join(sorted(row))}"
        )
    return row[name]


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta
