"""Benchmark: real agent processes on a local store.

    python benchmarks/agents.py                      # 1, 2, 4 agents; takeover at two leases
    python benchmarks/agents.py --trials 2000 --agents 1 2 4 8

1. **Throughput**: no-op trials (a trial function that returns at once) through the agents'
   reused worker processes, as real trials run: claim, attempt record, the trial, result record
   (durable). Each agent has one CPU slot. Timed from the first claim to the last result, by
   the records' own timestamps (one machine, one clock), so agent start-up (importing torch in
   each worker) is not counted.
2. **Takeover**: agent A holds a long trial; A is SIGKILLed; the time until B's attempt record
   for the trial, against the lease (target: within lease + 2 heartbeats), for two observers:
   ``waiting`` -- B was up with a free slot before the kill; ``fresh`` -- B is started right
   after the kill (on this host it sees that A's process is gone; elsewhere it would age A's
   heartbeat on the store's clock), so its own start-up (importing torch) is in the time.
3. **Ray Tune** (only if ``ray`` is importable): the same number of trivial function trials
   through Ray Tune with ``reuse_actors=True``, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ablator import layout, records  # noqa: E402
from ablator.experiment import experiment_from_dict  # noqa: E402
from ablator.ops import launch  # noqa: E402
from ablator.store import open_store  # noqa: E402

ENTRY_MODULE = """
import os
import time

from ablator.config import BaseConfig


class NoopConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    x: float = 0.0
    hold_file: str = ""


def trial(config: NoopConfig, ctx) -> dict:
    if not config.hold_file:
        return {"score": config.x}
    step = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        step = loaded[1]
    while not os.path.exists(config.hold_file):
        step += 1
        time.sleep(0.05)
        ctx.report(step, {"score": float(step)})
        ctx.save_checkpoint({"step": step}, step)
    return {"score": float(step)}
