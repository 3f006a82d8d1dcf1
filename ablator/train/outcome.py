"""What a trial attempt returns to its caller, and the do-nothing fence for local use."""

from __future__ import annotations

from typing import Literal

import msgspec

from ablator.records import ResultStatus

OutcomeStatus = ResultStatus | Literal["stopped"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The end of one attempt.

    ``status``: a :data:`ablator.records.ResultStatus` (the caller writes the result), or
    ``"stopped"``: the fence asked the trial to stop; it checkpointed ``checkpoint_step`` and the
    caller writes a release instead. ``metrics`` are the final values of every metric, ``best``
    the row of the best evaluation (at ``best_step``) of the experiment metric.
    """

    status: OutcomeStatus
    metrics: dict[str, float] = {}
    best: dict[str, float] = {}
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    setup_s: float | None = None  # the warm-up inside duration_s (records.warmup_s), if known
    resumed_from: tuple[int, int] | None = None
    message: str = ""
    checkpoint_step: int | None = None  # the newest checkpoint this attempt wrote


class NoFence:
    """A fence that never fences: for a store that nobody else writes (``ablator run`` on a
    private store, tests). ``should_stop`` can be set to ask the trial to checkpoint and stop."""

    should_stop: bool = False

    def check(self) -> None:
        """Never raises."""
