"""What a trial attempt returns to its caller (:class:`Outcome`), and what it checks before each
write (:class:`Fence`; :class:`NoFence` for a store nobody else writes)."""

from __future__ import annotations

from typing import Protocol

# The attempt's end is a record-level type (workers send it, agents record it, neither imports
# torch); the trainer's callers import it from here.
from ablator.records import Outcome, OutcomeStatus


class Fence(Protocol):
    """What an attempt checks before each write (metric chunks, checkpoints, pruning records).

    ``check()`` raises :class:`~ablator.errors.LeaseLost` when the attempt may no longer write
    for its trial (the rule is the claim protocol's: :mod:`ablator.lease.fence`; the trainer only
    asks). ``should_stop`` asks the trainer to checkpoint at its next chance and return
    ``"stopped"`` (Ctrl-C, an agent's drain, an operator's stop).
    """

    def check(self) -> None: ...

    @property
    def should_stop(self) -> bool: ...


class NoFence:
    """A fence that never fences: for a store that nobody else writes (tests, a throwaway
    store). :meth:`request_stop` asks the trial to checkpoint and stop."""

    def __init__(self) -> None:
        self._stop = False

    @property
    def should_stop(self) -> bool:
        """Whether a stop was requested."""
        return self._stop

    def request_stop(self) -> None:
        """Ask the trial to checkpoint at its next chance and return."""
        self._stop = True

    def check(self) -> None:
        """Never raises."""


__all__ = ["Fence", "NoFence", "Outcome", "OutcomeStatus"]
