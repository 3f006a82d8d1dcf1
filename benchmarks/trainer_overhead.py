"""Trainer overhead: ablator's loop against a plain PyTorch loop (and PyTorch Lightning, when
installed) on the same model, data, optimizer and batch order.

    python benchmarks/trainer_overhead.py                    # CPU MLP; CUDA cases when CUDA exists
    python benchmarks/trainer_overhead.py --case cpu-mlp --steps 3000 --repeats 7

Variants, each timed end to end (model and optimizer construction, every step, the last sync):

* ``plain``: a hand-written loop that sums the training loss on the device and syncs it every
  ``--log-every`` steps (what a careful researcher writes);
* ``ablator``: :func:`ablator.train.execute_trial` into a local store in a temporary folder, with
  metric rows, the progress bar (written to /dev/null), and a checkpoint every 1,000 steps;
* ``lightning``: a LightningModule with ``self.log`` every step, Lightning's default logger,
  progress bar (to /dev/null) and a ``ModelCheckpoint`` every 1,000 steps.

Repeats are interleaved (the variants' order rotates each round) so that a machine whose load
changes over time slows every variant alike. Printed per case: ms/step of each variant (median
over repeats), each variant's time relative to the plain loop of the same round (the median ratio
with its min-max spread), and the ratio of the fastest runs (robust to a busy machine's noise).

Cases: ``cpu-mlp`` (784-256-10 MLP, batch 64, one thread); with CUDA also ``cuda-mlp`` and
``cuda-resnet18`` (a ResNet-18 on 32x32 inputs, batch 128, bf16 autocast).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ablator import config as C
from ablator import layout, records
from ablator.entrypoint import EntryPoint
from ablator.store import open_store
from ablator.train import ModelWrapper, NoFence, execute_trial
from ablator.train.progress import BarProgress

CHECKPOINT_EVERY = 1000
SEED = 0


# --- the models ---------------------------------------------------------------------------------


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet18(n_classes: int = 10, width: int = 64) -> nn.Module:
    """ResNet-18 (11M parameters at ``width`` 64, its stem's channels) for 32x32 inputs."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        cout = width * mult
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Case:
    name: str
    model: Literal["mlp", "resnet18"]
    device: str
    batch: int
    amp: Literal["none", "bf16"]
    threads: int | None = None
    width: int = 64  # the ResNet's stem width (64: ResNet-18 itself; gpu_check --dry uses less)

    def data(self, n_batches: int) -> TensorDataset:
        g = torch.Generator().manual_seed(SEED)
        n = self.batch * n_batches
        shape = (n, 784) if self.model == "mlp" else (n, 3, 32, 32)
        return TensorDataset(torch.randn(shape, generator=g), torch.randint(0, 10, (n,), generator=g))

    def make_model(self) -> nn.Module:
        return mlp() if self.model == "mlp" else resnet18(width=self.width)


CASES = {
    "cpu-mlp": Case("cpu-mlp", "mlp", "cpu", 64, "none", threads=1),
    "cuda-mlp": Case("cuda-mlp", "mlp", "cuda", 64, "none"),
    "cuda-resnet18": Case("cuda-resnet18", "resnet18", "cuda", 128, "bf16"),
}


def loader(case: Case, dataset: TensorDataset) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=case.batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(SEED),
        pin_memory=case.device == "cuda",
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- 1. the plain loop ----------------------------------------------------------------------------


def run_plain(case: Case, dataset: TensorDataset, steps: int, log_every: int) -> float:
    torch.manual_seed(SEED)
    device = torch.device(case.device)
    model = case.make_model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = loader(case, dataset)
    running = torch.zeros((), device=device)
    count = 0
    step = 0
    last = 0.0
    while step < steps:
        for x, y in data:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if case.amp == "bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            running += loss.detach()
            count += 1
            step += 1
            if step % log_every == 0:
                last = (running / count).item()
                running.zero_()
                count = 0
            if step >= steps:
                break
    sync(case.device)
    return last


# --- 2. ablator -----------------------------------------------------------------------------------


class BenchModel(C.ModelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    case: str = "cpu-mlp"
    n_batches: int = 500


class BenchConfig(C.RunConfig[BenchModel], frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


_DATASETS: dict[str, TensorDataset] = {}


class BenchWrapper(ModelWrapper[BenchConfig]):
    config_type = BenchConfig

    def make_model(self, config: BenchConfig) -> nn.Module:
        return CASES[config.model.case].make_model()

    def make_dataloaders(self, config: BenchConfig) -> tuple[Any, ...]:
        case = CASES[config.model.case]
        return loader(case, _DATASETS[case.name]), None


def run_ablator(case: Case, dataset: TensorDataset, steps: int, log_every: int) -> float:
    _DATASETS[case.name] = dataset
    cfg = C.from_dict(
        {
            "model": {"case": case.name},
            "train": {
                "batch_size": case.batch,
                "epochs": None,
                "max_steps": steps,
                "optimizer": {"name": "adam", "lr": 1e-3},
                "amp": case.amp,
                "log_every": log_every,
                "eval_every": steps,  # one evaluation, at the end (there is no val loader)
                "checkpoint_every": CHECKPOINT_EVERY,
            },
        },
        BenchConfig,
    )
    spec = records.TrialSpec(index=0, config=C.to_dict(cfg), config_hash=C.config_hash(cfg), seed=SEED)
    entry = EntryPoint(kind="wrapper", obj=BenchWrapper, config_type=BenchConfig)
    with tempfile.TemporaryDirectory() as d, open(os.devnull, "w") as devnull:
        store = open_store(d)
        store.create(
            layout.claim(0, 0), records.encode(records.Claim(trial=0, epoch=0, agent_id="bench", spec=spec))
        )
        out = execute_trial(
            entry,
            spec,
            store,
            0,
            0,
            fence=NoFence(),
            device=case.device,
            progress=BarProgress(devnull),
            metric=None,
        )
    assert out.steps == steps, out
    return out.metrics["train_loss"]


# --- 3. Lightning ---------------------------------------------------------------------------------


def run_lightning(case: Case, dataset: TensorDataset, steps: int, log_every: int) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = case.make_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(SEED)
    with (
        tempfile.TemporaryDirectory() as d,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(devnull),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="gpu" if case.device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if case.amp == "bf16" else "32-true",
            log_every_n_steps=log_every,
            default_root_dir=d,
            callbacks=[ModelCheckpoint(dirpath=d, every_n_train_steps=CHECKPOINT_EVERY, save_top_k=-1)],
            enable_model_summary=False,
        )
        module = Module()
        trainer.fit(module, loader(case, dataset))
    sync(case.device)
    return float(trainer.callback_metrics["train_loss"])


# --- measurement ------------------------------------------------------------------------------------

Runner = Callable[[Case, TensorDataset, int, int], float]


def measure(
    case: Case, variants: dict[str, Runner], steps: int, repeats: int, log_every: int
) -> dict[str, list[float]]:
    if case.threads is not None:
        torch.set_num_threads(case.threads)
    dataset = case.data(200)
    names = list(variants)
    for name in names:  # warm-up: imports, allocator, first optimizer construction
        variants[name](case, dataset, min(steps, 200), log_every)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(case.device)
            t0 = time.perf_counter()
            variants[name](case, dataset, steps, log_every)
            times[name].append(time.perf_counter() - t0)
        print(
            f"  round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {1e3 * times[n][-1] / steps:.3f}" for n in names),
            flush=True,
        )
    return times


def report(case: Case, times: dict[str, list[float]], steps: int) -> None:
    base = times["plain"]
    print(
        f"\n{case.name}: {steps} steps x {len(base)} interleaved repeats (torch {torch.__version__}, {describe(case)})"
    )
    print(
        f"  {'variant':<10} {'ms/step':>9}  {'x plain (median)':>16}  {'spread (min-max)':>17}  {'x plain (best)':>14}"
    )
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        ms = 1e3 * statistics.median(ts) / steps
        best = min(ts) / min(base)  # fastest run against fastest run: robust to load on a shared machine
        print(
            f"  {name:<10} {ms:>9.3f}  {statistics.median(ratios):>16.3f}  "
            f"{min(ratios):>8.3f}-{max(ratios):<8.3f}  {best:>14.3f}"
        )


def describe(case: Case) -> str:
    if case.device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, {case.amp}"
    return f"CPU, {torch.get_num_threads()} thread(s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--case",
        action="append",
        choices=sorted(CASES),
        help="default: cpu-mlp, plus the CUDA cases with CUDA",
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-lightning", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 5:
        print("note: fewer than 5 repeats; the spread says little", file=sys.stderr)
    cases = args.case or ["cpu-mlp"] + (["cuda-mlp", "cuda-resnet18"] if torch.cuda.is_available() else [])
    variants: dict[str, Runner] = {"plain": run_plain, "ablator": run_ablator}
    if not args.no_lightning:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                import lightning  # noqa: F401
            variants["lightning"] = run_lightning
        except ImportError:
            print("lightning is not installed: plain vs ablator only", file=sys.stderr)
    for name in cases:
        case = CASES[name]
        if case.device == "cuda" and not torch.cuda.is_available():
            print(f"{name}: skipped (no CUDA)", file=sys.stderr)
            continue
        print(f"{name}:", flush=True)
        report(case, measure(case, variants, args.steps, args.repeats, args.log_every), args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
