"""Claim throughput: N processes complete T no-op trials (claim, attempt record, result) against
one store, with ablator's claim protocol, with a bare loop of the store's own primitives doing the
same writes (the floor), and with Optuna's journal file storage (the baseline).

    python benchmarks/claims.py                        # N = 1, 2, 4, 8; T = 2000 local, 300 on S3
    python benchmarks/claims.py --procs 1,8 --trials 800 --repeats 3 --no-s3 --big 0

Every figure is the median of ``--repeats`` runs, the contenders interleaved run by run (a busy
spell on a shared machine then hits all of them; ratios are medians of per-round ratios). All
processes start together (after their imports) and a run ends when the last trial's result is
written. Prints trials/s, the ratios the issue asks for, and the durability of each contender:

* ablator: results are fsynced before they are linked into place (``durable=True``); claims and
  attempt records are not (a crash may lose an unfinished claim: it is then a free index again,
  which is safe because nothing ran to completion under it).
* bare loop: the same writes with the same durability, every process walking the same cursor
  from 0 (no frontier hint, no heartbeat, no spreading).
* Optuna JournalFileBackend: every append is fsynced under one global file lock.

``--no-fsync`` (analysis only) drops the results' fsync in ablator and the bare loop alike, to
show what the protocol itself costs once the disk is out of the picture.

S3 runs against a moto server in this process (every request serialised by one lock, as in the
tests): it measures protocol overhead in requests, not S3's speed. Optuna has no S3 journal.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

_CTX = mp.get_context("spawn")

# --- workers (run in child processes) --------------------------------------------------------


class _NoFsync:
    """``--no-fsync``: the store with results written like claims (not fsynced). An analysis
    mode that shows the protocol's own cost; ablator never runs like this."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        return bool(self._inner.create(key, data, durable=False))


def _open(url: str, fsync: bool) -> Any:
    from ablator.store import open_store

    store = open_store(url)
    return store if fsync else _NoFsync(store)


def _ablator_worker(url: str, trials: int, fsync: bool, go: Any, out: Any) -> None:
    from ablator import records
    from ablator.lease import Claimer, LeaseLimits, Membership

    store = _open(url, fsync)
    m = Membership(store, LeaseLimits(lease_seconds=120, heartbeat_seconds=10))
    m.start()
    c = Claimer(store, m, budget=trials)

    def spec(i: int) -> records.TrialSpec:
        return records.TrialSpec(index=i, config={"lr": 0.001, "i": i}, config_hash="0" * 64, seed=i)

    go.wait()
    n, last = 0, time.monotonic()
    while True:
        held = c.claim_next(spec)
        if held is None:
            if c.done():
                break
            time.sleep(0.05)  # an idle agent polls (real agents: every few seconds)
            continue
        held.attempt()
        held.finish(records.Outcome(status="completed", metrics={"loss": 0.0}))
        n += 1
        last = time.monotonic()
    m.close()
    out.put((n, last, c.stats.lost_races))


def _bare_worker(url: str, trials: int, fsync: bool, go: Any, out: Any) -> None:
    import secrets

    from ablator import layout, records

    store = _open(url, fsync)
    agent = f"bare-{os.getpid()}-{secrets.token_hex(4)}"
    go.wait()
    n, lost, last = 0, 0, time.monotonic()
    for i in range(trials):
        spec = records.TrialSpec(index=i, config={"lr": 0.001, "i": i}, config_hash="0" * 64, seed=i)
        if not store.create(
            layout.claim(i, 0), records.encode(records.Claim(trial=i, epoch=0, agent_id=agent, spec=spec))
        ):
            lost += 1
            continue
        store.create(layout.attempt(i, 0), records.encode(records.Attempt(trial=i, epoch=0, agent_id=agent)))
        store.create(
            layout.result(i),
            records.encode(records.Result(trial=i, epoch=0, agent_id=agent, metrics={"loss": 0.0})),
            durable=True,
        )
        n += 1
        last = time.monotonic()
    out.put((n, last, lost))


