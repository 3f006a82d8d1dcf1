"""The claim protocol (docs/protocol.md is its source of truth), one module per concept.

Many agents on many machines share one experiment with no coordinator. They meet only in the
store, through two primitives: ``create`` (create-if-absent: exactly one writer wins a key) and
``replace`` (atomic). Everything here is built on them:

* :mod:`~ablator.lease.membership` -- :class:`Membership`, who this agent is (``host-pid-nonce``)
  and that it is alive: a heartbeat record replaced every ``heartbeat_seconds`` by a background
  thread, listing the (trial, epoch) pairs held and the agent's lease. A holder that has not
  managed to renew for ``lease_seconds - 2 * heartbeat_seconds`` on its own clock fences itself:
  its trials raise :class:`~ablator.errors.LeaseLost` and it stops writing for them.
* :mod:`~ablator.lease.liveness` -- :class:`Liveness`, an observer's judgement of other agents,
  on the observer's own monotonic clock only: a holder is dead when the (agent, counter) value it
  last saw has not changed for the holder's declared lease since its first sight. Wall clocks are
  never compared.
* :mod:`~ablator.lease.state` -- a trial's state from its records (:func:`read_trial`), shared by
  the claimer, ``ablator status``, the operations and analysis.
* :mod:`~ablator.lease.frontier` -- the walk over new indexes: a cursor that starts at a frontier
  hint (O(1) store operations per claim, however many trials exist).
* :mod:`~ablator.lease.claimer` -- :class:`Claimer`, which trial next: released or orphaned
  trials first, then retryable failed ones, then new indexes from the frontier walk, then one gap
  sweep below the budget; and :class:`Held`, a claimed (trial, epoch): ``check()``,
  ``attempt()``, ``fail()``, ``release()``, ``finish()``.
* :mod:`~ablator.lease.fence` -- the one supersession rule (a later claim or a result exists)
  and :class:`AttemptFence`, the fence of a process that writes for an attempt it does not hold
  (a worker).
* :mod:`~ablator.lease.limits` -- :class:`LeaseLimits` and the clock leases are measured on.

What a lease guarantees, and what it does not (docs/protocol.md has the long version): at most
one *result* per trial (``result.msgpack`` is create-if-absent) and at most one holder per
(trial, epoch) (``claim.e<epoch>`` is create-if-absent). It does NOT guarantee that only one
process is running a trial at any instant: a holder that was paused past its lease (SIGSTOP, a
stalled VM, a partition) may still execute steps until it next checks; its writes go under its
own epoch, which a successor never reads past the step it resumed from. Execution is
at-least-once; the result is exactly-once.

Example (what the agent and ``ablator run`` do)::

    membership = Membership(store, LeaseLimits.from_limits(exp.limits), gpus=gpus)
    membership.start()                          # heartbeat written before any claim
    claimer = Claimer(store, membership, budget=budget(exp))
    while (held := claimer.claim_next(new_spec=lambda i: trial_spec(exp, i))) is not None:
        try:
            outcome = run_it(held.spec, fence=held)   # calls held.check() before each write
        except LeaseLost:
            continue                            # somebody else owns the trial now
        held.finish(outcome)                   # the result record, from the trainer's Outcome
    membership.close()
"""

from __future__ import annotations

from ablator.lease.claimer import Claimer, ClaimStats, Held
from ablator.lease.fence import AttemptFence, superseded
from ablator.lease.frontier import DEFAULT_BLOCK, FRONTIER_SHARDS
from ablator.lease.limits import LeaseLimits, default_clock
from ablator.lease.liveness import AgentView, Liveness
from ablator.lease.membership import Membership, new_agent_id
from ablator.lease.state import (
    TAKEABLE,
    TERMINAL,
    TRIAL_STATUSES,
    Budget,
    TrialRecords,
    TrialState,
    TrialStatus,
    Verdict,
    budget_of,
    classify,
    group_by_trial,
    read_budget,
    read_forgiven,
    read_trial,
    scan,
)

__all__ = [
    "DEFAULT_BLOCK",
    "FRONTIER_SHARDS",
    "TAKEABLE",
    "TERMINAL",
    "TRIAL_STATUSES",
    "AgentView",
    "AttemptFence",
    "Budget",
    "ClaimStats",
    "Claimer",
    "Held",
    "LeaseLimits",
    "Liveness",
    "Membership",
    "TrialRecords",
    "TrialState",
    "TrialStatus",
    "Verdict",
    "budget_of",
    "classify",
    "default_clock",
    "group_by_trial",
    "new_agent_id",
    "read_budget",
    "read_forgiven",
    "read_trial",
    "scan",
    "superseded",
]
