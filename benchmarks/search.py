"""Search that learns across agents: early stopping (ASHA, median rule) and TPE, against Optuna.

    python benchmarks/search.py                 # both parts, 20 TPE seeds: a few minutes on 2 cores
    python benchmarks/search.py --part pruning  # or: --part tpe; --seeds 5 --trials 60

**(a) Pruning.** A sweep of 81 configurations whose learning curves are known: configuration
``c`` reaches ``final_c * (1 - exp(-step / tau_c))`` (finals in [0.5, 0.95], time constants
log-uniform in [2, 20] steps, so slow starters cross fast ones) plus evaluation noise (sd 0.003),
evaluated every 3 steps up to 81 steps. Four workers run the trials concurrently: a step of
configuration ``c`` takes ``d_c`` (0.5 to 1.5) units of a simulated clock, and the workers'
reports are handled in that clock's order (one process, deterministic; the store is a real local
folder and every decision goes through it, as in agents). Compute is counted in trial-steps.
Contenders in the same run, same curves, same order of reports:

* full training (every trial to step 81);
* ablator ASHA (``{kind: asha, min_steps: 9 (or 3), reduction_factor: 3, max_steps: 81}``) and
  Optuna's ``SuccessiveHalvingPruner(min_resource=9 (or 3), reduction_factor=3)`` on one study;
* ablator's asynchronous Hyperband (the same with ``brackets: 3``: first rungs at 3, 9 and 27),
  and Optuna's ``HyperbandPruner(min_resource=3, max_resource=81, reduction_factor=3)`` (its own
  bracket count and assignment, so not the same decisions);
* ablator's median rule (``{kind: median, warmup_steps: 9, min_trials: 5}``) and Optuna's
  ``MedianPruner(n_startup_trials=5, n_warmup_steps=9)``.

Target: ASHA within 1% of full training's best final metric for a third of its compute or less.

**(b) TPE regret** after 20/40/60 trials, median over seeds, on Hartmann-6 (minimum -3.32237)
and a mixed space (a float, a log-int and a categorical; minimum 0). Trials take 1 to 1.5 units
of a simulated clock; when a trial ends, its agent learns the result and claims the next one, in
that clock's order. Contenders in the same run:

* ablator, 1 agent and 4 agents: ``ablator.tpe.TpeDesign`` objects (one per agent) over one
  local store, driven like the agent loop drives them (choose / claimed / finished / published);
* sequential Optuna TPE (one worker, ``TPESampler(n_startup_trials=10)``);
* a shared Optuna study with 4 concurrent workers (``constant_liar=True``), as with an RDB storage.

Targets: 1 agent equal to sequential Optuna; 4 agents no worse than the shared Optuna study.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from ablator.pruners import Asha, Median, Pruning  # noqa: E402
from ablator.space import load_space  # noqa: E402
from ablator.store import open_store  # noqa: E402
from ablator.tpe import TpeDesign  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# --- (a) pruning ---------------------------------------------------------------------------------

N_CONFIGS = 81
MAX_STEPS = 81
EVAL_EVERY = 3
WORKERS = 4


@dataclass(frozen=True)
class Curve:
    final: float
    tau: float
    step_time: float
    noise: tuple[float, ...]  # one draw per evaluation

    def value(self, step: int) -> float:
        return self.final * (1 - math.exp(-step / self.tau)) + self.noise[step // EVAL_EVERY - 1]


TAU = (2.0, 20.0)  # time constants of the curves, in steps (log-uniform)


def make_curves(seed: int) -> list[Curve]:
    rng = random.Random(seed)
    return [
        Curve(
            final=rng.uniform(0.5, 0.95),
            tau=math.exp(rng.uniform(math.log(TAU[0]), math.log(TAU[1]))),
            step_time=rng.uniform(0.5, 1.5),
            noise=tuple(rng.gauss(0, 0.003) for _ in range(MAX_STEPS // EVAL_EVERY)),
        )
        for _ in range(N_CONFIGS)
    ]


Decide = Callable[[int, int, float], bool]  # (trial, step, value) -> prune?


def sweep(
    curves: list[Curve], start: Callable[[int], Decide], finish: Callable[[int, float], None]
) -> dict[str, float]:
    """Run every configuration on ``WORKERS`` concurrent workers in simulated time; ``start(t)``
    gives trial ``t``'s decision function, ``finish(t, final)`` is called when it completes."""
    queue = list(range(len(curves)))
    events: list[tuple[float, int, int, int]] = []  # (time, worker, trial, step)
    decide: dict[int, Decide] = {}
    spent = 0
    finals: dict[int, float] = {}

    def begin(worker: int, now: float) -> None:
        if queue:
            t = queue.pop(0)
            decide[t] = start(t)
            heapq.heappush(events, (now + curves[t].step_time * EVAL_EVERY, worker, t, EVAL_EVERY))

    for w in range(WORKERS):
        begin(w, 0.0)
    while events:
        now, w, t, step = heapq.heappop(events)
        spent += EVAL_EVERY
        value = curves[t].value(step)
        pruned = decide[t](t, step, value)
        if step == MAX_STEPS:
            finals[t] = value
            finish(t, value)
        if pruned or step == MAX_STEPS:
            begin(w, now)
        else:
            heapq.heappush(events, (now + curves[t].step_time * EVAL_EVERY, w, t, step + EVAL_EVERY))
    return {"compute": spent, "best": max(finals.values()), "completed": len(finals)}


