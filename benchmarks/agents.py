"""Benchmark: real agent processes on a local store.

    python benchmarks/agents.py                      # 1, 2, 4 agents; takeover at two leases
    python benchmarks/agents.py --trials 2000 --agents 1 2 4 8

1. **Throughput**: no-op trials (a trial function that returns at once) through the agents'
   reused worker processes, as real trials run: claim, attempt record, the trial, result record
   (durable). Each agent has one CPU slot. Timed from the first claim to the last result, by
   the records' own timestamps (one machine, one clock), so agent start-up (importing torch in
   each worker) is not counted.
2. **Takeover**: agent A holds a long trial; A is SIGKILLed; the time from A's last heartbeat
   (its file's modification time) to the new holder's claim (``claim.e0001``), against the bound
   lease + 2 heartbeats, for four observers: ``waiting`` -- an agent up with a free slot before
   the kill; ``fresh`` -- an agent started right after the kill; ``run-waiting`` -- ``ablator run
   --trial 0`` already waiting for the trial; ``run-fresh`` -- ``ablator run --trial 0`` started
   after the kill. Each on two hosts: ``same`` (the observer may see that A's pid is gone) and
   ``other`` (A runs with ``$ABLATOR_BOOT_ID`` set, so it looks like another machine's agent and
   is judged on the store's clock, as it would be elsewhere). An observer started after the kill
   cannot act before it is up (importing torch): its bound is the later of A's last heartbeat +
   lease + 2 heartbeats and its own first heartbeat + 2 heartbeats.
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
from typing import Any, NamedTuple

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


OBSERVERS = ("waiting", "fresh", "run-waiting", "run-fresh")
HOSTS = ("same", "other")


class Takeover(NamedTuple):
    """One takeover's times (seconds): from A's last heartbeat and from the kill to B's claim,
    and from the observer's first heartbeat to it (None when it was up before the kill)."""

    from_heartbeat: float
    from_kill: float
    from_up: float | None

    def within(self, lease: float, heartbeat: float) -> bool:
        bound = lease + 2 * heartbeat
        if self.from_up is None:
            return self.from_heartbeat <= bound
        up_after_hb = self.from_heartbeat - self.from_up  # the observer's start, after A's heartbeat
        return self.from_heartbeat <= max(bound, up_after_hb + 2 * heartbeat)


def _start_run(store: str, env: dict[str, str], log: Path, code: Path) -> subprocess.Popen[bytes]:
    """``ablator run --from STORE --store STORE --trial 0`` (the experiment as launched)."""
    env = dict(env, PYTHONPATH=os.pathsep.join([str(code), env["PYTHONPATH"]]))
    with open(log, "wb") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ablator",
                "run",
                "--from",
                store,
                "--store",
                store,
                "--trial",
                "0",
                "--no-progress",
            ],
            cwd=code,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def takeover(
    work: Path, lease: float, heartbeat: float, observer: str = "waiting", host: str = "same"
) -> Takeover:
    """A's SIGKILL and B's takeover of its trial; ``observer``: one of :data:`OBSERVERS`;
    ``host``: ``same`` or ``other`` (A looks like another machine's agent)."""
    store_url = str(work / "store")
    hold = work / "hold"
    code = _code_dir(work)
    launch(_experiment(1, hold_file=str(hold), lease=lease, heartbeat=heartbeat), store_url, code_dir=code)
    env = _env(work)
    env_a = dict(env, ABLATOR_BOOT_ID=f"bench-another-machine-{os.getpid()}") if host == "other" else env
    store = open_store(store_url)
    a = _start_agent(store_url, env_a, work / "a.log")
    deadline = time.monotonic() + 300
    while not any(e.key.endswith(".pt") for e in store.list(layout.ckpt_dir(0))):
        if time.monotonic() > deadline or a.poll() is not None:
            raise SystemExit(f"the first agent never checkpointed: see {work / 'a.log'}")
        time.sleep(0.05)
    holder = records.decode(store.read(layout.claim(0, 0)), records.Claim).agent_id

    def start_b() -> subprocess.Popen[bytes]:
        if observer.startswith("run"):
            return _start_run(store_url, env, work / "b.log", code)
        return _start_agent(store_url, env, work / "b.log")

    def wait_up(b: subprocess.Popen[bytes]) -> float:
        while len(store.list(layout.AGENTS_DIR)) < 2:  # B's first heartbeat
            if b.poll() is not None:
                raise SystemExit(f"the observer exited: see {work / 'b.log'}")
            time.sleep(0.01)
        return time.time()

    if observer in ("waiting", "run-waiting"):
        b = start_b()
        wait_up(b)
        time.sleep(2 * heartbeat)  # B has observed A's heartbeat at least once
    killed = time.time()
    a.send_signal(signal.SIGKILL)
    a.wait()
    up: float | None = None
    if observer in ("fresh", "run-fresh"):
        b = start_b()
        up = wait_up(b)
    while store.get(layout.claim(0, 1)) is None:
        if time.monotonic() > deadline + 300 or b.poll() is not None:
            raise SystemExit(f"no takeover: see {work / 'b.log'}")
        time.sleep(0.01)
    claim = records.decode(store.read(layout.claim(0, 1)), records.Claim)
    # A's last heartbeat, stamped by this machine's clock (a local store): when the world last
    # heard of A. (The bound of the protocol runs from there, not from the kill.)
    last_hb = os.stat(Path(store_url, *layout.agent(holder).split("/"))).st_mtime
    hold.touch()
    if b.wait(300) != 0:
        raise SystemExit(f"the observer failed: see {work / 'b.log'}")
    return Takeover(
        from_heartbeat=claim.wall_time - last_hb,
        from_kill=claim.wall_time - killed,
        from_up=None if up is None else claim.wall_time - up,
    )


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
        "--observers", nargs="+", default=list(OBSERVERS), choices=OBSERVERS, help="who takes over"
    )
    ap.add_argument(
        "--hosts",
        nargs="+",
        default=list(HOSTS),
        choices=HOSTS,
        help="the holder on this host or (seemingly) another",
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

        print(
            "\ntakeover: the holder's last heartbeat -> the new holder's claim (SIGKILL -> claim in brackets; "
            "an observer started after the kill: its own start -> claim too)"
        )
        print(
            f"  load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)"
        )
        for host in args.hosts:
            for observer in args.observers:
                for lease in args.leases:
                    hb = round(lease / 5, 3)
                    runs = []
                    for r in range(args.repeat):
                        folder = work / f"takeover-{host}-{observer}-{lease:g}-{r}"
                        folder.mkdir()
                        runs.append(takeover(folder, lease, hb, observer, host))
                    med = statistics.median(t.from_heartbeat for t in runs)
                    bound = lease + 2 * hb
                    verdict = "within" if all(t.within(lease, hb) for t in runs) else "OVER"
                    shown = ", ".join(
                        f"{t.from_heartbeat:.2f} [{t.from_kill:.2f}"
                        + (f"; up {t.from_up:.2f}]" if t.from_up is not None else "]")
                        for t in runs
                    )
                    print(
                        f"  {host:>5} host, {observer:>11}, lease {lease:g} s / heartbeat {hb:g} s: median {med:.2f} s "
                        f"({shown}); {verdict} the bound (lease + 2 heartbeats = {bound:.2f} s)",
                        flush=True,
                    )
        print(
            f"  load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)"
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
