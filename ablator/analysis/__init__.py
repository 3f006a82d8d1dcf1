"""Analysis of a store: polars tables, ablation statistics, figures and reports.

>>> from ablator.analysis import load
>>> res = load("./runs/digits")          # a live store, a finished one, or a plain copy
>>> res.trials                            # one row per trial
>>> res.history                           # (trial, step, metric, value) along each lineage
>>> print(res.effects().render())         # what each variant or searched value does
>>> res.report("report/")                 # figures, report.md, report.html

Reads only; never imports torch.
"""

from __future__ import annotations

from ablator.analysis.effects import Effects, Factor
from ablator.analysis.results import LoadInfo, Results, load

__all__ = ["Effects", "Factor", "LoadInfo", "Results", "load"]
