"""Screenshots of ``ablator serve`` for docs/dashboard.md, taken from a real study.

    python docs/make_screenshots.py                 # writes docs/img/dashboard-*.png (about a minute)

A small ablation (4 variants x 3 seeds, CPU only, a few seconds per trial) is launched into a
temporary store and run by real agents (``python -m ablator.agent STORE --cpu``); one trial fails
once on purpose (its retry succeeds), and one agent is killed with SIGKILL half-way, so that
another takes its trials over. The dashboard is served by a real ``python -m ablator serve``
process and photographed by headless Chromium (Playwright driving Debian's package): progress,
trials and curves while the study runs; effects and a trial page once it is done.

This file is also the study's entry point (``make_screenshots:trial``): agents import it, so
module-level code must stay cheap and never run the script.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Literal

from ablator.config import BaseConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "img"


class DemoConfig(BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 60
    sleep: float = 0.1
    width: int = 64
    dropout: float = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    fail_repeat: int = -1  # this repeat raises once, in its first attempt


def trial(config: DemoConfig, ctx: Any) -> dict[str, float]:
    """A stand-in training run: accuracy rises towards a ceiling set by the config, with noise
    from the trial's seed; checkpoints every 10 steps."""
    rng = random.Random(ctx.seed)
    ceiling = (
        0.93 + 0.01 * (config.activation == "gelu") - 0.08 * (config.width < 32) - 0.2 * config.dropout / 2
    )
    ceiling += rng.gauss(0, 0.006)
    start = 0
    loaded = ctx.load_checkpoint()
    if loaded is not None:
        start = loaded[1]
    acc = 0.0
    for step in range(start + 1, config.steps + 1):
        time.sleep(config.sleep)
        if ctx.spec.repeat == config.fail_repeat and ctx.epoch == 0 and step == 25:
            raise FloatingPointError(f"loss became NaN at step {step} (a demo failure; the retry succeeds)")
        acc = ceiling * (1 - math.exp(-step / 12)) + rng.gauss(0, 0.008)
        loss = 2.3 * math.exp(-step / 15) + 0.1 + rng.gauss(0, 0.01)
        print(f"step {step:3d}  train_loss {loss:.4f}  val_accuracy {acc:.4f}", flush=True)
        ctx.report(step, {"val_accuracy": acc, "train_loss": loss})
        if step % 10 == 0:
            ctx.save_checkpoint({"step": step}, step)
    return {"val_accuracy": acc}


EXPERIMENT = {
    "name": "demo-ablation",
    "entry": "make_screenshots:trial",
    "config": {"steps": 60, "sleep": 0.1},
    "metric": {"name": "val_accuracy", "mode": "max"},
    "design": {
        "kind": "ablation",
        "repeats": 3,
        "seed": 0,
        "ablations": {
            "no_dropout": {"dropout": 0.0},
            "gelu": {"activation": "gelu"},
            "narrow": {"width": 16, "fail_repeat": 1},
        },
    },
    "limits": {"max_attempts": 3, "lease_seconds": 4.0, "heartbeat_seconds": 0.5, "stall_seconds": 60},
    "resources": {"gpu": "none"},
}


def _wait(what: str, cond: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    import json

    from playwright.sync_api import sync_playwright

    from ablator.experiment import experiment_from_dict
    from ablator.ops import launch

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("needs Debian's chromium package (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="ablator-shots-"))
    store = tmp / "store"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ABLATOR_CACHE_DIR"] = str(tmp / "cache")
    env["ABLATOR_LOCK_DIR"] = str(tmp / "locks")
    sys.path.insert(0, str(HERE))
    launch(experiment_from_dict(EXPERIMENT), store)
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = open(tmp / f"proc-{len(procs)}.log", "wb")  # noqa: SIM115 -- lives as long as the process
        p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    server = start("-m", "ablator", "serve", str(store), "--port", "0", "--interval", "1")
    url = _wait("the server's URL", lambda: _url(tmp / "proc-0.log"), 60)

    def api(path: str) -> Any:
        with urllib.request.urlopen(url + path, timeout=60) as r:
            return json.loads(r.read())

    OUT.mkdir(exist_ok=True)
    try:
        agents = [start("-m", "ablator.agent", str(store), "--cpu", "--slots", "2") for _ in range(2)]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)

            def shot(name: str, path: str, selector: str, full: bool = False) -> None:
                page.goto(url + path)
                page.wait_for_selector(selector, timeout=120_000)
                page.wait_for_timeout(600)  # charts draw after the data lands
                page.screenshot(path=str(OUT / f"dashboard-{name}.png"), full_page=full)
                print(f"wrote docs/img/dashboard-{name}.png")

            _wait("4 finished trials", lambda: api("/api/progress")["finished"] >= 4)
            _wait("agents seen alive", lambda: api("/api/progress")["agents_live"] >= 2)
            shot("progress", "/#/", "#agents .s-alive")
            shot("trials", "/#/trials", "#trial-table tbody tr[data-status=running]")
            shot("curves", "/#/curves", "#curves-chart[data-lines]")
            agents[0].send_signal(signal.SIGKILL)  # its trials are taken over after a lease
            agents.append(start("-m", "ablator.agent", str(store), "--cpu", "--slots", "2"))
            _wait("the study to finish", lambda: api("/api/progress")["finished"] == 12, 600)
            shot("effects", "/#/effects", "table.effects tbody tr", full=True)
            rows = api("/api/trials?sort=takeovers&desc=1")["rows"]
            taken = rows[0]["index"] if rows[0]["takeovers"] else None
            failed = next(r["index"] for r in api("/api/trials")["rows"] if r["error"])
            shot("trial", f"/#/trial/{taken if taken is not None else failed}", "#trial #timeline", full=True)
            shot("failure", f"/#/trial/{failed}", "#trial #failures", full=True)
            shot("done", "/#/", "#progress")
            browser.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    del server


def _url(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("ablator serve:") and " at http://" in line:
            return line.split(" at ", 1)[1].strip().rstrip("/")
    return None


if __name__ == "__main__":
    main()