def run_ablator(curves: list[Curve], cfg: Asha | Median, root: str) -> dict[str, float]:
    store = open_store(os.path.join(root, f"prune-{uuid.uuid4().hex[:8]}"))
    pruners: dict[int, Pruning] = {}

    def start(t: int) -> Decide:
        pruners[t] = Pruning(cfg, store, t, metric="accuracy", mode="max")
        # at the last step the compute is spent: the trial completes (as the training loop does)
        return lambda t, step, value: pruners[t].report(step, value) is not None and step < MAX_STEPS

    return sweep(curves, start, lambda t, final: pruners[t].finished())


def run_optuna(curves: list[Curve], pruner: optuna.pruners.BasePruner) -> dict[str, float]:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trials: dict[int, Any] = {}

    def start(t: int) -> Decide:
        trials[t] = study.ask()

        def decide(t: int, step: int, value: float) -> bool:
            trials[t].report(value, step)
            if step < MAX_STEPS and trials[t].should_prune():
                study.tell(trials[t], state=optuna.trial.TrialState.PRUNED)
                return True
            return False

        return decide

    def finish(t: int, final: float) -> None:
        study.tell(trials[t], final)

    return sweep(curves, start, finish)


def run_full(curves: list[Curve]) -> dict[str, float]:
    return sweep(curves, lambda t: lambda t, s, v: False, lambda t, f: None)


def pruning_part(seeds: list[int], root: str) -> None:
    asha3 = Asha(min_steps=3, reduction_factor=3, max_steps=MAX_STEPS)
    asha9 = Asha(min_steps=9, reduction_factor=3, max_steps=MAX_STEPS)
    hyperband = Asha(min_steps=3, reduction_factor=3, max_steps=MAX_STEPS, brackets=3)
    median = Median(warmup_steps=9, min_trials=5)
    sha = optuna.pruners.SuccessiveHalvingPruner
    contenders: list[tuple[str, Callable[[list[Curve]], dict[str, float]]]] = [
        ("full training", run_full),
        ("ablator ASHA min 9", lambda c: run_ablator(c, asha9, root)),
        ("optuna SH min 9", lambda c: run_optuna(c, sha(min_resource=9, reduction_factor=3))),
        ("ablator ASHA min 3", lambda c: run_ablator(c, asha3, root)),
        ("optuna SH min 3", lambda c: run_optuna(c, sha(min_resource=3, reduction_factor=3))),
        ("ablator Hyperband 3 br.", lambda c: run_ablator(c, hyperband, root)),
        (
            "optuna HyperbandPruner",
            lambda c: run_optuna(c, optuna.pruners.HyperbandPruner(3, MAX_STEPS, reduction_factor=3)),
        ),
        ("ablator median rule", lambda c: run_ablator(c, median, root)),
        ("optuna MedianPruner", lambda c: run_optuna(c, optuna.pruners.MedianPruner(5, 9))),
    ]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in contenders}
    t0 = time.perf_counter()
    for seed in seeds:
        curves = make_curves(seed)
        for name, fn in contenders:
            rows[name].append(fn(curves))
    print(
        f"\n(a) pruning: {N_CONFIGS} configurations x {MAX_STEPS} steps, evaluations every {EVAL_EVERY}, "
        f"{WORKERS} concurrent workers; time constants {TAU[0]:g}-{TAU[1]:g} steps; "
        f"{len(seeds)} sweeps (seeds {seeds[0]}..{seeds[-1]}), means over sweeps, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(
        f"{'contender':22s} {'trial-steps':>12s} {'of full':>8s} {'best final':>11s} {'vs full':>8s} "
        f"{'completed':>10s} {'worst sweep':>12s} {'sweeps <=1%':>12s}"
    )
    full = rows["full training"]
    for name, _ in contenders:
        r = rows[name]
        compute = statistics.mean(x["compute"] for x in r)
        share = statistics.mean(x["compute"] / f["compute"] for x, f in zip(r, full, strict=True))
        gap = statistics.mean((f["best"] - x["best"]) / f["best"] for x, f in zip(r, full, strict=True))
        worst = max((f["best"] - x["best"]) / f["best"] for x, f in zip(r, full, strict=True))
        best = statistics.mean(x["best"] for x in r)
        done = statistics.mean(x["completed"] for x in r)
        within = sum((f["best"] - x["best"]) / f["best"] <= 0.01 for x, f in zip(r, full, strict=True))
        print(
            f"{name:22s} {compute:12.0f} {share:8.1%} {best:11.4f} {-gap:+8.2%} {done:10.1f} "
            f"{-worst:+12.2%} {within:>6d} of {len(r):<3d}"
        )
    for name in ("ablator ASHA min 9", "ablator ASHA min 3"):
        a = rows[name]
        share = statistics.mean(x["compute"] / f["compute"] for x, f in zip(a, full, strict=True))
        gap = statistics.mean((f["best"] - x["best"]) / f["best"] for x, f in zip(a, full, strict=True))
        met = share <= 1 / 3 and gap <= 0.01
        print(
            f"target (within 1% of full training's best final for <= 1/3 of its compute), {name}, on average: "
            f"{share:.1%} of the compute, {gap:.2%} below -> {'met' if met else 'NOT met'}"
        )
    for ours, theirs in (
        ("ablator ASHA min 9", "optuna SH min 9"),
        ("ablator ASHA min 3", "optuna SH min 3"),
        ("ablator median rule", "optuna MedianPruner"),
    ):
        same = all(x == o for x, o in zip(rows[ours], rows[theirs], strict=True))
        print(f"{ours} and {theirs}: same compute, best and completed trials in every sweep: {same}")


