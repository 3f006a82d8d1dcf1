"""Benchmark: ``ablator serve`` over a 10,000-trial store, measured in a real browser.

    python benchmarks/serve.py                          # 10,000 trials (9,960 done, 40 running)
    python benchmarks/serve.py --trials 2000 --store /tmp/serve-bench

The store is synthesised through the records API and ``Store.create`` (as agents write it:
``tests/analysis/synthstore.py``): a random search over three factors (a choice, a log range, a
choice), each trial with a claim, an attempt, ``--steps`` metric rows in two chunks and a
result; the last 40 trials have no result yet (running). Then a real ``python -m ablator serve``
process is started twice: cold (no analysis snapshot anywhere: every record is read and a local
snapshot written) and warm (a new process finds that snapshot: the case of opening the dashboard
on an existing store). Printed, not asserted:

* seconds from the server's start until its first read of the store is ready, cold and warm;
* in headless Chromium (Playwright, Debian's package): seconds from navigation until each view
  has rendered (progress, the trial table, curves, effects, a trial page);
* API response times (median of ``--repeat``; the first call per read computes, later ones
  come from the per-read cache, so both are shown);
* the background refresh's own duration on this store (``read_seconds`` of ``/api/state``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from analysis.synthstore import StoreBuilder, search_experiment  # noqa: E402

from ablator.store import open_store  # noqa: E402

RUNNING = 40


def synthesise(root: Path, trials: int, steps: int) -> float:
    t0 = time.perf_counter()
    store = open_store(root)
    b = StoreBuilder(store, search_experiment("random", trials=trials))
    rng = random.Random(0)
    for i in range(trials):
        dropout = rng.choice([0.0, 0.2, 0.5])
        lr = 10 ** rng.uniform(-4, -1)
        act = rng.choice(["relu", "gelu"])
        overrides = {"model.dropout": dropout, "train.optimizer.lr": lr, "model.activation": act}
        final = 0.3 + 0.05 * (math.log10(lr) + 2.5) ** 2 + 0.2 * dropout + (0.03 if act == "relu" else 0.0)
        final += rng.gauss(0, 0.02)
        if i < trials - RUNNING:
            b.finished(i, overrides, final, metric="val_loss", n_steps=steps)
        else:  # running: claimed, started, half its rows reported, no result
            spec = b.spec_for(i, overrides)
            b.claim(i, 0, spec)
            b.attempt(i, 0)
            b.metrics(
                i, 0, range(1, steps // 2 + 1), lambda s, f=final: {"val_loss": f + 1.0 / s}, chunk=steps // 2
            )
    return time.perf_counter() - t0


class Server:
    def __init__(self, store: Path, cache: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), ABLATOR_CACHE_DIR=str(cache))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ablator", "serve", str(store), "--port", "0", "--interval", "5"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if " at http://" not in line:
            raise SystemExit(f"ablator serve did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split(" at ", 1)[1].strip().rstrip("/")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=600) as r:
            return json.loads(r.read())

    def wait_ready(self) -> float:
        while True:
            if self.get("/api/state")["ready"]:
                return time.perf_counter() - self.started
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def browser_views(url: str) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("needs Debian's chromium package (apt-get install chromium)")
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        views = [
            ("first page (progress)", "/", "#progress"),
            ("trial table (first 100 rows)", "/#/trials", "#trial-table tbody tr"),
            ("table sorted by best", "/#/trials?sort=best", "#trial-table th.sorted[data-col=best]"),
            ("curves by model.dropout", "/#/curves", "#curves-chart[data-lines]"),
            ("curves, each trial", "/#/curves?group=trial", "#curves-chart[data-lines]"),
            ("effects", "/#/effects", "table.effects tbody tr"),
            ("trial page #123", "/#/trial/123", "#trial[data-index='123'] #trial-chart"),
        ]
        for name, path, selector in views:
            t0 = time.perf_counter()
            page.goto(url + path)
            page.wait_for_selector(selector, timeout=300_000)
            out.append((name, time.perf_counter() - t0))
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100, help="metric rows per trial (two metrics each)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--store", default=None, help="reuse or create the store here (default: a temp folder)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ablator-serve-bench-"))
    store = Path(args.store) if args.store else tmp / "store"
    cache = tmp / "cache"
    try:
        print(f"ablator serve benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if not (store / "experiment.json").exists():
            secs = synthesise(store, args.trials, args.steps)
            print(f"synthesised {args.trials} trials x {args.steps} steps in {secs:.1f} s at {store}")
        else:
            print(f"reusing the store at {store}")

        cold = Server(store, cache)
        print(
            f"cold server: first read ready after {cold.wait_ready():.2f} s (every record read, local snapshot written)"
        )
        cold.stop()
        warm = Server(store, cache)
        print(
            f"warm server: first read ready after {warm.wait_ready():.2f} s (one local snapshot + the running trials)"
        )
        try:
            for name, secs in browser_views(warm.url):
                print(f"  browser  {name:<36} {secs:6.3f} s")
            paths = [
                "/api/state",
                "/api/progress",
                "/api/columns",
                "/api/trials",
                "/api/trials?sort=best&desc=1",
                "/api/trials?status=running",
                "/api/trials?f.model.activation=gelu&sort=duration_s",
                "/api/curves?group=model.dropout",
                "/api/curves?group=train.optimizer.lr",
                "/api/curves?group=trial",
                "/api/effects",
                "/api/trial/123",
            ]
            warm.get("/api/state")
            for path in paths:
                first = timed(lambda p=path: warm.get(p))
                again = statistics.median(timed(lambda p=path: warm.get(p)) for _ in range(args.repeat))
                print(f"  api      {path:<52} first {1000 * first:7.1f} ms, then {1000 * again:7.1f} ms")
            time.sleep(6)  # let the background refresher read the store again
            state = warm.get("/api/state")
            print(f"background refresh of the whole store: {state['read_seconds']:.2f} s per read")
        finally:
            warm.stop()
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
