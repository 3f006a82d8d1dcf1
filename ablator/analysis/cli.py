"""``python -m ablator analyze STORE`` and ``python -m ablator report STORE --out DIR``.

Both read the store only (a live one, a finished one or a plain copy) and leave at most an
analysis snapshot behind (see :mod:`ablator.analysis.snapshot`).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ablator.analysis import text
from ablator.analysis.results import load


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cli_analyze(args: argparse.Namespace) -> int:
    """Print the effects table of ``args.store`` (``--json``: machine-readable)."""
    res = load(args.store)
    effects = res.effects(args.metric, mode=getattr(args, "mode", None))
    top = res.best(5, effects.metric, effects.mode, effects.value)
    if args.json:
        payload = {
            "experiment": res.name,
            "url": res.url,
            "trials": res.trials.height,
            "budget": res.budget,
            "status": res.status_counts(),
            "effects": effects.to_dict(),
            "best": [
                {k: _clean(v) for k, v in row.items() if not isinstance(v, (list, dict))}
                for row in top.select(["index", "variant", "seed", "status", "value"]).to_dicts()
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    counts = ", ".join(f"{n} {s}" for s, n in res.status_counts().items()) or "none"
    budget = f" (budget {res.budget})" if res.budget is not None else ""
    print(f"{res.name} at {res.url}")
    print(f"trials: {res.trials.height}{budget}: {counts}\n")
    print(effects.render())
    if top.height:
        print(f"\nbest trials ({effects.value} {effects.metric})")
        rows = [
            [f"#{r['index']}", r["variant"] or text.DASH, text.num(r["value"], 5), text.num(r["seed"])]
            for r in top.to_dicts()
        ]
        print(text.table(["trial", "variant", effects.metric, "seed"], rows))
    return 0


def cli_report(args: argparse.Namespace) -> int:
    """Write the report of ``args.store`` into ``args.out``."""
    res = load(args.store)
    files = res.report(args.out, metric=args.metric, mode=getattr(args, "mode", None))
    names = ", ".join(f.name for f in files.figures) or "none"
    print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure(s): {names}")
    return 0


__all__ = ["cli_analyze", "cli_report"]
