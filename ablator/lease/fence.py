"""The fence: whether an attempt may still write for its trial (docs/protocol.md "Writing under
a lease").

One rule decides that a holder was superseded (:func:`superseded`): a later epoch was claimed (a
takeover: epochs are consecutive, so ``claim.e<epoch + 1>`` exists) or the trial has a result.
:class:`~ablator.lease.claimer.Held` applies it for the agent that holds the claim;
:class:`AttemptFence` for a process that writes for an attempt without holding the membership
(the agent's worker processes, ``ablator run`` on a private store). Both satisfy
:class:`ablator.train.Fence`, the interface the trainer checks before every write.
"""

from __future__ import annotations

import math
import threading
import time

from ablator import layout
from ablator.errors import LeaseLost
from ablator.store.base import Store


def superseded(store: Store, trial: int, epoch: int) -> str | None:
    """Why the holder of (``trial``, ``epoch``) may no longer write, or None: a later epoch was
    claimed or a result exists. Two stats; a store error propagates (it is not a verdict)."""
    if store.exists(layout.claim(trial, epoch + 1)):
        return f"taken over (claim.e{epoch + 1:04d} exists)"
    if store.exists(layout.result(trial)):
        return "a result already exists"
    return None


class AttemptFence:
    """The fence of one attempt written from a process that does not hold the membership.

    ``check()`` raises :class:`~ablator.errors.LeaseLost` (and remembers why, in :attr:`lost`)
    once ``time.monotonic()`` passes :attr:`valid_until` (the agent renews it after each
    heartbeat; past it the agent is paused, cut off or dead) or once :func:`superseded` says so.
    :meth:`request_stop` asks the trainer to checkpoint and return (:attr:`should_stop`).
    """

    def __init__(self, store: Store, trial: int, epoch: int, *, valid_until: float = math.inf) -> None:
        self.store = store
        self.trial = trial
        self.epoch = epoch
        #: ``time.monotonic()`` deadline of the lease as the agent last renewed it.
        self.valid_until = valid_until
        #: Why the attempt may no longer write (sticky; the LeaseLost message), or None.
        self.lost: str | None = None
        self._stop = threading.Event()

    @property
    def should_stop(self) -> bool:
        """Whether the trainer was asked to checkpoint and return."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the trainer to checkpoint at its next chance and return ("stopped")."""
        self._stop.set()

    def check(self) -> None:
        """Raise LeaseLost unless this attempt may still write."""
        if self.lost is None:
            why = (
                "the agent has not renewed its lease in time (paused or cut off from the store)"
                if time.monotonic() > self.valid_until
                else superseded(self.store, self.trial, self.epoch)
            )
            if why is not None:
                self.lost = f"trial {self.trial} epoch {self.epoch}: {why}; stopped writing"
        if self.lost is not None:
            raise LeaseLost(self.lost)
