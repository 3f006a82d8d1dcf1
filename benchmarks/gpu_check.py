"""The GPU check: ablator's GPU paths on a real GPU, in under 10 minutes, one table at the end.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry      # the same code end to end on the CPU, tiny sizes

Rows:

1. **overhead** -- the trainer against a plain PyTorch loop and PyTorch Lightning on the same
   model, data and batch order (benchmarks/trainer_overhead.py's runners): an MLP (fp32) and a
   ResNet-18 (bf16 autocast), ms per step, interleaved repeats, ratio to the plain loop.
2. **resume** -- bit-exact resume after SIGKILL with ``deterministic: true``: one attempt runs
   uninterrupted; another is SIGKILLed by its own process right after a checkpoint reached the
   store, and a new process (attempt 1) resumes from it. Every metric row must be equal.
3. **two slots** -- an agent with ``--slots-per-gpu 2`` on one GPU: both slots ran trials at
   once, every trial finished, trials per minute.
4. **memory rule** -- a trial that needs more memory than the GPU has free (a hog tensor in
   this process holds the rest) is not claimed: the agent says why and ``status`` explains
   with the agents' own numbers; freed, the same agent claims it.
5. **packing** -- k processes each training the small MLP on one GPU for a fixed time
   (k = 1, 2, 4, 8; the same 8 processes serve every k, round by round): aggregate steps per
   second against k = 1; then trials per GPU-hour of an
   agent with ``--slots-per-gpu auto`` against one with one slot per GPU (target >= 3x).

``--dry`` runs every row on the CPU with tiny sizes (the ResNet at 1/8 of its width; rows that
need a GPU run their CPU analog: ``--cpu --slots 2``, a CPU-only agent refusing a
``gpu: required`` experiment, k = 1, 2), so that
``tests/gpu/test_gpu_check.py`` keeps this script working where there is no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ablator import config as C  # noqa: E402
from ablator import layout, lineage, records  # noqa: E402
from ablator.entrypoint import EntryPoint  # noqa: E402
from ablator.store import open_store  # noqa: E402
from ablator.train import ModelWrapper, NoFence, execute_trial  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"  {check}: {result}  {detail}", flush=True)


def table() -> str:
    w0 = max(len(r[0]) for r in ROWS)
    w1 = max(len(r[1]) for r in ROWS)
    lines = [f"{'check':<{w0}}  {'result':<{w1}}  detail", f"{'-' * w0}  {'-' * w1}  ------"]
    lines += [f"{c:<{w0}}  {r:<{w1}}  {d}" for c, r, d in ROWS]
    return "\n".join(lines)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# --- 1. overhead ------------------------------------------------------------------------------------


def check_overhead(dry: bool, device: str) -> None:
    import trainer_overhead as T

    cases = (
        [
            T.Case("dry-mlp", "mlp", device, 16, "none", threads=1),
            # the ResNet-18 layout at 1/8 of its width: the same code path (convolutions,
            # batch norm, bf16 autocast) at ~1/64 of the CPU cost
            T.Case("dry-resnet18-bf16", "resnet18", device, 2, "bf16", width=8),
        ]
        if dry
        else [T.CASES["cuda-mlp"], T.CASES["cuda-resnet18"]]
    )
    for case in cases:
        T.CASES.setdefault(case.name, case)  # the ablator runner finds its case by name
    variants: dict[str, Callable[..., float]] = {"plain": T.run_plain, "ablator": T.run_ablator}
    try:
        import lightning  # noqa: F401

        variants["lightning"] = T.run_lightning
    except ImportError:
        pass
    for case in cases:
        if dry and case.model == "resnet18":
            variants.pop("lightning", None)  # the dry run checks Lightning's runner once
        steps = (6 if case.model == "mlp" else 2) if dry else (1500 if case.model == "mlp" else 300)
        repeats = 1 if dry else 3
        dataset = case.data(4 if dry else 100)
        times = (
            T.measure(case, variants, steps, repeats, log_every=50)
            if not dry
            else _once(case, variants, dataset, steps)
        )
        base = statistics.median(times["plain"]) / steps
        parts = []
        for name, ts in times.items():
            ms = statistics.median(ts) / steps
            parts.append(
                f"{name} {1e3 * ms:.3f} ms/step" + ("" if name == "plain" else f" (x{ms / base:.2f})")
            )
        narrow = f", width {case.width} of 64" if case.model == "resnet18" and case.width != 64 else ""
        row(f"overhead {case.name}", ", ".join(parts[1:]), f"{parts[0]}; {T.describe(case)}{narrow}")


def _once(
    case: Any, variants: dict[str, Callable[..., float]], dataset: Any, steps: int
) -> dict[str, list[float]]:
    out = {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        fn(case, dataset, steps, 2)
        out[name] = [time.perf_counter() - t0]
    return out


# --- 2. bit-exact resume after SIGKILL ---------------------------------------------------------------


class ResumeModel(C.ModelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    width: int = 256


class ResumeConfig(C.RunConfig[ResumeModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ResumeWrapper(ModelWrapper[ResumeConfig]):
    """An MLP on random data with dropout (so the CUDA RNG matters). With ``GPU_CHECK_KILL_AT``
    set, the process SIGKILLs itself once that step's checkpoint is in the store."""

    config_type = ResumeConfig

    def make_model(self, config: ResumeConfig) -> nn.Module:
        w = config.model.width
        return nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Dropout(0.2), nn.Linear(w, 10))

    def make_dataloaders(self, config: ResumeConfig) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(
            torch.randn(64 * 16, 64, generator=g), torch.randint(0, 10, (64 * 16,), generator=g)
        )
        return DataLoader(data, batch_size=64, shuffle=True, drop_last=True), None

    def on_checkpoint(self, state: Any, key: str) -> None:
        kill_at = int(os.environ.get("GPU_CHECK_KILL_AT", "0") or 0)
        if kill_at and state.step == kill_at:
            store = open_store(os.environ["GPU_CHECK_STORE"])
            while not store.exists(key):  # the writer thread stores it; then die at once
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGKILL)


