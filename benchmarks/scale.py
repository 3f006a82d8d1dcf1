"""Benchmark: what the claim protocol costs in store requests with many agents (a simulation).

    python benchmarks/scale.py                         # 10, 100 and 1000 agents, 1-minute trials
    python benchmarks/scale.py --agents 10 100 --minutes 6 --dead 1000

Many in-process agents (each a real :class:`~ablator.lease.Membership` and
:class:`~ablator.lease.Claimer`) share one in-memory store behind a request-counting wrapper
(:class:`~ablator.store.counting.CountingStore`: each call is one S3 request, a LIST one per page
of 1000 keys) and one fake clock, driven by an event queue: no sleeping, so 1000 agents x minutes
of simulated time run in seconds to minutes of real time. Each agent does what the agent process
does with one slot: a heartbeat every ``heartbeat_seconds`` (replace + the stop check), claim the
next trial, write its attempt record, check its lease every heartbeat while the trial runs
(``Held.check``: 2 looks), write the result and the log, claim again. The trainer's own writes
(metric chunks, checkpoints) depend on the user's code and are not counted.

Printed per run: store requests per claim (inside ``claim_next``, liveness scans included), per
claimed trial (everything: heartbeats, lease checks, attempt, result, log) and per agent-minute
(all of them, and those on
``agents/`` -- liveness -- apart), LIST requests per agent-minute, and the S3 request cost per 1000
trials at list prices (PUT, COPY, POST, LIST: $0.005 per 1000; GET, HEAD: $0.0004 per 1000;
DELETE free). Counted in the steady state: after the first ``--warmup`` simulated minutes (the
first claims of every agent, its first sight of every other agent).

What should hold (issue 11): a claim costs O(1) requests, and an agent's idle cost (heartbeats,
liveness scans) does not grow with the number of agents, nor with agents that died (``--dead``).
``--release 0.1`` makes a tenth of the trial ends releases (preemption): each release is a hint
every other agent reads once (``agents/released/<id>.msgpack``, at most 8 per scan) and
looks at once (``exists`` of the next epoch's claim: taken over already?).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ablator import layout, records  # noqa: E402
from ablator.errors import LeaseLost  # noqa: E402
from ablator.lease import Claimer, Held, LeaseLimits, Membership  # noqa: E402
from ablator.store import memory  # noqa: E402
from ablator.store.clock import StoreClock  # noqa: E402
from ablator.store.counting import CountingStore  # noqa: E402

PUT_PER_1000 = 0.005  # USD, S3 Standard: PUT, COPY, POST, LIST
GET_PER_1000 = 0.0004  # USD: GET, HEAD and the rest
PUT_CLASS = ("create", "replace", "list")
GET_CLASS = ("read", "stat")


class Clock:
    """The simulated time every agent reads (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SimAgent:
    membership: Membership
    claimer: Claimer
    held: Held | None = None
    trials: int = 0
    generation: int = 0  # bumped per claimed trial: a trial's lease checks stop with it


def _spec(i: int) -> records.TrialSpec:
    return records.TrialSpec(index=i, config={"x": i}, config_hash=f"h{i}", seed=i)


@dataclass
class Run:
    agents: int
    dead: int
    trials: int
    minutes: float
    requests: int
    agents_area: int
    lists: int
    puts: int
    gets: int
    wall_s: float
    claim_requests: int = 0
    claims: int = 0
    releases: int = 0

    @property
    def per_trial(self) -> float:
        return self.requests / max(self.trials, 1)

    @property
    def per_claim(self) -> float:
        return self.claim_requests / max(self.claims, 1)

    @property
    def per_agent_minute(self) -> float:
        return self.requests / (self.agents * self.minutes)

    @property
    def cost_per_1000_trials(self) -> float:
        dollars = self.puts / 1000 * PUT_PER_1000 + self.gets / 1000 * GET_PER_1000
        return dollars / max(self.trials, 1) * 1000


def simulate(
    n: int,
    *,
    minutes: float,
    warmup: float,
    trial_s: float,
    limits: LeaseLimits,
    dead: int = 0,
    seed: int = 0,
    release: float = 0.0,
) -> Run:
    name = f"bench-scale-{os.getpid()}-{n}-{dead}-{seed}"
    clock = Clock()
    inner = memory.MemoryStore(name, clock=clock)  # keys stamped on the simulated clock
    store = CountingStore(inner)
    rng = random.Random(seed)
    hb = limits.heartbeat_seconds
    # Agents that ran once and died (their last heartbeat is still there).
    for k in range(dead):
        Membership(inner, limits, clock=clock, host="gone", agent_id=f"gone-{k}-x", versions={}).beat()
    # Enough trials that no agent runs out: each walks its own blocks of 16 new indexes.
    budget = int(n * (minutes * 60 / trial_s + 3)) + n * 64
    sims: list[SimAgent] = []
    for k in range(n):
        m = Membership(store, limits, clock=clock, host=f"h{k}", agent_id=f"sim-{k}-x", versions={})
        c = Claimer(store, m, budget=budget, rng=random.Random(rng.random()))
        # The store's clock carried forward on the simulated one too (ages of heartbeats, claims).
        c.store_clock = StoreClock(store, every_s=limits.lease_seconds, clock=clock)
        sims.append(SimAgent(m, c))
    seq = itertools.count()
    events: list[tuple[float, int, int, str]] = []

    def at(t: float, k: int, what: str) -> None:
        heapq.heappush(events, (t, next(seq), k, what))

    for k in range(n):
        # Agents start within one heartbeat interval of each other, as a fleet does.
        start = clock.t + rng.uniform(0, hb)
        at(start, k, "start")
    end = clock.t + minutes * 60
    counting_from = clock.t + warmup * 60
    counted = False
    trials_counted = 0
    claim_requests = 0  # requests made inside claim_next (scans included), counted part only
    claims = 0
    releases = 0
    t0 = time.perf_counter()
    while events:
        t, _, k, what = heapq.heappop(events)
        if t >= end:
            break
        clock.t = t
        if not counted and t >= counting_from:
            store.reset()
            counted = True
        a = sims[k]
        if what == "start":
            a.membership.beat()
            at(t + hb, k, "beat")
            at(t, k, "claim")
        elif what == "beat":
            a.membership.beat()
            at(t + hb, k, "beat")
        elif what == "claim":
            before = store.total()
            held = a.claimer.claim_next(_spec)
            if counted:
                claim_requests += store.total() - before
                claims += held is not None
            if held is None:
                at(t + 1.0, k, "claim")  # the agent's idle back-off
                continue
            held.attempt()
            a.held = held
            a.generation += 1
            at(t + trial_s * rng.uniform(0.9, 1.1), k, "finish")
            at(t + hb, k, f"check {a.generation}")
        elif what.startswith("check"):
            if a.held is not None and what == f"check {a.generation}":
                try:
                    a.held.check()
                except LeaseLost:
                    a.held = None
                    at(t, k, "claim")
                    continue
                at(t + hb, k, what)
        elif what == "finish":
            held = a.held
            if held is None:
                continue
            a.held = None
            if release and rng.random() < release:
                # Preempted (a drain, a spot reclaim): released, resumed by whoever takes it.
                held.release("preempted")
                if counted:
                    releases += 1
                at(t, k, "claim")
                continue
            held.finish(records.Outcome(status="completed", metrics={"score": 1.0}))
            store.replace(layout.log(held.trial, held.epoch), b"log")  # the agent saves the log
            a.trials += 1
            if counted:
                trials_counted += 1
            at(t, k, "claim")
    wall = time.perf_counter() - t0
    span = (minutes - warmup) if counted else minutes
    run = Run(
        agents=n,
        dead=dead,
        trials=trials_counted,
        minutes=span,
        requests=store.total(),
        agents_area=store.total(where="agents"),
        lists=store.total("list"),
        puts=sum(store.total(op) for op in PUT_CLASS),
        gets=sum(store.total(op) for op in GET_CLASS),
        wall_s=wall,
        claim_requests=claim_requests,
        claims=claims,
        releases=releases,
    )
    memory.clear(name)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--minutes", type=float, default=5.0, help="simulated minutes per run")
    p.add_argument("--warmup", type=float, default=2.0, help="simulated minutes not counted")
    p.add_argument("--trial-seconds", type=float, default=60.0)
    p.add_argument("--lease", type=float, default=120.0)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--dead", type=int, nargs="+", default=[0], help="dead agents' heartbeats in the store")
    p.add_argument(
        "--release",
        type=float,
        default=0.0,
        help="fraction of trial ends that are releases (preemption), resumed by whoever takes them over",
    )
    args = p.parse_args(argv)
    limits = LeaseLimits(lease_seconds=args.lease, heartbeat_seconds=args.heartbeat)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"simulated: {args.trial_seconds:g} s trials, lease {args.lease:g} s, heartbeat {args.heartbeat:g} s, "
        f"{args.minutes:g} min per run ({args.warmup:g} min warm-up not counted); "
        f"{args.release:.0%} of trial ends are releases; "
        f"load average {'/'.join(f'{x:.1f}' for x in load) if load else 'unknown'}"
    )
    header = (
        f"{'agents':>6} {'dead':>5} {'trials':>6} {'req/claim':>9} {'req/trial':>9} {'req/agent-min':>13} "
        f"{'agents/ req/agent-min':>21} {'LIST/agent-min':>14} {'S3 $/1000 trials':>16} {'releases':>8} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for dead in args.dead:
        for n in args.agents:
            r = simulate(
                n,
                minutes=args.minutes,
                warmup=args.warmup,
                trial_s=args.trial_seconds,
                limits=limits,
                dead=dead,
                release=args.release,
            )
            print(
                f"{r.agents:>6} {r.dead:>5} {r.trials:>6} {r.per_claim:>9.1f} {r.per_trial:>9.1f} "
                f"{r.per_agent_minute:>13.1f} "
                f"{r.agents_area / (r.agents * r.minutes):>21.1f} {r.lists / (r.agents * r.minutes):>14.2f} "
                f"{r.cost_per_1000_trials:>16.4f} {r.releases:>8} {r.wall_s:>7.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
