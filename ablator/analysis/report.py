"""``ablator report STORE --out DIR``: figures (PNG), ``report.md``, a self-contained
``report.html`` (images embedded as base64) and ``effects.json``.

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
twice, so that the Markdown and the HTML always say the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl

from ablator.analysis import text
from ablator.analysis.effects import Effects, compute_effects
from ablator.analysis.figures import FigureFile, write_figures
from ablator.analysis.reader import DONE_STATUSES
from ablator.analysis.results import Mode, Results, Value
from ablator.analysis.stats import Adjust
from ablator.errors import AnalysisError
from ablator.pruners import Asha, parse_pruner, rung_step, rungs


@dataclass(frozen=True)
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "ul" | "table" | "img"
    text: str = ""
    items: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    figure: FigureFile | None = None


def _table(headers: list[str], rows: list[list[str]]) -> Block:
    return Block("table", headers=tuple(headers), rows=tuple(tuple(r) for r in rows))


def _summary(res: Results, effects: Effects) -> list[Block]:
    design = res.design
    kind = design.get("kind", "?")
    items = [f"store: {res.url}"]
    launched = _dt.datetime.fromtimestamp(res.spec.wall_time, tz=_dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    items.append(
        f"launched: {launched}" + (f", code {res.spec.code_sha256[:12]}" if res.spec.code_sha256 else "")
    )
    what = f"design: {kind}, {design.get('repeats', 1)} repeat(s) per config, design seed {design.get('seed', 0)}"
    if kind == "ablation":
        variants = design.get("ablations") or {}
        what += f"; baseline + {len(variants)} variant(s)"
    elif design.get("space"):
        what += f"; searched: {', '.join(design['space'])}"
    items.append(what)
    items.append(text.describe(effects))
    counts = res.status_counts()
    budget = f" of a budget of {res.budget}" if res.budget is not None else ""
    items.append(
        f"trials: {res.trials.height}{budget}: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    )
    hosts = res.trials["host"].drop_nulls().unique().to_list()
    gpus = res.trials["gpu"].drop_nulls().value_counts(sort=True).rows()
    machine = f"hosts: {len(hosts)}" + (
        f" ({', '.join(sorted(hosts)[:6])}{', ...' if len(hosts) > 6 else ''})" if hosts else ""
    )
    if gpus:
        machine += "; GPUs: " + ", ".join(f"{name} x{n}" for name, n in gpus[:6])
    items.append(machine)
    total = res.trials["duration_s"].drop_nulls().sum()
    warm = res.trials["setup_s"].drop_nulls().sum()
    items.append(
        f"training time of finished trials: {text.duration(float(total) if total is not None else None)}"
        + (f", plus {text.duration(float(warm))} of warm-up (imports, data, model; setup_s)" if warm else "")
    )
    out = [Block("h2", "Summary"), Block("ul", items=tuple(items))]
    if kind == "ablation" and design.get("ablations"):
        rows = [
            [name, ", ".join(f"{k} = {json.dumps(v)}" for k, v in (overrides or {}).items()) or text.DASH]
            for name, overrides in design["ablations"].items()
        ]
        out += [Block("h3", "Variants"), _table(["variant", "overrides of the base config"], rows)]
    return out


def _best(res: Results, effects: Effects, k: int = 10) -> list[Block]:
    top = res.best(k, effects.metric, effects.mode, effects.value)
    if top.height == 0:
        return [Block("h2", "Best trials"), Block("p", "No finished trial has a value of the metric yet.")]
    factor_cols = [(f.name, f.column) for f in effects.factors]
    headers = ["trial", *(name for name, _ in factor_cols), effects.metric, "seed", "status", "steps"]
    rows = []
    for r in top.to_dicts():
        rows.append(
            [
                f"#{r['index']}",
                *(
                    text.num(r.get(col)) if isinstance(r.get(col), float) else str(r.get(col))
                    for _, col in factor_cols
                ),
                text.num(r["value"], 5),
                text.num(r["seed"]),
                str(r["status"]),
                text.num(r["steps"]),
            ]
        )
    return [
        Block("h2", f"Best trials ({effects.value} {effects.metric}, {effects.mode})"),
        _table(headers, rows),
    ]


def _effects(res: Results, effects: Effects, figures: list[FigureFile]) -> list[Block]:
    out = [
        Block("h2", "Effects"),
        Block("p", text.describe(effects) + "."),
        Block("p", text.describe_comparisons(effects) + "."),
    ]
    if not effects.factors:
        out.append(Block("p", "The design varies nothing: there are no factors to compare."))
    for factor in effects.factors:
        rows = effects.factor(factor.name).to_dicts()
        vs = rows[0]["vs"] if rows else "best"
        out.append(Block("h3", f"{factor.name} ({factor.kind}; differences vs the {vs})"))
        if rows:
            out.append(_table(text.level_headers(effects), [text.level_cells(r) for r in rows]))
            notes = text.level_notes(rows)
            if notes:
                out.append(Block("ul", items=tuple(n.removeprefix("* ") for n in notes)))
        else:
            out.append(Block("p", "No data yet."))
        trend = effects.trends.filter(pl.col("factor") == factor.name)
        if trend.height:
            trends = trend.to_dicts()
            out.append(_table(text.TREND_HEADERS, [text.trend_cells(r) for r in trends]))
            notes = [f"{r['factor']}: {r['note']}" for r in trends if r.get("note")]
            if notes:
                out.append(Block("ul", items=tuple(notes)))
        out += [Block("img", figure=f) for f in figures if f.factor == factor.name]
    out += [Block("img", figure=f) for f in figures if f.factor is None]
    return out


COMPUTE_ROWS = 40


def _compute(res: Results, effects: Effects) -> list[Block]:
    """Compute spent per trial (steps and training time), and the pruned trials with their last
    value and the rung where they stopped."""
    done = res.trials.filter(pl.col("status").is_in(list(DONE_STATUSES)))
    if done.height == 0 or "steps" not in done.columns:
        return []
    total = int(done["steps"].fill_null(0).sum())
    by_status = done.group_by("status", maintain_order=True).agg(pl.col("steps").fill_null(0).sum()).rows()
    parts = ", ".join(
        f"{status} {int(steps):,} ({steps / total:.0%})" if total else f"{status} {int(steps):,}"
        for status, steps in by_status
    )
    out = [
        Block("h2", "Compute"),
        Block("p", f"{total:,} trial-steps over {done.height} finished trials: {parts}."),
    ]
    pruned = done.filter(pl.col("status") == "pruned")
    pruner, _ = parse_pruner(res.design.get("pruner"))
    if pruned.height:
        how = "" if pruner is None else " by ASHA" if isinstance(pruner, Asha) else " by the median rule"
        out.append(
            Block(
                "p",
                f"{pruned.height} trial(s) were pruned{how}: they stopped early and are left out of the effects "
                f"(which count trials with status {', '.join(effects.statuses)}); each is listed with its last "
                f"value of {effects.metric} and where it stopped.",
            )
        )
    finals = res.values(effects.metric, "final")
    frame = res.trials.with_columns(finals.alias("last")).filter(pl.col("status").is_in(list(DONE_STATUSES)))
    frame = frame.sort(["steps", "index"], descending=[True, False], nulls_last=True)
    rows = []
    for r in frame.head(COMPUTE_ROWS).to_dicts():
        where = text.DASH
        if r["status"] == "pruned" and isinstance(pruner, Asha) and r["steps"] is not None:
            reached = rungs(pruner, int(r["steps"]))
            where = f"rung {reached[-1]} (step {rung_step(pruner, reached[-1])})" if reached else text.DASH
        elif r["status"] == "pruned" and r["steps"] is not None:
            where = f"step {r['steps']}"
        rows.append(
            [
                f"#{r['index']}",
                str(r["status"]),
                text.num(r["steps"]),
                text.duration(r["duration_s"]),
                text.num(r["last"], 5),
                where,
            ]
        )
    out.append(
        _table(["trial", "status", "steps", "training time", f"last {effects.metric}", "stopped at"], rows)
    )
    if frame.height > COMPUTE_ROWS:
        out.append(Block("p", f"... and {frame.height - COMPUTE_ROWS} more (fewer steps)."))
    return out


def _failures(res: Results) -> list[Block]:
    bad = res.trials.filter(pl.col("status").is_in(["failed", "retryable"]) | pl.col("error").is_not_null())
    if bad.height == 0:
        return []
    rows = [
        [f"#{r['index']}", str(r["status"]), str(r["failures"]), str(r["takeovers"]), r["error"] or text.DASH]
        for r in bad.head(30).to_dicts()
    ]
    more = [Block("p", f"... and {bad.height - 30} more.")] if bad.height > 30 else []
    return [
        Block("h2", "Failures"),
        _table(["trial", "status", "failures", "takeovers", "errors (first attempt first)"], rows),
        *more,
    ]


def build(res: Results, effects: Effects, figures: list[FigureFile]) -> list[Block]:
    """The report's content, rendered by :func:`markdown` and :func:`to_html`."""
    done = int(res.trials["status"].is_in(list(DONE_STATUSES)).sum())
    running = res.trials.height - done
    title = f"{res.name}: {'ablation' if res.design.get('kind') == 'ablation' else 'experiment'} report"
    note = (
        f"Generated {_dt.datetime.now(tz=_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from {done} finished trial(s)"
        + (f"; {running} not finished yet, so the numbers may still move." if running else ".")
    )
    return [
        Block("h1", title),
        Block("p", note),
        *_summary(res, effects),
        *_best(res, effects),
        *_effects(res, effects, figures),
        *_compute(res, effects),
        *_failures(res),
    ]


def markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            out.append(text.markdown_table(b.headers, b.rows))
        elif b.kind == "img" and b.figure is not None:
            out.append(f"![{b.figure.title}]({b.figure.name})\n\n*{b.figure.caption}*")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def to_html(blocks: list[Block]) -> str:
    """A single HTML file: every figure embedded as base64, no external resources."""
    esc = html.escape
    title = next((b.text for b in blocks if b.kind == "h1"), "ablator report")
    out = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>']
    out.append(f"<style>{_CSS}</style></head><body>")
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{esc(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img" and b.figure is not None:
            data = base64.b64encode(b.figure.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{esc(b.figure.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.figure.title)}: {esc(b.figure.caption)}</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    effects_json: Path
    figures: tuple[FigureFile, ...]


def write_report(
    res: Results,
    out: str | os.PathLike[str],
    *,
    metric: str | None = None,
    mode: Mode | None = None,
    value: Value = "best",
    adjust: Adjust = "holm",
) -> ReportFiles:
    """Write the figures, ``report.md``, ``report.html`` and ``effects.json`` of ``res`` into
    ``out`` (created if missing). ``metric``, ``mode``, ``value`` and ``adjust`` as for
    :func:`~ablator.analysis.effects.compute_effects`."""
    folder = _check_out(res, Path(out))
    effects = compute_effects(res, metric, mode=mode, value=value, adjust=adjust)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Written into a fresh folder beside the target, then swapped in: a killed report leaves
        # the previous one whole, and figures of an older report never linger beside new text.
        _clear_leftovers(folder)
        work = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()  # (not mkdtemp: the report folder keeps the usual permissions)
    except OSError as exc:
        raise AnalysisError(f"report --out {out}: cannot create the folder: {exc.strerror or exc}") from None
    try:
        figures = write_figures(res, effects, work)
        blocks = build(res, effects, figures)
        (work / "report.md").write_text(markdown(blocks), encoding="utf-8")
        (work / "report.html").write_text(to_html(blocks), encoding="utf-8")
        payload: dict[str, Any] = {"experiment": res.name, "url": res.url, "effects": effects.to_dict()}
        # effects.to_dict() already turned NaN into null: the file is strict JSON.
        (work / "effects.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        _swap_in(work, folder)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise AnalysisError(f"report --out {out}: cannot write the report: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    moved = tuple(dataclasses.replace(f, path=folder / f.path.name) for f in figures)
    return ReportFiles(folder / "report.md", folder / "report.html", folder / "effects.json", moved)


_REPORT_MARKERS = ("report.md", "effects.json")


def _check_out(res: Results, folder: Path) -> Path:
    """Refuse an ``--out`` inside a local store (the report would sit among its records), a
    file, or a folder holding other things than a report (the swap would delete them)."""
    parsed = urlparse(res.url)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path)).resolve()
        target = folder.resolve()
        if target == root or root in target.parents:
            raise AnalysisError(
                f"report --out {folder}: that is inside the store {res.url}; write the report elsewhere "
                "(without --out: ./ablator-report/<experiment name>)"
            )
    if folder.exists() and not folder.is_dir():
        raise AnalysisError(
            f"report --out {folder}: that is a file; give a folder (it is created if missing)"
        )
    if folder.is_dir():
        names = {p.name for p in folder.iterdir()}
        if names and not names & set(_REPORT_MARKERS):
            raise AnalysisError(
                f"report --out {folder}: the folder holds other files ({', '.join(sorted(names)[:5])}) and no "
                "report; give an empty or new folder, or a previous report's (it is replaced as a whole)"
            )
    return folder


def _clear_leftovers(folder: Path) -> None:
    """Delete what killed reports left beside ``folder``: their work folders (``.NAME.tmp-PID-*``)
    and replaced reports not yet deleted (``.NAME.old-PID-*``), where process PID is gone (a
    report running now into the same folder keeps its own)."""
    for kind in ("tmp", "old"):
        for path in folder.parent.glob(f".{folder.name}.{kind}-*"):
            pid = path.name[len(f".{folder.name}.{kind}-") :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _swap_in(work: Path, folder: Path) -> None:
    """Replace ``folder`` by ``work`` (two renames; the old report is deleted after)."""
    old: Path | None = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(folder, old)
    os.rename(work, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["Block", "ReportFiles", "build", "markdown", "to_html", "write_report"]
