"""``execute_trial``: run one attempt of a trial, either style, against a store.

The caller (an agent's worker, ``ablator run``) has claimed ``(trial, epoch)``; afterwards it
writes the result (or the failure, or a release). In between, ``execute_trial`` resumes from the
newest usable checkpoint on the trial's lineage, writes the attempt record that names it, trains,
and writes metric chunks and checkpoints under its epoch, checking ``fence`` before each write.
"""

from __future__ import annotations

import platform
import socket
import warnings
from collections.abc import Callable
from typing import Any

import msgspec
import torch

from ablator import __version__, layout, records
from ablator import config as config_mod
from ablator.errors import AblatorError, ConfigError, EntryPointError, LeaseLost
from ablator.pruners import PrunerConfig, make_pruning
from ablator.store.base import Store
from ablator.train.context import run_function
from ablator.train.loop import train
from ablator.train.outcome import Fence, Outcome
from ablator.train.progress import ProgressLike, make_progress


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": CUDA if present, else MPS, else CPU. A named device must exist."""
    if isinstance(device, torch.device):
        dev = device
    elif device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise AblatorError(f"device {device!r}: {exc}; use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AblatorError(f"device {str(dev)!r}: CUDA is not available on {socket.gethostname()}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AblatorError(
                f"device {str(dev)!r}: this host has {torch.cuda.device_count()} CUDA device(s)"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise AblatorError(f"device {str(dev)!r}: MPS is not available on {socket.gethostname()}")
    return dev


class AmpWarning(UserWarning):
    """Mixed precision that the device only emulates (bf16 before Ampere): slow, not faster."""


def check_amp(train: Any, dev: torch.device) -> None:
    """Warn when a trial asks for bf16 on a CUDA GPU that has no bf16 units (before Ampere,
    compute capability 8.0): torch emulates it there, slower than fp32, and says nothing."""
    if getattr(train, "amp", None) != "bf16" or dev.type != "cuda":
        return
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    warnings.warn(
        f"train.amp: bf16 on {torch.cuda.get_device_name(index)} (compute capability {major}.{minor}) is "
        "emulated, slower than fp32; use amp: fp16 (or none) on GPUs before Ampere",
        AmpWarning,
        stacklevel=2,
    )


def collect_environment(
    git_commit: str | None = None, device: torch.device | None = None
) -> records.Environment:
    """Where this attempt runs (the attempt record keeps it). ``gpu``: the name of the CUDA
    device it trains on (``device``, else the current one); None for a CPU trial."""
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    gpu = None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        index = (
            device.index if device is not None and device.index is not None else torch.cuda.current_device()
        )
        gpu = torch.cuda.get_device_name(index)
    return records.Environment(
        host=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=str(torch.__version__),
        cuda=cuda,
        gpu=gpu,
        git_commit=git_commit,
        ablator=__version__,
    )


def _on_device(env: records.Environment, dev: torch.device) -> records.Environment:
    """A worker's environment (collected once, on its GPU) for an attempt on ``dev``: a CPU
    attempt names no GPU."""
    if dev.type == "cuda" or env.gpu is None:
        return env
    return msgspec.structs.replace(env, gpu=None)


def trial_config(entry: Any, spec: records.TrialSpec) -> Any:
    """The trial's config object, built from the spec's plain data."""
    return config_mod.from_dict(
        spec.config,
        entry.config_type,
        source=f"trial {spec.index} (config {spec.config_hash[:12]})",
        allow_derived=True,
    )


def execute_trial(
    entry: Any,
    spec: records.TrialSpec,
    store: Store,
    trial: int,
    epoch: int,
    *,
    fence: Fence,
    device: str | torch.device | None = None,
    progress: ProgressLike = True,
    smoke: bool = False,
    metric: tuple[str, str] | None = None,
    agent_id: str = "local",
    environment: records.Environment | None = None,
    on_attempt: Callable[[tuple[int, int] | None], None] | None = None,
    pruner: PrunerConfig | None = None,
) -> Outcome:
    """Run attempt ``epoch`` of ``trial`` and return its :class:`Outcome`.

    ``entry``: what :func:`ablator.entrypoint.resolve_entry` returns (``kind``, ``obj``,
    ``config_type``). ``fence.check()`` raises :class:`~ablator.errors.LeaseLost` when the
    attempt must stop writing (:class:`~ablator.train.outcome.Fence`); ``fence.should_stop`` asks it to checkpoint and return
    ``status="stopped"``. ``metric``: the experiment's ``(name, "min" | "max")`` for best tracking,
    early stopping and plateau schedules. ``progress``: see :func:`~ablator.train.progress.make_progress`.

    The attempt record ``attempt.e<epoch>`` is written here, once the checkpoint to resume from
    is chosen (``on_attempt(resumed_from)`` is called right after). Exceptions propagate: the
    caller records them as the attempt's failure.

    ``pruner``: the experiment's early stopping across trials (``ablator.pruners``; not in smoke
    runs): the trial decides at each value of ``metric`` and may end with status ``pruned``.
    """
    if entry.kind not in ("wrapper", "function"):
        raise EntryPointError(f"entry kind {entry.kind!r}: expected 'wrapper' or 'function'")
    if metric is not None and metric[1] not in ("min", "max"):
        raise ConfigError(f"$.metric.mode: expected 'min' or 'max', found {metric[1]!r}")
    cfg = trial_config(entry, spec)
    dev = resolve_device(device)
    check_amp(getattr(cfg, "train", None), dev)
    shown = make_progress(progress)

    def start_attempt(resumed_from: tuple[int, int] | None) -> None:
        fence.check()
        record = records.Attempt(
            trial=trial,
            epoch=epoch,
            agent_id=agent_id,
            resumed_from=resumed_from,
            environment=_on_device(environment, dev)
            if environment is not None
            else collect_environment(device=dev),
        )
        key = layout.attempt(trial, epoch)
        # Durable: the lineage hangs on it (a torn attempt would cut earlier epochs' rows from
        # the canonical history after a power loss).
        if not store.create(key, records.encode(record), durable=True):
            raise LeaseLost(
                f"trial {trial}: {key!r} exists already; attempt {epoch} was started by someone else"
            )
        if on_attempt is not None:
            on_attempt(resumed_from)

    common: dict[str, Any] = dict(
        spec=spec,
        store=store,
        trial=trial,
        epoch=epoch,
        fence=fence,
        device=dev,
        progress=shown,
        smoke=smoke,
        metric=metric,
        start_attempt=start_attempt,
        pruning=make_pruning(pruner, store, trial, metric=metric, fence=fence, smoke=smoke),
    )
    if entry.kind == "wrapper":
        wrapper = entry.obj() if isinstance(entry.obj, type) else entry.obj
        return train(wrapper, cfg, **common)
    return run_function(entry.obj, cfg, **common)