def _resume_spec(steps: int, every: int) -> records.TrialSpec:
    cfg = C.from_dict(
        {
            "model": {"width": 256},
            "train": {
                "batch_size": 64,
                "epochs": None,
                "max_steps": steps,
                "optimizer": {"name": "adam", "lr": 1e-3},
                "log_every": max(1, every // 2),
                "eval_every": steps,
                "checkpoint_every": every,
                "deterministic": True,
            },
        },
        ResumeConfig,
    )
    return records.TrialSpec(index=0, config=C.to_dict(cfg), config_hash=C.config_hash(cfg), seed=7)


def resume_child(store_url: str, epoch: int, device: str, steps: int, every: int) -> int:
    store = open_store(store_url)
    spec = _resume_spec(steps, every)
    claim = records.Claim(
        trial=0, epoch=epoch, agent_id=f"gpu-check-{epoch}", spec=spec if epoch == 0 else None
    )
    store.create(layout.claim(0, epoch), records.encode(claim))
    entry = EntryPoint(kind="wrapper", obj=ResumeWrapper, config_type=ResumeConfig)
    out = execute_trial(
        entry, spec, store, 0, epoch, fence=NoFence(), device=device, progress=False, metric=None
    )
    print(json.dumps({"steps": out.steps, "resumed_from": out.resumed_from}), flush=True)
    return 0


def check_resume(dry: bool, device: str, tmp: Path) -> None:
    steps, every = (12, 4) if dry else (600, 200)
    kill_at = every * 2

    def start(store: Path, epoch: int, kill: bool) -> subprocess.Popen[str]:
        env = child_env()
        env["GPU_CHECK_STORE"] = str(store)
        if kill:
            env["GPU_CHECK_KILL_AT"] = str(kill_at)
        return subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                "resume",
                str(store),
                str(epoch),
                device,
                str(steps),
                str(every),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # The uninterrupted run and the run that is killed use separate stores: they run at once
    # (deterministic algorithms make each one's rows independent of the other's timing).
    whole_proc, killed_proc = start(tmp / "whole", 0, False), start(tmp / "killed", 0, True)
    whole, killed = finish(whole_proc), finish(killed_proc)
    assert whole.returncode == 0, whole.stderr
    resumed = finish(start(tmp / "killed", 1, False))
    ok_kill = killed.returncode == -signal.SIGKILL
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    a = lineage.canonical_rows(open_store(tmp / "whole"), 0, 0)
    b = lineage.canonical_rows(open_store(tmp / "killed"), 0, 1)
    same = [(r.step, r.values) for r in a] == [(r.step, r.values) for r in b]
    result = "bit-exact" if same and ok_kill and info["resumed_from"] == [0, kill_at] else "DIFFERENT"
    row(
        "resume after SIGKILL",
        result,
        f"deterministic: true, {device}; killed at step {kill_at} (status {killed.returncode}), resumed from "
        f"{info['resumed_from']}, {len(a)} metric rows compared",
    )


# --- agents: a function trial for rows 3-5 ---------------------------------------------------------------


class BenchTrialConfig(C.BaseConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: int = 200
    width: int = 256
    x: float = 0.0


def bench_trial(config: BenchTrialConfig, ctx: Any) -> dict[str, float]:
    """A small MLP trained for ``steps`` steps on ``ctx.device`` (the packing workload)."""
    torch.manual_seed(ctx.seed)
    model = nn.Sequential(nn.Linear(784, config.width), nn.ReLU(), nn.Linear(config.width, 10)).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 784, device=ctx.device)
    y = torch.randint(0, 10, (64,), device=ctx.device)
    loss = torch.zeros((), device=ctx.device)
    for step in range(1, config.steps + 1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == config.steps:
            ctx.report(step, {"loss": loss.item(), "score": config.x})
    return {"score": config.x, "loss": float(loss.item())}


def _experiment(trials: int, steps: int, *, gpu: str = "preferred", min_mb: int = 0) -> dict[str, Any]:
    return {
        "name": "gpu-check",
        "entry": "gpu_check:bench_trial",
        "config": {"steps": steps},
        "metric": {"name": "score", "mode": "max"},
        "design": {"kind": "random", "trials": trials, "space": {"x": {"range": [0.0, 1.0]}}},
        "limits": {"lease_seconds": 10, "heartbeat_seconds": 1, "stall_seconds": 300, "max_attempts": 2},
        "resources": {"gpu": gpu, "min_gpu_memory_mb": min_mb},
    }


def _launch(store: Path, exp: dict[str, Any]) -> None:
    from ablator.experiment import experiment_from_dict
    from ablator.ops import launch

    launch(experiment_from_dict(exp), str(store))


def _agent(store: Path, tmp: Path, *args: str, name: str = "agent") -> subprocess.Popen[bytes]:
    env = child_env()
    env["ABLATOR_LOCK_DIR"] = str(tmp / f"locks-{name}")  # each check's agent has the GPU to itself
    env["ABLATOR_CACHE_DIR"] = str(tmp / "cache")
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "ablator.agent", str(store), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _max_overlap(store: Path, n: int) -> int:
    """Most trials whose first attempts overlapped in time (attempt record to result, by the
    local store's file times)."""
    spans = []
    for t in range(n):
        start, end = store / layout.attempt(t, 0), store / layout.result(t)
        if start.exists() and end.exists():
            spans.append((start.stat().st_mtime, end.stat().st_mtime))
    return max((sum(1 for b0, b1 in spans if b0 <= a0 < b1) for a0, _ in spans), default=0)


def check_two_slots(dry: bool, tmp: Path) -> None:
    store = tmp / "two-slots"
    n, steps = (2, 10) if dry else (8, 1500)
    _launch(store, _experiment(n, steps))
    args = ("--cpu", "--slots", "2") if dry else ("--slots-per-gpu", "2", "--gpus", "0")
    t0 = time.perf_counter()
    agent = _agent(store, tmp, *args, name="two-slots")
    code = agent.wait(600)
    wall = time.perf_counter() - t0
    overlap = _max_overlap(store, n)
    row(
        "two slots on one GPU" if not dry else "two slots (CPU, dry)",
        "ok" if code == 0 and overlap >= 2 else f"FAILED (exit {code}, overlap {overlap})",
        f"{n} trials in {wall:.1f} s ({60 * n / wall:.1f}/min), at most {overlap} at once",
    )


def check_memory_rule(dry: bool, tmp: Path) -> None:
    store = tmp / "memory"
    if dry:
        # CPU analog: a CPU-only agent refuses an experiment whose trials need a GPU with memory
        _launch(store, _experiment(1, 10, gpu="required", min_mb=1024))
        agent = _agent(store, tmp, name="memory")
        code = agent.wait(300)
        text = (tmp / "memory.log").read_text()
        ok = code == 1 and "need a GPU with 1024 MiB" in text
        row(
            "memory rule (CPU, dry)",
            "ok" if ok else "FAILED",
            "a CPU-only agent refuses gpu: required, 1024 MiB",
        )
        return
    free, _ = torch.cuda.mem_get_info(0)
    need_mb = 4096
    hog = torch.empty(max(0, free - (need_mb // 2) * 2**20), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    _launch(store, _experiment(1, 200, gpu="required", min_mb=need_mb))
    agent = _agent(store, tmp, "--gpus", "0", "--watch", name="memory")
    from ablator.status import collect

    time.sleep(20)  # workers start, the agent looks, refuses; status reads its heartbeat
    waiting = collect(open_store(store)).waiting
    claimed = open_store(store).exists(layout.claim(0, 0))
    del hog
    torch.cuda.empty_cache()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not open_store(store).exists(layout.result(0)):
        time.sleep(0.5)
    finished = open_store(store).exists(layout.result(0))
    agent.send_signal(signal.SIGTERM)
    agent.wait(60)
    ok = not claimed and finished and any("MiB available" in w for w in waiting)
    row(
        "memory rule",
        "ok" if ok else "FAILED",
        f"needs {need_mb} MiB with ~{need_mb // 2} free: not claimed ({'; '.join(waiting) or 'no waiting line'}); "
        f"freed: {'finished' if finished else 'NOT finished'}",
    )


# --- 5. packing --------------------------------------------------------------------------------------------


def train_child(device: str, seconds: float, width: int) -> int:
    """Train the small MLP for ``seconds`` after a warm-up; print the steps done."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 784, device=dev), torch.randint(0, 10, (64,), device=dev)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(20):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print("READY", flush=True)
    # One round per "go" line (the parent starts the k processes of a round together), so one
    # set of processes serves every k: starting an interpreter and torch costs more than a round.
    while sys.stdin.readline().strip() == "go":
        n = 0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            for _ in range(10):
                step()
            n += 10
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(n, flush=True)
    return 0


def check_packing(dry: bool, device: str, tmp: Path) -> None:
    ks = (1, 2) if dry else (1, 2, 4, 8)
    seconds = 0.5 if dry else 15.0
    rates: dict[int, float] = {}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", "train", device, str(seconds), "256"],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(max(ks))
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        for k in ks:  # round k: the first k processes train at once, the others wait
            for p in procs[:k]:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            total = 0
            for p in procs[:k]:
                assert p.stdout is not None
                total += int(p.stdout.readline().strip() or "0")
            rates[k] = total / seconds
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.close()  # EOF ends the child
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    shown = ", ".join(f"k={k} x{rates[k] / rates[1]:.2f}" for k in ks)
    row("packing, k processes", shown, f"aggregate MLP steps/s vs one process ({rates[1]:.0f}/s), {device}")
    if dry:
        row("packing, auto vs 1 slot", "n/a on the CPU (dry)", "--slots-per-gpu auto needs a GPU")
        return
    n, steps = 16, 6000
    walls = {}
    for label, args in (
        ("one", ("--slots-per-gpu", "1", "--gpus", "0")),
        ("auto", ("--slots-per-gpu", "auto", "--gpus", "0")),
    ):
        store = tmp / f"pack-{label}"
        _launch(store, _experiment(n, steps, gpu="required"))
        t0 = time.perf_counter()
        code = _agent(store, tmp, *args, name=f"pack-{label}").wait(600)
        walls[label] = time.perf_counter() - t0
        assert code == 0, (tmp / f"pack-{label}.log").read_text()[-2000:]
    gain = walls["one"] / walls["auto"]
    row(
        "packing, auto vs 1 slot",
        f"x{gain:.2f} trials per GPU-hour" + (" (target >= 3x)" if gain < 3 else ""),
        f"{n} MLP trials: {walls['one']:.0f} s with one slot, {walls['auto']:.0f} s with auto "
        f"(peak {_max_overlap(tmp / 'pack-auto', n)} at once)",
    )


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "resume"]:
        store, epoch, device, steps, every = argv[2:7]
        return resume_child(store, int(epoch), device, int(steps), int(every))
    if argv[:2] == ["--child", "train"]:
        device, seconds, width = argv[2:5]
        return train_child(device, float(seconds), int(width))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="everything on the CPU with tiny sizes")
    p.add_argument("--skip", action="append", default=[], help="overhead, resume, slots, memory, packing")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry to check this script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry else "cuda"
    t0 = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = "CPU (dry)" if args.dry else torch.cuda.get_device_name(0)
    print(f"gpu_check on {where}, torch {torch.__version__}, load {load:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        tmp = Path(d)
        checks: list[tuple[str, Callable[[], None]]] = [
            ("overhead", lambda: check_overhead(args.dry, device)),
            ("resume", lambda: check_resume(args.dry, device, tmp)),
            ("slots", lambda: check_two_slots(args.dry, tmp)),
            ("memory", lambda: check_memory_rule(args.dry, tmp)),
            ("packing", lambda: check_packing(args.dry, device, tmp)),
        ]
        for name, fn in checks:
            if name in args.skip:
                continue
            t1 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # one broken check must not hide the others' rows
                row(name, "ERROR", f"{type(exc).__name__}: {str(exc)[:300]}")
            print(f"  ({name}: {time.perf_counter() - t1:.0f} s)", flush=True)
    print(f"\n{table()}\n\n{time.perf_counter() - t0:.0f} s in all; load average {load:.2f} at the start")
    return (
        0 if all(r[1] not in ("ERROR",) and "FAILED" not in r[1] and r[1] != "DIFFERENT" for r in ROWS) else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
