"""Checkpoints in the store: serialise, verify, load, choose the one to resume from, prune.

A checkpoint is a plain ``torch.save`` file (zip format) holding a dict of tensors and plain
data, so a user can open it with ``torch.load(path, weights_only=True)``. Nothing is pickled:
loading uses ``weights_only=True`` only, and the writer keeps every value to the types that
loader accepts (RNG states as tensors and lists, configs as plain data).

Loading verifies the zip's CRC-32 of every entry first: torch's own reader does not check them,
and a flipped bit in a tensor would otherwise load silently.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ablator import config, layout, lineage
from ablator.errors import CheckpointError, LeaseLost
from ablator.records import TrialSpec
from ablator.store.base import NO_LIMIT, Store
from ablator.train.outcome import Fence
from ablator.train.writer import StoreWriter

FORMAT = "ablator-checkpoint"
VERSION = 1

log = logging.getLogger("ablator.train")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used (corrupt, truncated, unreadable) and an older one was tried."""


def serialize(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as the bytes of a ``torch.save`` file."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return buf.getvalue()


def deserialize(
    data: bytes, key: str = "<bytes>", map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Verify and load a checkpoint; CheckpointError naming ``key`` when it is corrupt,
    truncated, or holds something ``weights_only`` refuses."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {key!r} ({len(data)} bytes) is truncated or not a checkpoint: {exc}"
        ) from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint {key!r} is corrupt: CRC mismatch in its entry {bad!r}")
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad bytes
        raise CheckpointError(
            f"checkpoint {key!r} cannot be loaded with weights_only=True: {_torch_reason(exc)}"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {key!r} is not an ablator checkpoint (no format marker)")
    return obj


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _torch_reason(exc: BaseException) -> str:
    """The part of torch's load error that says what was refused, without its terminal colours
    and without its advice to load with ``weights_only=False`` (ablator never does: that would
    run code from the store)."""
    text = _ANSI.sub("", str(exc))
    m = re.search(r"WeightsUnpickler error: (.*?)(?: Please use `torch\.serialization|\n|$)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def header(spec: TrialSpec, trial: int, epoch: int, step: int, kind: str) -> dict[str, Any]:
    """The fields every checkpoint carries besides its state."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "trial": trial,
        "epoch": epoch,
        "step": step,
        "config_hash": spec.config_hash,
        "config": spec.config,
        "seed": spec.seed,
    }


def check_config(payload: Mapping[str, Any], spec: TrialSpec, key: str) -> None:
    """Refuse a checkpoint written for a different config (hash), showing the differences."""
    if payload.get("config_hash") == spec.config_hash:
        return
    diff = config.diff(payload.get("config") or {}, spec.config)
    lines = "\n".join(f"  {path}: {old!r} (checkpoint) -> {new!r} (now)" for path, old, new in diff)
    raise CheckpointError(
        f"checkpoint {key!r} belongs to a different config (hash {str(payload.get('config_hash'))[:12]} "
        f"vs {spec.config_hash[:12]}):\n{lines or '  (only fields outside the plain config differ)'}\n"
        "Resume it with the config it was trained with, or start the trial in another store."
    )


@dataclass(frozen=True)
class Loaded:
    """The checkpoint an attempt resumes from."""

    epoch: int
    step: int
    key: str
    payload: dict[str, Any]


def load_latest(
    store: Store,
    trial: int,
    epoch: int,
    spec: TrialSpec,
    *,
    kind: str,
    map_location: str | torch.device = "cpu",
) -> Loaded | None:
    """The newest usable checkpoint on attempt ``epoch``'s lineage, or None.

    A corrupt, truncated or vanished checkpoint is reported (:class:`CheckpointWarning`) and the
    previous one tried. One from a different config raises :class:`CheckpointError` with the diff.
    """
    for ep, step, key in lineage.checkpoint_candidates(store, trial, epoch):
        data = store.get(key, max_bytes=NO_LIMIT)  # as large as the model: not a record's limit
        if data is None:  # pruned since it was listed
            continue
        try:
            payload = deserialize(data, key, map_location)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; trying the previous checkpoint", CheckpointWarning, stacklevel=2)
            continue
        check_config(payload, spec, key)
        if payload.get("kind") != kind:
            raise CheckpointError(
                f"checkpoint {key!r} was written by a {payload.get('kind')!r} trial, this entry is a {kind!r} one"
            )
        if payload.get("step") != step:
            warnings.warn(
                f"checkpoint {key!r} says step {payload.get('step')}, its name says {step}; trying the previous",
                CheckpointWarning,
                stacklevel=2,
            )
            continue
        return Loaded(ep, step, key, payload)
    return None


class Checkpointer:
    """Writes this attempt's checkpoints through the writer thread and keeps the newest ``keep``
    plus the best one. Deletes only its own epoch's checkpoints, and never one that a later
    attempt resumed from."""

    def __init__(
        self, store: Store, trial: int, epoch: int, writer: StoreWriter, fence: Fence, keep: int
    ) -> None:
        self.store = store
        self.trial = trial
        self.epoch = epoch
        self.writer = writer
        self.fence = fence
        self.keep = max(1, keep)
        self.steps: list[int] = []  # this attempt's checkpoints, oldest first (writer thread only)
        self.last_step: int | None = None  # the newest checkpoint submitted

    def save(self, step: int, data: bytes, *, best_step: int | None) -> str:
        """Queue checkpoint ``step`` (after any metric chunk queued before it)."""
        key = layout.checkpoint(self.trial, self.epoch, step)
        self.last_step = step
        self.writer.submit(lambda: self._write(step, key, data, best_step))
        return key

    def _write(self, step: int, key: str, data: bytes, best_step: int | None) -> None:
        self.fence.check()
        if not self.store.create(key, data, durable=True):
            # Our epoch is ours alone: another body here means a second writer for this epoch.
            raise LeaseLost(
                f"checkpoint {key!r} already exists with other content: another writer holds this epoch"
            )
        self.steps.append(step)
        self._prune(best_step)

    def _prune(self, best_step: int | None) -> None:
        keep = set(self.steps[-self.keep :])
        if best_step is not None:
            keep.add(best_step)
        doomed = [s for s in self.steps if s not in keep]
        if not doomed:
            return
        self.fence.check()  # a holder that lost its trial must not delete what a successor may need
        protected = self._resumed_by_successors()
        for s in doomed:
            if s in protected:
                continue
            self.store.delete(layout.checkpoint(self.trial, self.epoch, s))
            self.steps.remove(s)

    def _resumed_by_successors(self) -> set[int]:
        # Takeovers claim epochs in order (e+1 needs e), so probing claims upward from ours finds
        # every successor; usually the first probe misses and this costs one request.
        out: set[int] = set()
        e = self.epoch + 1
        while self.store.exists(layout.claim(self.trial, e)):
            att = lineage.read_attempt(self.store, self.trial, e)
            if att is not None and att.resumed_from is not None and att.resumed_from[0] == self.epoch:
                out.add(att.resumed_from[1])
            e += 1
        return out
