"""``python -m ablator analyze STORE`` and ``python -m ablator report STORE --out DIR``.

Both read the store only (a live one, a finished one or a plain copy) and leave at most an
analysis snapshot behind (see :mod:`ablator.analysis.snapshot`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from ablator.analysis import text
from ablator.analysis.effects import compute_effects
from ablator.analysis.report import write_report
from ablator.analysis.results import load


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mode": args.mode,
        "value": getattr(args, "value", "best"),
        "adjust": getattr(args, "adjust", "holm"),
    }


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return text.num(v)
    return text.DASH if v is None else str(v)


def cli_analyze(args: argparse.Namespace) -> int:
    """Print the effects table of ``args.store`` and its best trials with what they ran
    (the variant, or a sweep's searched values); ``--json``: machine-readable."""
    res = load(args.store)
    effects = compute_effects(res, args.metric, **_options(args))
    top = res.best(5, effects.metric, effects.mode, effects.value)
    params = [(f.name, f.column) for f in effects.factors if f.kind != "variant"]
    if args.json:
        columns = ["index", "variant", "seed", "status", "value", *(c for _, c in params)]
        payload = {
            "experiment": res.name,
            "url": res.url,
            "trials": res.trials.height,
            "budget": res.budget,
            "status": res.status_counts(),
            "effects": effects.to_dict(),
            "best": [
                {k: _clean(v) for k, v in row.items() if not isinstance(v, (list, dict))}
                for row in top.select(list(dict.fromkeys(columns))).to_dicts()
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
        what = [name for name, _ in params] if params else ["variant"]
        rows = [
            [
                f"#{r['index']}",
                *((_cell(r[c]) for _, c in params) if params else [r["variant"] or text.DASH]),
                text.num(r["value"], 5),
                text.num(r["seed"]),
            ]
            for r in top.to_dicts()
        ]
        print(text.table(["trial", *what, effects.metric, "seed"], rows))
    return 0


def default_out(res_name: str) -> Path:
    """Where ``report`` writes without ``--out``: ``./ablator-report/<experiment name>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", res_name).strip("-.") or "experiment"
    return Path("ablator-report") / safe


def cli_report(args: argparse.Namespace) -> int:
    """Write the report of ``args.store`` into ``args.out`` (default
    ``./ablator-report/<experiment name>``)."""
    res = load(args.store)
    out = Path(args.out) if args.out else default_out(res.name)
    files = write_report(res, out, metric=args.metric, **_options(args))
    names = ", ".join(f.name for f in files.figures) or "none"
    print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure(s): {names}")
    return 0


__all__ = ["cli_analyze", "cli_report", "default_out"]
