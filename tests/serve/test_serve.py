"""``ablator serve`` in a real browser (Playwright driving Debian's Chromium) against real stores:
a live study written by real agent processes, a finished one, an S3 store (moto), a token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from agent.conftest import AgentProc, experiment, launch_toy, wait_for
from analysis.synthstore import StoreBuilder, ablation_experiment

from ablator import layout, records
from ablator.analysis import load
from ablator.cli import main
from ablator.errors import AnalysisError
from ablator.store import open_store

from .conftest import Page, Server, tree_digest

VIEWS = ["#/", "#/trials", "#/curves", "#/effects"]


def _rows(tab: Page) -> list[int]:
    return [
        int(i)
        for i in tab.page.eval_on_selector_all("#trial-table tbody tr", "rs => rs.map(r => r.dataset.index)")
    ]


def _shown(tab: Page, selector: str, attr: str) -> Any:
    return (
        tab.page.eval_on_selector(selector, f"e => e.dataset.{attr}")
        if tab.page.query_selector(selector)
        else None
    )


def _browse_everything(tab: Page, server: Server, trials: int, factors: list[str]) -> None:
    """Every view, every grouping of the curves, every trial page."""
    for view in VIEWS:
        tab.page.goto(server.url.split("?")[0] + view)
        tab.page.wait_for_function(
            f"() => document.getElementById('view').dataset.view === '{view[2:] or 'progress'}'"
        )
    for group in [*factors, "trial"]:
        tab.page.goto(server.base + f"/#/curves?group={group}")
        tab.page.wait_for_selector("#curves-chart")
    for i in range(trials):
        tab.page.goto(server.base + f"/#/trial/{i}")
        tab.page.wait_for_selector(f"#trial[data-index='{i}']")


@pytest.mark.procs
def test_live_study_in_the_browser(
    tmp_path: Path, serve_env: dict[str, str], servers: Any, tab: Page
) -> None:
    """While two real agents run an ablation: the page loads without console errors, the table
    shows every trial, a running trial's curve gains points between two refreshes (no reload),
    filters work, agents show as alive with what they hold; afterwards the trial page shows the
    log and the config diff, effects match ``analyze``, and browsing everything wrote nothing."""
    store_url = str(tmp_path / "store")
    exp = experiment(
        "live",
        config={"steps": 24, "checkpoint_every": 2, "sleep": 0.2},
        design={"kind": "ablation", "repeats": 2, "seed": 1, "ablations": {"shift": {"x": 0.5}}},
        # The time line below must show one takeover, the kill's: a lease whose fence (after
        # 3.2 s without a renewal, not 1.2 s) a live agent does not reach on a loaded machine,
        # next to a browser and a server.
        limits={"lease_seconds": 4.0},
    )
    launch_toy(store_url, exp)
    server = servers(store_url, serve_env, "--interval", "0.5")
    page = tab.page
    page.goto(server.url)
    page.wait_for_selector("#progress")
    env = {**serve_env, "ABLATOR_LOCK_DIR": str(tmp_path / "locks")}
    agents = [AgentProc(store_url, env, tmp_path / f"agent-{k}.log") for k in range(2)]
    try:
        # Agents appear, and are called alive once their heartbeats are seen to change.
        page.wait_for_selector("#agents tbody tr .s-alive", timeout=90_000)

        # A running trial's curve grows while the page refreshes by itself.
        running = wait_for(
            "a running trial with reported steps",
            lambda: [
                r["index"]
                for r in server.json("/api/trials?status=running")["rows"]
                if (r["steps"] or 0) >= 1 and (r["steps"] or 0) <= 16
            ],
            timeout=120,
        )
        page.goto(server.base + f"/#/trial/{running[0]}")
        page.wait_for_selector(f"#trial[data-index='{running[0]}'] #trial-chart")
        first = int(_shown(tab, "#trial-chart", "points"))
        page.wait_for_function(
            f"() => Number(document.getElementById('trial-chart')?.dataset.points) > {first}", timeout=60_000
        )

        # The table shows every trial, and the variant filter narrows it.
        page.goto(server.base + "/#/trials")
        page.wait_for_selector("#trial-table tbody tr")
        assert sorted(_rows(tab)) == [0, 1, 2, 3]
        page.select_option("#filter-variant", "shift")
        page.wait_for_function("() => location.hash.includes('f.variant=shift')")
        page.wait_for_function("() => document.querySelectorAll('#trial-table tbody tr').length === 2")
        shift = {r["index"] for r in server.json("/api/trials")["rows"] if r["variant"] == "shift"}
        assert set(_rows(tab)) == shift and len(shift) == 2

        # SIGKILL an agent that holds a trial: the page calls it dead (its heartbeat stops for a
        # lease on the server's clock), and the other agent takes the trial over.
        def holding() -> tuple[str, int] | None:
            # ... well before the end of its trial (24 steps), so that the kill leaves it unfinished
            early = {
                r["index"]
                for r in server.json("/api/trials?status=running")["rows"]
                if (r["steps"] or 0) <= 12
            }
            for a in server.json("/api/progress")["agents"]:
                if a.get("pid") == agents[0].pid and a["state"] == "alive":
                    for t, _ in a["held"]:
                        if t in early:
                            return str(a["agent_id"]), int(t)
            return None

        victim, orphan = wait_for("the first agent holding a trial", holding, timeout=120)
        agents[0].kill_tree()
        page.goto(server.base + "/#/")
        page.wait_for_selector(f"#agents tr[data-agent='{victim}'] .s-dead", timeout=60_000)
        assert agents[1].wait(180) == 0, agents[1].output()
    finally:
        for a in agents:
            a.kill_tree()

    # Finished: the state filter shows the four completed trials and no failed one.
    page.goto(server.base + "/#/trials?status=completed")
    page.wait_for_function(
        "() => document.querySelectorAll('#trial-table tbody tr').length === 4", timeout=60_000
    )
    assert {
        s for s in page.eval_on_selector_all("#trial-table tbody tr", "rs => rs.map(r => r.dataset.status)")
    } == {"completed"}
    page.select_option("#filter-status", "failed")
    page.wait_for_function("() => document.querySelectorAll('#trial-table tbody tr').length === 0")
    assert "no trial matches" in page.inner_text("main")
    page.goto(server.base + "/#/")
    page.wait_for_function(
        "() => document.querySelector('[data-card=finished] .big')?.textContent === '4 / 4'", timeout=60_000
    )

    # The trial page of a shifted trial: its log tail and its diff from the baseline.
    i = min(shift)
    page.goto(server.base + f"/#/trial/{i}")
    page.wait_for_selector(f"#trial[data-index='{i}'] #config-diff")
    assert re.search(rf"toy trial {i} epoch \d+ step 24\n", page.inner_text("#log"))
    diff = page.eval_on_selector_all(
        "#config-diff tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert diff == [["x", "0", "0.5"]]
    assert "baseline trial #" in page.inner_text("#trial h3:has-text('Config')")
    assert page.query_selector_all("#timeline .tl-row")
    # The killed agent's trial: two attempts on its time line, the second a takeover.
    page.goto(server.base + f"/#/trial/{orphan}")
    page.wait_for_selector(f"#trial[data-index='{orphan}'] #timeline")
    assert page.eval_on_selector_all("#timeline .tl-row", "rs => rs.map(r => r.dataset.epoch)") == ["0", "1"]
    assert page.inner_text("#timeline .tl-row[data-epoch='1'] .chip") == "takeover"
    assert "taken over" in page.inner_text("#timeline .tl-row[data-epoch='0']")

    # Effects: the same numbers as `ablator analyze` (Results.effects), shown on the page.
    expected = (
        load(open_store(store_url, read_only=True), cache_dir=tmp_path / "own-cache").effects().to_dict()
    )
    shown = server.json("/api/effects")
    assert shown["levels"] == expected["levels"]
    page.goto(server.base + "/#/effects")
    page.wait_for_selector("table.effects tbody tr[data-level=shift]")
    p_value = next(lv["p_value"] for lv in expected["levels"] if lv["level"] == "shift")
    cell = page.inner_text("table.effects tbody tr[data-level=shift] td.p-value")
    if p_value is None:
        assert cell == "\u2013"  # a dash: too few trials or no variance
    elif p_value < 1e-4:
        assert cell == "<1e-4"
    else:
        assert float(cell) == pytest.approx(p_value, rel=5e-3)  # three significant digits
    # ... and the adjusted p-value beside it (effects adjusts over all comparisons).
    p_adjusted = next(lv["p_adjusted"] for lv in expected["levels"] if lv["level"] == "shift")
    adjusted = page.inner_text("table.effects tbody tr[data-level=shift] td.p-adjusted")
    if p_adjusted is None:
        assert adjusted == "\u2013"
    elif p_adjusted < 1e-4:
        assert adjusted == "<1e-4"
    else:
        assert float(adjusted) == pytest.approx(p_adjusted, rel=5e-3)
    assert page.eval_on_selector("canvas.effect-chart", "e => e.dataset.levels") == "1"
    page.goto(server.base + "/#/curves")
    page.wait_for_function("() => document.getElementById('curves-chart')?.dataset.lines === '2'")

    # Read-only: browsing every page of the finished store changes no byte of it.
    before = tree_digest(Path(store_url))
    _browse_everything(tab, server, 4, ["variant"])
    for path in ["/api/progress", "/api/columns", "/api/trials", "/api/effects", "/api/curves?group=trial"]:
        server.json(path)
    assert tree_digest(Path(store_url)) == before
    assert not (Path(store_url) / layout.CACHE_DIR).exists()  # snapshots went to the local cache
    assert tab.errors == []


def _small_store(url: str, trials: int = 8) -> None:
    store = open_store(url)
    b = StoreBuilder(store, ablation_experiment(repeats=2))
    variants = ["", "no_dropout", "gelu", "no_batchnorm"]
    for i in range(trials):
        v = variants[i % 4]
        overrides = b.experiment["design"]["ablations"].get(v, {}) if v else {}
        b.finished(i, overrides, 0.8 + 0.02 * (i % 4) + 0.001 * i, variant=v, repeat=i // 4)


@pytest.mark.procs
def test_token_is_required_and_compared(
    tmp_path: Path, serve_env: dict[str, str], servers: Any, tab: Page
) -> None:
    store_url = str(tmp_path / "store")
    _small_store(store_url)
    # A failure message that is also markup: the page must show it as text, never run it.
    hostile = '<img src=x onerror="document.title=1"><b>bold</b>'
    assert open_store(store_url).create(
        layout.failed(7, 1),
        records.encode(records.Failure(trial=7, epoch=1, agent_id="a1", message=hostile)),
    )
    server = servers(store_url, {**serve_env, "ABLATOR_SERVE_TOKEN": "s3cret-token"})
    assert server.url.endswith("?token=s3cret-token")
    for path in ["/", "/api/state", "/api/trials", "/static/dashboard.js"]:
        assert server.get(path)[0] == 401
        assert server.get(path, {"Authorization": "Bearer wrong"})[0] == 401
        assert server.get(path + "?token=s3cret-tokeN")[0] == 401
    assert server.get("/api/state", {"Authorization": "Bearer s3cret-token"})[0] == 200
    # The browser trades the URL's token for a cookie and then loads everything.
    tab.page.goto(server.url)
    tab.page.wait_for_selector("#progress")
    assert "token=" not in tab.page.url
    tab.page.goto(server.base + "/#/trials")
    tab.page.wait_for_function("() => document.querySelectorAll('#trial-table tbody tr').length === 8")
    assert tab.page.inner_text("#trial-table tr[data-index='7'] td.err") == f"exception: {hostile}"
    tab.page.goto(server.base + "/#/trial/7")
    tab.page.wait_for_selector("#failures")
    assert hostile in tab.page.inner_text("#failures")
    assert tab.page.query_selector_all("main img, main b:has-text('bold')") == []
    assert tab.errors == []
    # Only reads: no route takes a POST.
    import urllib.request

    req = urllib.request.Request(server.base + "/api/state", data=b"{}", method="POST")
    req.add_header("Authorization", "Bearer s3cret-token")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a POST was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405


@pytest.mark.procs
def test_s3_store_page_loads(
    s3_url: str, subprocess_env: dict[str, str], serve_env: dict[str, str], servers: Any, tab: Page
) -> None:
    _small_store(s3_url)
    store = open_store(s3_url)
    before = {e.key: e.etag for e in store.list("")}
    server = servers(s3_url, {**subprocess_env, "ABLATOR_CACHE_DIR": serve_env["ABLATOR_CACHE_DIR"]})
    tab.page.goto(server.url)
    tab.page.wait_for_selector("#progress")
    assert tab.page.inner_text("[data-card=finished] .big") == "8 / 8"
    _browse_everything(tab, server, 8, ["variant"])
    tab.page.goto(server.base + "/#/trials")
    tab.page.wait_for_function("() => document.querySelectorAll('#trial-table tbody tr').length === 8")
    assert tab.errors == []
    assert {e.key: e.etag for e in store.list("")} == before


def test_sorting_and_paging_on_the_server(tmp_path: Path) -> None:
    """The table is sorted, filtered and paged by the server (a 10,000-trial store sends one
    page); the API's rows follow the requested order."""
    from ablator.serve.view import StoreView

    store_url = str(tmp_path / "store")
    _small_store(store_url)
    # One more trial, running: claimed, started, 5 rows reported, no result.
    b = StoreBuilder.__new__(StoreBuilder)
    b.store, b.experiment = open_store(store_url), ablation_experiment(repeats=2)
    b.claim(8, 0, b.spec_for(8, {}, variant="", repeat=2))
    b.attempt(8, 0)
    b.metrics(8, 0, range(1, 6), lambda s: {"val_accuracy": [0.1, 0.5, 0.4, 0.45, 0.3][s - 1]})
    corrupt = layout.metrics(8, 0, 99)
    assert b.store.create(corrupt, b"not a record")
    view = StoreView(open_store(store_url, read_only=True), cache_dir=tmp_path / "cache")
    assert view.refresh() is not None
    # A corrupt record is named on the progress page, and the rest is read.
    assert any(corrupt in p for p in view.progress()["problems"])
    page = view.trials(sort="best", descending=True, limit=3)
    assert page["matched"] == 9 and len(page["rows"]) == 3
    values = [r["best"] for r in view.trials(sort="best", descending=True)["rows"]]
    assert values == sorted(values, reverse=True)
    # The running trial shows its best and latest values so far, flagged as provisional.
    (running,) = view.trials(status="running")["rows"]
    assert (running["index"], running["best"], running["final"], running["provisional"]) == (
        8,
        0.5,
        0.3,
        True,
    )
    assert not any(r["provisional"] for r in view.trials(status="completed")["rows"])
    assert [r["index"] for r in view.trials(offset=6)["rows"]] == [6, 7, 8]
    gelu = view.trials(filters={"variant": "gelu"})
    assert [r["index"] for r in gelu["rows"]] == [2, 6]
    with pytest.raises(AnalysisError, match="no factor 'nope'"):
        view.trials(filters={"nope": "x"})
    with pytest.raises(AnalysisError, match="cannot sort by"):
        view.trials(sort="nope")
    # Effects: the numbers of `analyze --value final --adjust bh` as well as the defaults.
    with pytest.warns(records.CorruptRecordWarning, match="e0000-s00000099"):
        res = load(open_store(store_url, read_only=True), cache_dir=tmp_path / "own-cache")
    for options in ({}, {"value": "final", "adjust": "bh"}):
        assert view.effects(**options)["levels"] == res.effects(**options).to_dict()["levels"]
    with pytest.raises(AnalysisError, match="adjust"):
        view.effects(adjust="bonferroni")
    curves = view.curves(group="variant")
    assert [line["label"] for line in curves["lines"]] == ["baseline", "no_dropout", "gelu", "no_batchnorm"]
    assert [line["trials"] for line in curves["lines"]] == [3, 2, 2, 2]  # the running one counts
    assert all(len(line["steps"]) == 20 for line in curves["lines"])
    baseline = curves["lines"][0]
    assert baseline["n"][:5] == [3] * 5 and baseline["n"][5:] == [2] * 15  # it reported 5 steps


def test_cli_refuses_a_store_without_an_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "ablator serve: error:" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 1
    assert "no experiment here" in capsys.readouterr().err
    assert not any((tmp_path / "empty").iterdir())  # nothing written there either