"""


def _experiment(trials: int, *, hold_file: str = "", lease: float = 30.0, heartbeat: float = 2.0) -> Any:
    return experiment_from_dict(
        {
            "name": "bench-agents",
            "entry": "bench_noop_entry:trial",
            "config": {"hold_file": hold_file},
            "metric": {"name": "score", "mode": "max"},
            "design": {"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}},
            "limits": {"lease_seconds": lease, "heartbeat_seconds": heartbeat, "stall_seconds": 600},
            "resources": {"gpu": "none"},
        }
    )


def _start_agent(store: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "ablator.agent", store, "--cpu", "--quiet", *extra],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ABLATOR_CACHE_DIR"] = str(work / "cache")
    env["ABLATOR_LOCK_DIR"] = str(work / "locks")
    return env


def _code_dir(work: Path) -> Path:
    code = work / "code"
    code.mkdir(exist_ok=True)
    (code / "bench_noop_entry.py").write_text(ENTRY_MODULE)
    return code


def throughput(work: Path, n_agents: int, trials: int) -> tuple[float, float]:
    """(trials per second, seconds) for ``trials`` no-op trials through ``n_agents`` agents.

    The agents start with ``--watch`` on a one-trial experiment; once every one of them is up
    (its heartbeat is in the store), ``launch --extend`` releases the measured trials to all
    of them at once, and ``stop`` ends the run."""
    from ablator.ops import stop

    store_url = str(work / f"store-{n_agents}")
    exp = _experiment(1)
    code = _code_dir(work)
    launch(exp, store_url, code_dir=code)
    env = _env(work)
    procs = [
        _start_agent(store_url, env, work / f"tp-{n_agents}-{i}.log", "--watch") for i in range(n_agents)
    ]
    store = open_store(store_url)
    deadline = time.monotonic() + 600
    while len(store.list(layout.AGENTS_DIR)) < n_agents or store.get(layout.result(0)) is None:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"agents did not start: see {work}")
        time.sleep(0.05)
    launch(exp, store_url, code_dir=code, extend=trials)
    lowest = 1  # every trial below this one has a result; poll rarely, not to slow the agents
    while lowest <= trials:
        while lowest <= trials and store.exists(layout.result(lowest)):
            lowest += 1
        time.sleep(0.25)
    stop(store_url)
    for i, p in enumerate(procs):
        if p.wait(600) != 0:
            raise SystemExit(f"agent {i} failed:\n{(work / f'tp-{n_agents}-{i}.log').read_text()}")
    first_claim, last_result = float("inf"), 0.0
    for t in range(1, trials + 1):
        claim = records.decode(store.read(layout.claim(t, 0)), records.Claim)
        result = records.decode(store.read(layout.result(t)), records.Result)
        first_claim = min(first_claim, claim.wall_time)
        last_result = max(last_result, result.wall_time)
    span = last_result - first_claim
    return trials / span, span


def takeover(work: Path, lease: float, heartbeat: float, observer: str = "waiting") -> float:
    """Seconds from SIGKILL of the holder to the new holder's attempt record; ``observer``:
    ``waiting`` (B up before the kill) or ``fresh`` (B started after it)."""
    store_url = str(work / f"takeover-{lease:g}")
    hold = work / f"hold-{lease:g}"
    launch(
        _experiment(1, hold_file=str(hold), lease=lease, heartbeat=heartbeat),
        store_url,
        code_dir=_code_dir(work),
    )
    env = _env(work)
    store = open_store(store_url)
    a = _start_agent(store_url, env, work / f"to-a-{lease:g}.log")
    deadline = time.monotonic() + 300
    while not any(e.key.endswith(".pt") for e in store.list(layout.ckpt_dir(0))):
        if time.monotonic() > deadline:
            raise SystemExit("the first agent never checkpointed")
        time.sleep(0.05)
    if observer == "waiting":
        b = _start_agent(store_url, env, work / f"to-b-{lease:g}.log")
        while len(store.list(layout.AGENTS_DIR)) < 2:  # B is up, with its free slot waiting
            time.sleep(0.05)
        time.sleep(2 * heartbeat)  # B has observed A's heartbeat at least once
    killed = time.time()
    a.send_signal(signal.SIGKILL)
    a.wait()
    if observer == "fresh":
        b = _start_agent(store_url, env, work / f"to-b-{lease:g}.log")
    while store.get(layout.attempt(0, 1)) is None:
        if time.monotonic() > deadline + 300:
            raise SystemExit("no takeover")
        time.sleep(0.01)
    att = records.decode(store.read(layout.attempt(0, 1)), records.Attempt)
    hold.touch()
    b.wait(300)
    return att.wall_time - killed


def ray_tune(trials: int) -> float | None:
    try:
        from ray import tune  # type: ignore[import-not-found]
    except ImportError:
        return None

    def trivial(config: dict[str, Any]) -> dict[str, float]:
        return {"score": config["x"]}

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        trivial,
        param_space={"x": tune.uniform(0.0, 1.0)},
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True, max_concurrent_trials=2),
    )
    tuner.fit()
    return trials / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="no-op trials per throughput run")
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument(
        "--leases", type=float, nargs="+", default=[2.0, 6.0], help="lease seconds to test takeover at"
    )
    ap.add_argument("--repeat", type=int, default=3, help="takeovers per lease (median)")
    ap.add_argument(
        "--observers",
        nargs="+",
        default=["waiting", "fresh"],
        choices=["waiting", "fresh"],
        help="who takes over",
    )
    ap.add_argument("--skip-throughput", action="store_true", help="only the takeover part")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ablator-bench-agents-"))
    print(f"machine: {os.cpu_count()} CPUs; work folder {work}")
    try:
        if not args.skip_throughput:
            print(
                f"\nno-op trials through reused workers ({args.trials} trials, one CPU slot per agent, local store)"
            )
        best: dict[int, float] = {}
        for n in [] if args.skip_throughput else args.agents:
            rate, span = throughput(work, n, args.trials)
            best[n] = rate
            print(f"  {n} agent(s): {rate:8.1f} trials/s  ({args.trials} trials in {span:.2f} s)")
        if 4 in best:
            verdict = "meets" if best[4] >= 100 else "MISSES"
            print(f"  target >= 100 trials/s with 4 agents: {verdict} ({best[4]:.1f})")

        print("\ntakeover: SIGKILL of the holder -> the new holder's attempt record")
        for observer in args.observers:
            for lease in args.leases:
                hb = round(lease / 5, 3)
                times = []
                for r in range(args.repeat):
                    folder = work / f"takeover-{observer}-{lease:g}-{r}"
                    folder.mkdir()
                    times.append(takeover(folder, lease, hb, observer))
                med = statistics.median(times)
                bound = lease + 2 * hb
                verdict = "within" if max(times) <= bound else "OVER"
                shown = ", ".join(f"{t:.2f}" for t in times)
                print(
                    f"  {observer:>7} observer, lease {lease:g} s, heartbeat {hb:g} s: median {med:.2f} s "
                    f"({shown}); {verdict} lease + 2 heartbeats = {bound:.2f} s",
                    flush=True,
                )

        ray_rate = None if args.skip_throughput else ray_tune(args.trials)
        if args.skip_throughput:
            pass
        elif ray_rate is None:
            print(
                "\nRay Tune: skipped (ray is not installed; the issue's figures for this machine kind: 0.78 trials/s "
                "with its defaults, 15.3 trials/s with reuse_actors=True, 200 trivial trials)"
            )
        else:
            ours = best.get(2) or max(best.values())  # (throughput ran: best is filled)
            print(
                f"\nRay Tune (reuse_actors=True, 2 concurrent): {ray_rate:.1f} trials/s; "
                f"ablator with 2 agents / Ray: {ours / ray_rate:.1f}x"
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
