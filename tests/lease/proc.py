"""A real agent process for the protocol tests: ``python tests/lease/proc.py MODE --store URL ...``.

It speaks JSON lines on stdout (one event per line, flushed) so that the test can follow it, and
it is killed with SIGKILL/SIGSTOP/SIGCONT by the tests. Modes:

* ``stress``: claim new trials until there are none, finishing each (claim, attempt, result);
  prints ``{"claimed": [...]}`` at the end.
* ``hold``: claim ``--trials`` trials and keep them: every 0.1 s, for each one, ``check()`` then
  write a metrics chunk under its epoch; prints ``held``, ``wrote``, ``lost`` events; after
  losing a trial it tries ``finish()`` on it and prints whether that was refused.
* ``take``: claim whatever becomes claimable (takeovers) until ``--want`` trials were taken,
  writing one chunk and finishing each if ``--finish``. With ``--watch-leases N`` it prints
  ``{"watched": [agents]}`` once its own liveness view has watched every other agent it sees
  for more than N of their leases and judged each alive at the end (a test synchronises on that
  instead of sleeping: on a loaded machine a process may start watching seconds late);
  ``--end-after-watch`` then ends the watch (``took_all``) right there.

``--skew-hours`` shifts ``time.time`` in this process before ablator is imported (records carry
the skewed wall time; the protocol must not care). ``--die-after-claim`` SIGKILLs the process
right after its first claim was created and before any heartbeat could list it (heartbeats after
the first block forever).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["stress", "hold", "take"])
    p.add_argument("--store", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--lease", type=float, default=1.5)
    p.add_argument("--hb", type=float, default=0.3)
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--want", type=int, default=1)
    p.add_argument("--finish", action="store_true")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--host", default=None)
    p.add_argument("--go", default=None, help="wait for this file to exist before claiming")
    p.add_argument("--skew-hours", type=float, default=0.0)
    p.add_argument("--die-after-claim", action="store_true")
    p.add_argument("--max-takeovers", type=int, default=5)
    p.add_argument("--watch-leases", type=float, default=0.0)
    p.add_argument("--end-after-watch", action="store_true")
    args = p.parse_args()

    if args.skew_hours:
        real = time.time
        offset = args.skew_hours * 3600.0
        time.time = lambda: real() + offset  # before ablator (and msgspec defaults) see it

    from ablator import layout, records
    from ablator.errors import LeaseLost
    from ablator.lease import Claimer, LeaseLimits, Membership
    from ablator.store import open_store

    store: Any = open_store(args.store)  # a Store, wrapped by the counting and dying proxies
    counter = _Counting(store)
    store = counter
    if args.die_after_claim:
        store = _DieAfterClaim(store)
    limits = LeaseLimits(
        lease_seconds=args.lease, heartbeat_seconds=args.hb, max_takeovers=args.max_takeovers
    )
    membership = Membership(store, limits, host=args.host)
    membership.start()
    claimer = Claimer(store, membership, budget=args.budget, poll_s=args.hb)
    emit(agent=membership.agent_id, pid=os.getpid(), wall=time.time())

    def spec(i: int) -> records.TrialSpec:
        return records.TrialSpec(index=i, config={"i": i}, config_hash=f"h{i}", seed=i)

    if args.go:
        while not os.path.exists(args.go):
            time.sleep(0.01)

    deadline = time.monotonic() + args.seconds
    if args.mode == "stress":
        claimed = []
        while time.monotonic() < deadline:
            held = claimer.claim_next(spec)
            if held is None:
                if claimer.done():
                    break
                time.sleep(0.02)
                continue
            held.attempt()
            held.finish(records.Outcome(status="completed", metrics={"x": float(held.trial)}))
            claimed.append([held.trial, held.epoch])
        emit(claimed=claimed, stats=vars(claimer.stats), ops=dict(counter.ops))
        membership.close()
        return 0

    if args.mode == "hold":
        helds: list[Any] = []
        while len(helds) < args.trials and time.monotonic() < deadline:
            h = claimer.claim_next(spec)
            if h is None:
                time.sleep(0.05)
                continue
            h.attempt()
            helds.append(h)
        emit(held=[[h.trial, h.epoch] for h in helds])
        step = 0
        live = list(helds)
        while live and time.monotonic() < deadline:
            step += 1
            for h in list(live):
                try:
                    h.check()
                    key = layout.metrics(h.trial, h.epoch, step)
                    store.create(
                        key, records.encode(records.MetricsChunk(trial=h.trial, epoch=h.epoch, rows=[]))
                    )
                    emit(wrote=key)
                except LeaseLost as exc:
                    emit(lost=[h.trial, h.epoch], reason=str(exc))
                    live.remove(h)
                    try:
                        h.finish(records.Outcome(status="completed", metrics={"zombie": 1.0}))
                        emit(finished_after_loss=[h.trial, h.epoch])
                    except LeaseLost:
                        emit(finish_refused=[h.trial, h.epoch])
            time.sleep(0.1)
        emit(exit=True)
        membership.close()
        return 0

    # take
    took: list[Any] = []
    watch = _Watch(claimer.liveness, membership.agent_id, args.watch_leases)
    while len(took) < args.want and time.monotonic() < deadline:
        h = claimer.claim_next(spec)
        if h is None:
            if args.finish and claimer.done():
                break  # every trial has a result: nothing left to take
            if watch.done():
                emit(watched=watch.seen)
                if args.end_after_watch:
                    break
            time.sleep(0.05)
            continue
        took.append([h.trial, h.epoch])
        emit(took=[h.trial, h.epoch])
        if args.finish:
            try:
                h.check()
                store.create(
                    layout.metrics(h.trial, h.epoch, 1),
                    records.encode(records.MetricsChunk(trial=h.trial, epoch=h.epoch, rows=[])),
                )
                emit(
                    finished=[h.trial, h.epoch],
                    won=h.finish(records.Outcome(status="completed", metrics={"x": 1.0})),
                )
            except LeaseLost as exc:
                emit(lost=[h.trial, h.epoch], reason=str(exc))
    emit(took_all=took)
    if args.finish:
        membership.close()
    else:
        # keep holding (heartbeat running) until the test ends us
        threading.Event().wait(args.seconds)
    return 0


class _Watch:
    """How long this agent's liveness view has watched the others (on its own monotonic clock,
    as liveness itself does): :meth:`done` is True once, when every other agent seen has been
    in view for more than ``leases`` of its own lease and is judged alive now."""

    def __init__(self, liveness: Any, me: str, leases: float) -> None:
        self.liveness = liveness
        self.me = me
        self.leases = leases
        self.first: dict[str, float] = {}
        self.seen: list[str] = []
        self.reported = leases <= 0

    def done(self) -> bool:
        if self.reported:
            return False
        now = time.monotonic()
        views = {a: v for a, v in self.liveness.agents.items() if a != self.me}
        for a in views:
            self.first.setdefault(a, now)
        if not views or any(now - self.first[a] <= self.leases * v.lease_s for a, v in views.items()):
            return False
        if any(self.liveness.is_dead(a) is not False for a in views):
            return False  # a verdict of dead is the test's to see (a claim), not a watch's end
        self.reported = True
        self.seen = sorted(views)
        return True


class _Counting:
    """Counts store operations by name (all threads)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.ops: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._inner, name)
        if name in ("read", "get", "list", "list_dirs", "stat", "exists", "create", "replace", "delete"):

            def counted(*a: object, **k: object) -> object:
                key = f"{name} {a[0]}".split("/")[0] if a else name
                self.ops[key] = self.ops.get(key, 0) + 1
                return attr(*a, **k)

            return counted
        return attr


class _DieAfterClaim:
    """A store that lets the first heartbeat through, blocks every later one, and SIGKILLs the
    process as soon as a claim was created: the holder dies between its claim and any heartbeat
    that could list it."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self._beats = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        if key.startswith("agents/"):
            self._beats += 1
            if self._beats > 1:
                threading.Event().wait()  # never returns
        self._inner.replace(key, data, durable=durable)  # type: ignore[attr-defined]

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        won = self._inner.create(key, data, durable=durable)  # type: ignore[attr-defined]
        if won and "/claim." in key:
            emit(claimed_then_dying=key)
            os.kill(os.getpid(), signal.SIGKILL)
        return bool(won)


if __name__ == "__main__":
    raise SystemExit(main())