# --- (b) TPE regret ------------------------------------------------------------------------------

_A = [
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
]
_P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]
_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(p: dict[str, Any]) -> float:
    x = [p[f"x{i}"] for i in range(6)]
    return -sum(
        _ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - _P[i][j]) ** 2 for j in range(6))) for i in range(4)
    )


def mixed(p: dict[str, Any]) -> float:
    return (
        (p["x"] - 0.3) ** 2 * 4
        + (math.log2(p["n"]) - 3) ** 2 / 9
        + {"relu": 0.0, "gelu": 0.15, "tanh": 0.5}[p["act"]]
        + (p["y"] - 0.7) ** 2
    )


PROBLEMS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], float], float]] = {
    "hartmann6": ({f"x{i}": {"range": [0.0, 1.0]} for i in range(6)}, hartmann6, -3.32237),
    "mixed": (
        {
            "x": {"range": [0.0, 1.0]},
            "y": {"range": [0.0, 1.0]},
            "n": {"range": [1, 256], "log": True, "int": True},
            "act": {"choice": ["relu", "gelu", "tanh"]},
        },
        mixed,
        0.0,
    ),
}


def simulate(
    n_trials: int,
    workers: int,
    seed: int,
    ask: Callable[[int, int], dict[str, Any]],
    tell: Callable[[int, int, float], None],
    f: Callable[[dict[str, Any]], float],
) -> list[float]:
    """Run ``n_trials`` on ``workers`` concurrent workers in simulated time: ``ask(worker, index)``
    claims trial ``index``, ``tell(worker, index, value)`` reports it. Values in completion order."""
    rng = random.Random(seed * 7919 + workers)
    events: list[tuple[float, int, int, dict[str, Any]]] = []
    nxt = 0
    done: list[float] = []
    for w in range(min(workers, n_trials)):
        heapq.heappush(events, (1 + rng.uniform(0, 0.5), w, nxt, ask(w, nxt)))
        nxt += 1
    while events:
        now, w, i, params = heapq.heappop(events)
        value = f(params)
        tell(w, i, value)
        done.append(value)
        if nxt < n_trials:
            heapq.heappush(events, (now + 1 + rng.uniform(0, 0.5), w, nxt, ask(w, nxt)))
            nxt += 1
    return done


def run_ablator_tpe(problem: str, seed: int, agents: int, n: int, root: str) -> tuple[list[float], int]:
    space_spec, f, _ = PROBLEMS[problem]
    space = load_space(space_spec)
    store = open_store(os.path.join(root, f"tpe-{uuid.uuid4().hex[:8]}"))
    designs = [TpeDesign(store, space, metric="y", mode="min", seed=seed) for _ in range(agents)]
    params: dict[int, dict[str, Any]] = {}

    def ask(w: int, i: int) -> dict[str, Any]:
        overrides, params[i] = designs[w].choose(i, i)
        designs[w].claimed(i, 0, params[i])
        return overrides

    def tell(w: int, i: int, value: float) -> None:
        designs[w].finished(i, value)  # the worker's outcome: learned before the next claim
        designs[w].published(i, 0, params[i], value)

    values = simulate(n, agents, seed, ask, tell, f)
    return values, sum(d.random_draws for d in designs)