def _optuna_worker(path: str, trials: int, fsync: bool, go: Any, out: Any) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(path))
    study = optuna.load_study(
        study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    go.wait()
    study.optimize(lambda t: 0.0, n_trials=trials)
    out.put((trials, time.monotonic(), 0))


# --- running ---------------------------------------------------------------------------------


def _run(
    worker: Callable[..., None], target: str, n: int, per_proc: list[int], fsync: bool
) -> tuple[float, int, int]:
    """Start n processes, release them together; (seconds from release to the last result,
    trials done, lost races)."""
    go = _CTX.Event()
    out = _CTX.Queue()
    procs = [_CTX.Process(target=worker, args=(target, per_proc[k], fsync, go, out)) for k in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.25 * n)  # imports and store setup happen before the start signal
    t0 = time.monotonic()
    go.set()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{worker.__name__} exited with {p.exitcode}")
    done = sum(r[0] for r in results)
    return max(r[1] for r in results) - t0, done, sum(r[2] for r in results)


def _fresh_local(base: str, tag: str) -> str:
    return tempfile.mkdtemp(prefix=f"{tag}-", dir=base)


def _fresh_s3(server: Any, tag: str, counter: list[int]) -> str:
    counter[0] += 1
    name = f"bench-{tag}-{os.getpid()}-{counter[0]}"
    server.make_bucket(name)
    return f"s3://{name}/exp"


def _optuna_target(base: str) -> str:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = os.path.join(_fresh_local(base, "optuna"), "journal.log")
    optuna.create_study(study_name="bench", storage=JournalStorage(JournalFileBackend(path)))
    return path


def _bench_one(
    backend: str,
    n: int,
    trials: int,
    repeats: int,
    optuna_too: bool,
    make_url: Callable[[str], str],
    base: str,
    fsync: bool,
) -> dict[str, Any]:
    """One figure per contender. The contenders run interleaved (ablator, bare, optuna; again;
    ...) so that a busy spell on a shared machine hits all of them, and each ratio is the median
    of per-round ratios."""
    split = [trials // n + (1 if k < trials % n else 0) for k in range(n)]
    rates: dict[str, list[float]] = {"ablator": [], "bare": [], "optuna": []}
    lost: list[float] = []
    for _ in range(repeats):
        runs = [
            ("ablator", _ablator_worker, make_url("ablator"), [trials] * n),
            ("bare", _bare_worker, make_url("bare"), [trials] * n),
        ]
        if optuna_too:
            runs.append(("optuna", _optuna_worker, _optuna_target(base), split))
        for name, worker, target, per in runs:
            dt, done, lost_races = _run(worker, target, n, per, fsync)
            if done != trials:
                raise RuntimeError(f"{name} {backend} N={n}: {done} trials done, expected {trials}")
            rates[name].append(trials / dt)
            if name == "ablator":
                lost.append(lost_races / trials)
    row: dict[str, Any] = {
        "backend": backend,
        "N": n,
        "trials": trials,
        "ablator_lost": statistics.median(lost),
    }
    for name, values in rates.items():
        if values:
            row[name] = statistics.median(values)
    row["vs_bare"] = statistics.median(a / b for a, b in zip(rates["ablator"], rates["bare"], strict=True))
    if optuna_too:
        row["vs_optuna"] = statistics.median(
            a / b for a, b in zip(rates["ablator"], rates["optuna"], strict=True)
        )
    return row


def _print_row(row: dict[str, Any]) -> None:
    line = (
        f"{row['backend']:<6} N={row['N']:<2} T={row['trials']:<6} ablator {row['ablator']:8.1f}/s "
        f"(lost races/trial {row['ablator_lost']:.2f})   bare loop {row['bare']:8.1f}/s   "
        f"ablator/bare {row['vs_bare']:5.2f}"
    )
    if "optuna" in row:
        line += f"   optuna {row['optuna']:8.1f}/s   ablator/optuna {row['vs_optuna']:6.1f}x"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=2000, help="no-op trials per figure on a local folder")
    p.add_argument("--s3-trials", type=int, default=300, help="no-op trials per figure on S3 (moto)")
    p.add_argument("--procs", default="1,2,4,8", help="comma-separated process counts")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is printed)")
    p.add_argument("--big", type=int, default=20000, help="trials for the per-trial cost check (0: skip)")
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--no-optuna", action="store_true")
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="analysis only: do not fsync results (ablator and bare loop), to show the protocol's own cost",
    )
    p.add_argument("--dir", default=None, help="folder for the local stores (default: a temp folder)")
    args = p.parse_args(argv)
    procs = [int(x) for x in args.procs.split(",") if x]
    base = args.dir or tempfile.mkdtemp(prefix="ablator-bench-")
    os.makedirs(base, exist_ok=True)
    fsync = not args.no_fsync

    print(
        f"ablator claim benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, stores under {base}"
    )
    results = (
        "results fsynced before they are linked"
        if fsync
        else "results NOT fsynced (--no-fsync, analysis only)"
    )
    print(
        f"durability: ablator = {results}, claims/attempts not | bare loop = the same writes, same durability | "
        "optuna JournalFileBackend = fsync on every append"
    )
    local = []
    for n in procs:
        row = _bench_one(
            "local",
            n,
            args.trials,
            args.repeats,
            not args.no_optuna,
            lambda tag: _fresh_local(base, tag),
            base,
            fsync,
        )
        _print_row(row)
        local.append(row)
    if args.big:
        n = max(procs)
        small, big = [], []
        for _ in range(args.repeats):  # interleaved, as above
            for count, into in ((args.trials, small), (args.big, big)):
                dt, done, _ = _run(_ablator_worker, _fresh_local(base, "big"), n, [count] * n, fsync)
                if done != count:
                    raise RuntimeError(f"per-trial cost check: {done} trials done, expected {count}")
                into.append(dt / count)
        cs, cb = statistics.median(small), statistics.median(big)
        print(
            f"per-trial cost, N={n}: {1e6 * cs:.0f} us at {args.trials} trials, {1e6 * cb:.0f} us at {args.big} "
            f"trials: ratio {cb / cs:.2f} (target <= 1.2)",
            flush=True,
        )
    if not args.no_s3:
        from s3server import running_s3

        with running_s3() as server:
            counter = [0]
            for n in procs:
                row = _bench_one(
                    "s3",
                    n,
                    args.s3_trials,
                    args.repeats,
                    False,
                    lambda tag: _fresh_s3(server, tag, counter),
                    base,
                    fsync,
                )
                _print_row(row)
    n = max(procs)
    top = next(r for r in local if r["N"] == n)
    vs_optuna = f"{top['vs_optuna']:.1f}x" if "vs_optuna" in top else "n/a"
    print(
        f"targets at N={n} on a local folder: ablator/optuna {vs_optuna} (>= 10x), "
        f"ablator/bare {top['vs_bare']:.2f} (>= 0.70); ablator N=1 -> N={n}: "
        f"{local[0]['ablator']:.0f} -> {top['ablator']:.0f} trials/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
