"""Analysis of a store: polars tables, ablation statistics, figures and reports.

>>> from ablator.analysis import load, write_report
>>> res = load("./runs/digits")          # a live store, a finished one, or a plain copy
>>> res.trials                            # one row per trial
>>> res.history                           # (trial, variant, step, metric, value) along each lineage
>>> print(res.effects().render())         # what each variant or searched value does
>>> write_report(res, "report/")          # figures, report.md, report.html

``Results`` is data; :func:`compute_effects` (``res.effects()`` for short), the figures and
:func:`write_report` take it. Reads only; never imports torch.
"""

from __future__ import annotations

from ablator.analysis.effects import Effects, Factor, compute_effects
from ablator.analysis.report import ReportFiles, write_report
from ablator.analysis.results import LoadInfo, Results, load

__all__ = [
    "Effects",
    "Factor",
    "LoadInfo",
    "ReportFiles",
    "Results",
    "compute_effects",
    "load",
    "write_report",
]
