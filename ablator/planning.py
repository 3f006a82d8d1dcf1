"""``ablator plan``: validate an experiment and show its trials before anything runs.

::

    print(ablator.plan("examples/digits/experiment.yaml").render())   # the table the CLI prints
    ablator.plan(exp, limit=10).to_dict()                            # what --json prints
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ablator.config import MISSING, config_hash, diff
from ablator.entrypoint import EntryPoint
from ablator.errors import ConfigError
from ablator.experiment import Experiment, bind, experiment_hash, load_validated, validate
from ablator.records import TrialSpec


@dataclass
class Plan:
    """The trial plan of an experiment: what ``python -m ablator plan`` prints."""

    experiment: Experiment
    entry: EntryPoint
    budget: int
    base_config: dict[str, Any]
    base_hash: str
    trials: list[TrialSpec]
    points: list[int]
    diffs: list[list[tuple[str, Any, Any]]]
    source: str | None = None
    space: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        exp = self.experiment
        ct = self.entry.config_type
        return {
            "valid": True,
            "name": exp.name,
            "source": self.source,
            "experiment_hash": experiment_hash(exp),
            "entry": {
                "target": self.entry.target,
                "kind": self.entry.kind,
                "config_type": f"{ct.__module__}.{ct.__qualname__}",
            },
            "metric": msgspec.to_builtins(exp.metric),
            "design": {
                "kind": exp.design.kind,
                "repeats": exp.design.repeats,
                "seed": exp.design.seed,
                "trials": exp.design.trials,
                "variants": list(exp.design.ablations),
                "space": [{"path": p, "spec": s} for p, s in self.space],
                "pruner": exp.design.pruner,
            },
            "budget": self.budget,
            "shown": len(self.trials),
            "base": {"config_hash": self.base_hash, "config": self.base_config},
            "trials": [
                {
                    "index": t.index,
                    "seed": t.seed,
                    "variant": t.variant,
                    "point": p,
                    "repeat": t.repeat,
                    "config_hash": t.config_hash,
                    "overrides": t.overrides,
                    "diff": [{"path": k, "base": _json_value(a), "value": _json_value(b)} for k, a, b in d],
                    "config": t.config,
                }
                for t, p, d in zip(self.trials, self.points, self.diffs, strict=True)
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=True)

    def render(self) -> str:
        exp = self.experiment
        d = exp.design
        lines = [f"{exp.name}" + (f"  ({self.source})" if self.source else "")]
        if exp.description:
            lines.append(f"  {exp.description}")
        lim = exp.limits
        info = [
            ("entry", self.entry.describe()),
            ("metric", f"{exp.metric.name} ({exp.metric.mode})"),
            ("design", _design_line(exp, self.budget)),
            ("base", f"config hash {self.base_hash[:12]}"),
            (
                "limits",
                f"max_attempts {lim.max_attempts}, max_takeovers {lim.max_takeovers}, lease {lim.lease_seconds:g} s, "
                f"heartbeat {lim.heartbeat_seconds:g} s, stall {lim.stall_seconds:g} s; gpu {exp.resources.gpu}",
            ),
        ]
        lines += [f"  {k:<7} {v}" for k, v in info]
        if self.space:
            lines.append("  space")
            width = max(len(p) for p, _ in self.space)
            lines += [f"    {p:<{width}}  {s}" for p, s in self.space]
        lines.append("")
        if d.kind == "tpe":
            lines.append(
                f"TPE chooses each trial's config from the results so far, so the plan has no fixed table: "
                f"{self.budget} trials ({self.budget // d.repeats} configs x {d.repeats} repeats)."
            )
            return "\n".join(lines)
        label = "variant" if d.kind == "ablation" else "point"
        rows = [["index", "seed", label, "repeat", "config hash", "differs from the base config"]]
        for t, p, df in zip(self.trials, self.points, self.diffs, strict=True):
            rows.append(
                [
                    str(t.index),
                    str(t.seed),
                    t.variant if d.kind == "ablation" else str(p),
                    str(t.repeat),
                    t.config_hash[:12],
                    "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in df) or "-",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        right = {0, 1, 3} if d.kind == "ablation" else {0, 1, 2, 3}
        for r in rows:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            ]
            lines.append("  ".join([*cells, r[5]]).rstrip())
        shown = len(self.trials)
        if shown < self.budget:
            lines.append(f"... {self.budget - shown} more trials (--limit N shows N)")
        distinct = len({t.config_hash for t in self.trials})
        lines.append("")
        lines.append(f"valid: {self.budget} trials; {shown} shown, {distinct} distinct configs among them.")
        return "\n".join(lines)


def _design_line(exp: Experiment, n: int) -> str:
    d = exp.design
    reps = f"{d.repeats} repeat{'s' if d.repeats != 1 else ''}"
    if d.kind == "ablation":
        v = len(d.ablations)
        what = f"ablation: baseline + {v} variant{'s' if v != 1 else ''}, {reps} each"
    elif d.kind == "grid":
        what = f"grid: {n // d.repeats} points x {reps}"
    else:
        what = f"{d.kind}: {n // d.repeats} points x {reps}"
    pruner = ""
    if d.pruner:  # early stopping across trials (ablator.pruners)
        args = ", ".join(f"{k} {v}" for k, v in d.pruner.items() if k != "kind")
        pruner = f"; pruner {d.pruner.get('kind')}" + (f" ({args})" if args else "")
    return f"{what} = {n} trials, seed {d.seed}{pruner}"


def _json_value(v: Any) -> Any:
    return None if v is MISSING else v


def _show(v: Any) -> str:
    if v is MISSING:
        return "(unset)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):  # the table is for reading; --json has the exact values
        return repr(v) if v.is_integer() and abs(v) < 1e6 else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "))
    return repr(v)


def plan(
    path_or_exp: str | os.PathLike[str] | Experiment,
    overrides: Sequence[str] = (),
    *,
    limit: int | None = None,
) -> Plan:
    """Validate an experiment (file or :class:`Experiment`) and compute its trials (the first
    ``limit`` only, when given). Raises :class:`ConfigError` listing every problem.

    >>> print(ablator.plan("examples/digits/experiment.yaml").render())
    """
    if isinstance(path_or_exp, Experiment):
        if overrides:
            raise ConfigError("plan(): overrides apply to a file; pass a path, or change the Experiment")
        exp, source = path_or_exp, None
        entry = validate(exp)
    else:
        source = str(path_or_exp)
        exp, entry = load_validated(path_or_exp, overrides)
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, found {limit}")
    bound = bind(exp, entry)
    n = bound.budget()
    trials: list[TrialSpec] = []
    pts: list[int] = []
    if exp.design.kind != "tpe":
        for i in range(n if limit is None else min(n, limit)):
            trials.append(bound.trial_spec(i))
            pts.append(bound.locate(i)[0])
    return Plan(
        experiment=exp,
        entry=bound.entry,
        budget=n,
        base_config=bound.base_data,
        base_hash=config_hash(bound.base),
        trials=trials,
        points=pts,
        diffs=[diff(bound.base_data, t.config) for t in trials],
        source=source,
        space=bound.space.describe() if bound.space is not None else [],
    )


_TEXT_LIMIT = 100
_JSON_LIMIT = 1_000
"""``plan --json`` lists at most this many trials unless ``--limit`` says otherwise (``shown``
vs ``budget`` tells): resolving every trial of a 10-million-trial budget would take hours."""


def cli_plan(args: Any) -> int:
    """``python -m ablator plan EXPERIMENT [--json] [--limit N] [--set k=v ...]``."""
    overrides = list(args.overrides)
    limit = args.limit
    try:
        if args.json:
            p = plan(args.experiment, overrides, limit=_JSON_LIMIT if limit is None else limit)
            print(p.to_json())
            if len(p.trials) < p.budget and p.experiment.design.kind != "tpe":
                print(
                    f"ablator plan: {len(p.trials):,} of {p.budget:,} trials listed (--limit N lists more)",
                    file=sys.stderr,
                )
            return 0
        p = plan(args.experiment, overrides, limit=_TEXT_LIMIT if limit is None else limit)
    except ConfigError as exc:
        if args.json:  # machine-readable problems on stdout too; the message goes to stderr
            print(json.dumps({"valid": False, "source": exc.source, "problems": exc.problems}, indent=2))
        raise
    print(p.render())
    return 0


__all__ = [
    "Plan",
    "cli_plan",
    "plan",
]
