"""A trial attempt in its own process, for the kill/resume tests.

    python child.py STORE TRIAL EPOCH ENTRY SPEC_JSON [METRIC MODE] [--block-at STEP --wait-ckpt STEP]

Writes the claim of ``(TRIAL, EPOCH)`` directly (no lease code), runs ``execute_trial`` and prints
the outcome as JSON on its last line. With ``--block-at``, the attempt stops making progress once
it reports step STEP: it flushes its rows, waits until checkpoint ``--wait-ckpt`` is in the store,
prints ``READY`` and sleeps until the parent kills it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablator import entrypoint, layout, records
from ablator.store import open_store
from ablator.train import NoFence, execute_trial
from ablator.train import metrics as metrics_mod


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("trial", type=int)
    p.add_argument("epoch", type=int)
    p.add_argument("entry")
    p.add_argument("spec")
    p.add_argument("--metric", nargs=2, default=None)
    p.add_argument("--block-at", type=int, default=None)
    p.add_argument("--wait-ckpt", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    store = open_store(args.store)
    spec = msgspec.json.decode(args.spec, type=records.TrialSpec)
    claim = records.Claim(
        trial=args.trial,
        epoch=args.epoch,
        agent_id=f"child-{args.epoch}",
        spec=spec if args.epoch == 0 else None,
    )
    if not store.create(layout.claim(args.trial, args.epoch), records.encode(claim)):
        print("claim taken", file=sys.stderr)
        return 2
    if args.block_at is not None:
        original = metrics_mod.MetricWriter.add

        def add(self: metrics_mod.MetricWriter, step: int, values: Mapping[str, float]) -> None:
            original(self, step, values)
            if step >= args.block_at:
                self.flush()  # rows past the checkpoint reach the store: a successor must drop them
                self.writer.drain()
                key = layout.checkpoint(args.trial, args.epoch, args.wait_ckpt)
                while not store.exists(key):
                    time.sleep(0.02)
                print("READY", flush=True)
                time.sleep(600)

        metrics_mod.MetricWriter.add = add  # type: ignore[method-assign]
    entry = entrypoint.resolve_entry(args.entry)
    metric = (args.metric[0], args.metric[1]) if args.metric else None
    out = execute_trial(
        entry,
        spec,
        store,
        args.trial,
        args.epoch,
        fence=NoFence(),
        device="cpu",
        progress=False,
        metric=metric,
    )
    print(msgspec.json.encode(out).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