def run_optuna_tpe(problem: str, seed: int, workers: int, n: int) -> tuple[list[float], int]:
    space_spec, f, _ = PROBLEMS[problem]
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, constant_liar=workers > 1)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    trials: dict[int, Any] = {}
    random_draws = [0]

    def ask(w: int, i: int) -> dict[str, Any]:
        finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        random_draws[0] += finished < 10  # Optuna's start-up counts finished trials only
        t = trials[i] = study.ask()
        out: dict[str, Any] = {}
        for name, spec in space_spec.items():
            if "choice" in spec:
                out[name] = t.suggest_categorical(name, spec["choice"])
            elif spec.get("int"):
                out[name] = t.suggest_int(
                    name, spec["range"][0], spec["range"][1], log=spec.get("log", False)
                )
            else:
                out[name] = t.suggest_float(
                    name, spec["range"][0], spec["range"][1], log=spec.get("log", False)
                )
        return out

    def tell(w: int, i: int, value: float) -> None:
        study.tell(trials[i], value)

    return simulate(n, workers, seed, ask, tell, f), random_draws[0]


def regret(values: list[float], k: int, optimum: float) -> float:
    return min(values[:k]) - optimum


def tpe_part(seeds: list[int], n: int, root: str) -> None:
    checkpoints = [k for k in (20, 40, 60) if k <= n] or [n]
    t0 = time.perf_counter()
    print(f"\n(b) TPE regret, median over {len(seeds)} seeds, {n} trials; n_startup_trials 10")
    print(
        f"{'problem':10s} {'contender':34s} "
        + " ".join(f"{'@' + str(k):>8s}" for k in checkpoints)
        + "  random draws"
    )
    summary: dict[tuple[str, str], list[float]] = {}  # regret at the last checkpoint, per seed
    for problem in PROBLEMS:
        optimum = PROBLEMS[problem][2]
        results: dict[str, list[list[float]]] = {}
        draws: dict[str, list[int]] = {}
        for seed in seeds:
            for agents in (1, 4):
                vals, rnd = run_ablator_tpe(problem, seed, agents, n, root)
                results.setdefault(f"ablator, {agents} agent{'s' if agents > 1 else ''}", []).append(vals)
                draws.setdefault(f"ablator, {agents} agent{'s' if agents > 1 else ''}", []).append(rnd)
            for workers, name in ((1, "optuna sequential"), (4, "optuna shared study, 4 workers")):
                vals, rnd = run_optuna_tpe(problem, seed, workers, n)
                results.setdefault(name, []).append(vals)
                draws.setdefault(name, []).append(rnd)
        for name in (
            "ablator, 1 agent",
            "optuna sequential",
            "ablator, 4 agents",
            "optuna shared study, 4 workers",
        ):
            med = [statistics.median(regret(v, k, optimum) for v in results[name]) for k in checkpoints]
            summary[(problem, name)] = [regret(v, checkpoints[-1], optimum) for v in results[name]]
            shown = f"{statistics.median(draws[name]):.0f}"
            print(f"{problem:10s} {name:34s} " + " ".join(f"{m:8.4f}" for m in med) + f"  {shown:>12s}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    from scipy.stats import mannwhitneyu

    last = checkpoints[-1]
    for problem in PROBLEMS:
        for ours, theirs in (
            ("ablator, 1 agent", "optuna sequential"),
            ("ablator, 4 agents", "optuna shared study, 4 workers"),
        ):
            a, b = summary[(problem, ours)], summary[(problem, theirs)]
            p_two = mannwhitneyu(a, b, alternative="two-sided").pvalue
            p_worse = mannwhitneyu(a, b, alternative="greater").pvalue  # ours has higher regret?
            print(
                f"{problem}: regret@{last} {ours} {statistics.median(a):.4f} vs {theirs} "
                f"{statistics.median(b):.4f}; Mann-Whitney over seeds: two-sided p = {p_two:.2f}, "
                f"p(ours worse) = {p_worse:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["pruning", "tpe", "both"], default="both")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--sweeps", type=int, default=10, help="pruning sweeps (curve sets)")
    args = ap.parse_args(argv)
    print(f"ablator search benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ablator-search-") as root:
        if args.part in ("pruning", "both"):
            pruning_part(list(range(args.sweeps)), root)
        if args.part in ("tpe", "both"):
            tpe_part(list(range(args.seeds)), args.trials, root)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
