// ablator serve: the dashboard page. Plain JavaScript, no build step; charts by Chart.js (vendored).
// Every text that comes from the store is set with textContent (never innerHTML): error messages,
// logs and config values are the user's own text.
"use strict";

const POLL_MS = 2000;
const STATUS_ORDER = ["completed", "early_stopped", "diverged", "pruned", "failed", "needs_repair",
  "retryable", "released", "running", "pending"];
const STATUS_COLOR = {
  completed: "#1e9e5a", early_stopped: "#53b783", diverged: "#d24b3e", pruned: "#c98a0b",
  failed: "#a8332a", needs_repair: "#7a1f7a", retryable: "#e0a526", released: "#e7c15a",
  running: "#2f6fde", pending: "#cfd4dd",
};
const PALETTE = ["#2f6fde", "#e8663d", "#1e9e5a", "#9b59b6", "#d4a017", "#17a2b8", "#d24b3e",
  "#5d6d7e", "#8e44ad", "#27ae60", "#c0392b", "#2980b9"];

let lastVersion = null;
let lastState = null;
let charts = [];
let rendering = false;
let pendingRender = false;

// ---- small helpers --------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function num(x, digits = 4) {
  if (x === null || x === undefined || (typeof x === "number" && !isFinite(x))) return "–";
  if (typeof x === "boolean") return x ? "yes" : "no";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(digits)).toString();
}
function signed(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  return (x > 0 ? "+" : "") + num(x, digits);
}
function pval(p) {
  if (p === null || p === undefined) return "–";
  return p < 1e-4 ? "<1e-4" : Number(p.toPrecision(3)).toString();
}
function pct(x) { return x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + (100 * x).toFixed(1) + "%"; }
function interval(lo, hi) { return lo === null || lo === undefined || hi === null || hi === undefined ? "–" : `[${num(lo)}, ${num(hi)}]`; }
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function value(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return num(v, 6);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function chip(status) { return h("span", { class: `chip s-${status}`, text: String(status).replace("_", " ") }); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }

async function api(path) {
  const res = await fetch("api/" + path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  let body = null;
  try { body = await res.json(); } catch (e) { body = { error: `HTTP ${res.status}` }; }
  if (!res.ok) {
    const err = new Error(body && body.error ? body.error : `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "trial" && parts[1] !== undefined) return { view: "trial", index: parseInt(parts[1], 10), params };
  return { view: parts[0] || "progress", params };
}
function go(view, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  location.hash = "#/" + view + (s ? "?" + s : "");
}

function destroyCharts() { for (const c of charts) c.destroy(); charts = []; }
function makeChart(canvas, config) {
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
  const chart = new Chart(canvas, config);
  charts.push(chart);
  return chart;
}
function select(options, current, onchange, attrs) {
  const el = h("select", Object.assign({ onchange: (e) => onchange(e.target.value) }, attrs || {}));
  for (const o of options) {
    const [val, label] = Array.isArray(o) ? o : [o, o];
    const opt = h("option", { value: val, text: label });
    if (String(val) === String(current ?? "")) opt.selected = true;
    el.append(opt);
  }
  return el;
}

// ---- polling and rendering ------------------------------------------------------------------
async function poll() {
  let st = null;
  try {
    st = await api("state");
  } catch (e) {
    setStatus(`server unreachable (${e.message})`, true);
    return;
  }
  lastState = st;
  document.getElementById("store-url").textContent = st.url;
  document.getElementById("experiment").textContent = st.experiment || "";
  if (st.experiment) document.title = `ablator · ${st.experiment}`;
  const banner = document.getElementById("error");
  banner.hidden = !st.error;
  banner.textContent = st.error ? `The last read of the store failed (${when(st.error_at)}); showing the read before it.\n${st.error}` : "";
  if (!st.ready) {
    setStatus("reading the store for the first time…", false);
    if (!st.error) document.getElementById("view").replaceChildren(h("p", { class: "muted", text: "Reading the store for the first time (a large store's first read takes a while)…" }));
    return;
  }
  const age = Math.max(0, st.now - st.read_at);
  setStatus(`store read ${new Date(st.read_at * 1000).toLocaleTimeString()} (${age < 1 ? "just now" : duration(age) + " ago"}, took ${duration(st.read_seconds)}) · every ${num(st.interval)} s`,
    age > 3 * st.interval + 10);
  if (st.version !== lastVersion) {
    lastVersion = st.version;
    render(true);
  }
}
function setStatus(text, stale) {
  const el = document.getElementById("read-status");
  el.textContent = text;
  el.classList.toggle("stale", !!stale);
}

async function render(refresh) {
  if (rendering) { pendingRender = true; return; }
  rendering = true;
  const r = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === r.view);
  const view = document.getElementById("view");
  try {
    const fn = { progress: renderProgress, trials: renderTrials, curves: renderCurves, effects: renderEffects, trial: renderTrial }[r.view] || renderProgress;
    const content = await fn(r, refresh);
    const scroll = window.scrollY;
    destroyCharts();
    view.replaceChildren(content.node);
    if (content.after) content.after();
    if (refresh) window.scrollTo(0, scroll);
    view.dataset.version = lastVersion || "";
    view.dataset.view = r.view;
  } catch (e) {
    if (e.status === 503) view.replaceChildren(h("p", { class: "muted", text: "Reading the store for the first time…" }));
    else view.replaceChildren(h("div", { class: "banner error", text: e.message }));
  } finally {
    rendering = false;
    if (pendingRender) { pendingRender = false; render(true); }
  }
}

// ---- progress -------------------------------------------------------------------------------
async function renderProgress() {
  const p = await api("progress");
  const total = p.budget ?? p.trials;
  const bar = h("div", { class: "bar", title: "trials by state" });
  for (const s of STATUS_ORDER) {
    const n = p.counts[s] || 0;
    if (!n || !total) continue;
    const seg = h("span", { title: `${s}: ${n}` });
    seg.style.width = (100 * n / Math.max(total, p.trials)) + "%";
    seg.style.background = STATUS_COLOR[s];
    bar.append(seg);
  }
  const counts = h("div", { class: "toolbar", id: "state-counts" },
    STATUS_ORDER.filter((s) => p.counts[s]).map((s) => h("a", { href: `#/trials?status=${s}`, dataset: { state: s } }, chip(s), " ", String(p.counts[s]))));
  const budget = p.budget === null ? "unknown" : String(p.budget);
  const ext = p.extensions ? ` (${p.base_budget} + ${p.extensions} extended)` : "";
  const eta = p.eta_s === null ? "–" : p.eta_basis === "done" ? "done" : duration(p.eta_s);
  const cards = h("div", { class: "cards" },
    card(`${p.finished} / ${total ?? "?"}`, "finished" + (p.fraction !== null ? ` (${(100 * p.fraction).toFixed(1)}%)` : ""), "finished"),
    card(budget, "budget" + ext, "budget"),
    card(String(p.counts.running || 0), "running", "running"),
    card(`${p.agents_live} / ${p.agents.length}`, "agents alive", "agents"),
    card(p.throughput_per_min === null ? "–" : `${num(p.throughput_per_min, 3)}/min`,
      p.throughput_per_min === null ? "throughput (watching…)" : `throughput over the last ${duration(p.throughput_window_s)}`, "throughput"),
    card(eta, p.eta_basis === "estimated" ? "ETA (from the median duration)" : "ETA", "eta"),
    card(duration(p.median_duration_s), "median trial duration", "median"));
  const agentRows = p.agents.map((a) => h("tr", { dataset: { agent: a.agent_id } },
    h("td", {}, chip(a.state)),
    h("td", { text: a.agent_id }),
    h("td", { text: a.host || "–" }),
    h("td", { text: a.gpus && a.gpus.length ? `${a.gpus.length} × ${[...new Set(a.gpus)].join(", ")}` : "CPU" }),
    h("td", { class: "num", text: a.slots ?? "–" }),
    h("td", {}, (a.held || []).length ? a.held.map(([t, e], i) => [i ? ", " : "", h("a", { href: `#/trial/${t}`, text: `#${t}` + (e ? ` (e${e})` : "") })]) : "–"),
    h("td", { class: "num", text: a.unchanged_s === undefined ? "–" : duration(a.unchanged_s) }),
    h("td", { class: "num", text: a.lease_s ? `${num(a.lease_s)} s` : "–" })));
  const agents = h("div", { class: "panel" }, h("h3", { text: "Agents" }),
    p.agents.length ? h("table", { id: "agents" },
      h("thead", {}, h("tr", {}, ["state", "agent", "host", "devices", "slots", "holds", "heartbeat unchanged for", "lease"].map((t) => h("th", { text: t })))),
      h("tbody", {}, agentRows)) : h("p", { class: "muted", text: "No agent has joined yet (start one: python -m ablator.agent STORE)." }),
    h("p", { class: "muted", text: "Alive: its heartbeat changed while this page watched; dead: unchanged for its lease, on this server's clock; checking: neither yet." }));
  const warn = p.running_unheld.length ? h("div", { class: "banner warn", text: `Running but held by no live agent: ${p.running_unheld.slice(0, 20).map((i) => "#" + i).join(", ")}${p.running_unheld.length > 20 ? " …" : ""} (an agent takes such trials over after a lease).` }) : null;
  const problems = (p.problems || []).length ? h("div", { class: "banner warn", id: "problems" },
    h("b", { text: "Problems found while reading the store (the rest was read):" }),
    h("ul", {}, p.problems.slice(0, 20).map((m) => h("li", { text: m }))),
    p.problems.length > 20 ? `… and ${p.problems.length - 20} more` : null) : null;
  const best = p.best.length ? h("div", { class: "panel" }, h("h3", { text: `Best trials (${p.metric}, ${p.mode})` }),
    h("table", {}, h("thead", {}, h("tr", {}, ["trial", "variant", "seed", "status", p.metric].map((t) => h("th", { text: t })))),
      h("tbody", {}, p.best.map((b) => h("tr", {}, h("td", {}, h("a", { href: `#/trial/${b.index}`, text: `#${b.index}` })),
        h("td", { text: b.variant ?? "–" }), h("td", { text: b.seed ?? "–" }), h("td", {}, chip(b.status)), h("td", { class: "num", text: num(b.value, 5) })))))) : null;
  const load = h("p", { class: "muted", text: `Last read: ${p.load.from_snapshot} trial(s) from the analysis snapshot, ${p.load.read} read record by record, in ${duration(p.load.seconds)}.` });
  return { node: h("div", { id: "progress" }, h("h2", { text: `${p.experiment} · ${p.design || "?"} · ${p.metric} (${p.mode})` }), cards, bar, counts, warn, problems, agents, best, load) };
}
function card(big, label, id) {
  return h("div", { class: "card", dataset: { card: id } }, h("div", { class: "big", text: big }), h("div", { class: "label", text: label }));
}

// ---- trial table ----------------------------------------------------------------------------
let columnsCache = null;
async function columns(refresh) {
  if (!columnsCache || refresh) columnsCache = await api("columns");
  return columnsCache;
}

async function renderTrials(r, refresh) {
  const cols = await columns(refresh);
  const P = Object.fromEntries(r.params.entries());
  const limit = parseInt(P.limit || "100", 10);
  const offset = parseInt(P.offset || "0", 10);
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(P)) if (v) q.set(k, v);
  q.set("limit", String(limit));
  const data = await api("trials?" + q.toString());
  const set = (changes) => go("trials", Object.assign({}, P, { offset: 0 }, changes));
  const bar = h("div", { class: "toolbar" },
    h("label", {}, "state", select([["", "all"], ...cols.statuses], P.status || "", (v) => set({ status: v }), { id: "filter-status" })),
    cols.factors.map((f) => h("label", {}, f.name, select([["", "all"], ...f.levels], P["f." + f.name] || "", (v) => set({ ["f." + f.name]: v }), { id: "filter-" + f.name, "data-factor": f.name }))),
    h("label", {}, "metric", select(cols.metrics, data.metric, (v) => set({ metric: v }), { id: "filter-metric" })),
    h("span", { class: "muted", id: "trial-count", text: `${data.matched} of ${data.total} trials` }));
  const sort = P.sort || "index";
  const desc = P.desc === "1";
  const names = {
    index: "trial", variant: "variant", status: "state", best: `best ${data.metric}`, final: `final ${data.metric}`,
    steps: "steps", attempts: "attempts", takeovers: "takeovers", host: "host", gpu: "GPU", duration_s: "duration", error: "error",
  };
  const order = ["index", ...(cols.ablation ? ["variant"] : []), "status", "best", "final", "steps", "attempts", "takeovers",
    ...data.columns.filter((c) => c.startsWith("f:")), "host", "gpu", "duration_s", "error"];
  const numeric = new Set(["index", "best", "final", "steps", "attempts", "takeovers", "duration_s"]);
  const head = h("tr", {}, order.map((c) => h("th", {
    class: "sortable" + (c === sort ? " sorted" : "") + (numeric.has(c) ? " num" : ""),
    dataset: { col: c },
    onclick: () => set({ sort: c, desc: c === sort && !desc ? "1" : "" }),
  }, (names[c] || c.replace(/^f:/, "")) + (c === sort ? (desc ? " ▼" : " ▲") : ""))));
  const rows = data.rows.map((row) => h("tr", { dataset: { index: row.index, status: row.status } }, order.map((c) => {
    const v = row[c];
    if (c === "index") return h("td", { class: "num" }, h("a", { href: `#/trial/${v}`, text: `#${v}` }));
    if (c === "status") return h("td", {}, chip(v));
    if (c === "duration_s") return h("td", { class: "num", text: duration(v) });
    if (c === "error") return h("td", { class: "err", text: v || "" });
    if (c === "best" || c === "final") {
      // A running trial has no result yet: its values so far, in italics.
      const cell = h("td", { class: "num" + (row.provisional ? " provisional" : ""), text: num(v, 5) });
      if (row.provisional && v !== null) cell.title = "so far (no result yet)";
      return cell;
    }
    return h("td", { class: numeric.has(c) ? "num" : "", text: value(v) });
  })));
  const pager = h("div", { class: "toolbar" },
    h("button", { disabled: offset <= 0, onclick: () => go("trials", Object.assign({}, P, { offset: Math.max(0, offset - limit) })), text: "← previous" }),
    h("span", { class: "muted", text: data.matched ? `${offset + 1}–${Math.min(offset + limit, data.matched)} of ${data.matched}` : "no trial matches" }),
    h("button", { disabled: offset + limit >= data.matched, onclick: () => go("trials", Object.assign({}, P, { offset: offset + limit })), text: "next →" }),
    h("label", {}, "per page", select(["50", "100", "500", "1000"], String(limit), (v) => set({ limit: v }))));
  return { node: h("div", {}, bar, h("table", { id: "trial-table" }, h("thead", {}, head), h("tbody", {}, rows)), pager) };
}

// ---- learning curves ------------------------------------------------------------------------
async function renderCurves(r, refresh) {
  const cols = await columns(refresh);
  const P = Object.fromEntries(r.params.entries());
  const metric = P.metric || cols.metric;
  const groups = [...cols.factors.map((f) => [f.name, `by ${f.name}`]), ["trial", "each trial (running first)"]];
  const group = P.group || (groups.length ? groups[0][0] : "trial");
  const data = await api(`curves?metric=${encodeURIComponent(metric)}&group=${encodeURIComponent(group)}`);
  const bar = h("div", { class: "toolbar" },
    h("label", {}, "metric", select(cols.history_metrics, metric, (v) => go("curves", Object.assign({}, P, { metric: v })), { id: "curve-metric" })),
    h("label", {}, "group", select(groups, group, (v) => go("curves", Object.assign({}, P, { group: v })), { id: "curve-group" })),
    h("span", { class: "muted", text: group === "trial" ? "one line per trial" : "mean per level; band: ± one standard deviation over its trials (seeds)" }));
  const canvas = h("canvas", { id: "curves-chart" });
  const total = data.lines.reduce((n, l) => n + l.steps.length, 0);
  canvas.dataset.points = String(total);
  canvas.dataset.lines = String(data.lines.length);
  const box = h("div", { class: "chart-box" }, canvas);
  const after = () => {
    const datasets = [];
    data.lines.forEach((line, i) => {
      const color = PALETTE[i % PALETTE.length];
      const pts = (ys) => line.steps.map((s, j) => ({ x: s, y: ys[j] }));
      if (line.hi) {
        datasets.push({ label: line.label + " band", data: pts(line.hi), borderWidth: 0, pointRadius: 0, fill: "+1", backgroundColor: color + "33", band: true });
        datasets.push({ label: line.label + " low", data: pts(line.lo), borderWidth: 0, pointRadius: 0, fill: false, band: true });
      }
      const label = line.trials !== undefined ? `${line.label} (${line.trials} trial${line.trials === 1 ? "" : "s"})` : `${line.label}${line.status ? " · " + line.status : ""}`;
      datasets.push({ label, data: pts(line.mean), borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: line.steps.length < 40 ? 2 : 0, fill: false, spanGaps: true });
    });
    makeChart(canvas, {
      type: "line",
      data: { datasets },
      options: {
        parsing: false,
        scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: metric } } },
        plugins: { legend: { labels: { filter: (item, d) => !d.datasets[item.datasetIndex].band } } },
      },
    });
  };
  const empty = data.lines.length ? null : h("p", { class: "muted", text: `No trial has reported ${metric} yet.` });
  return { node: h("div", {}, bar, empty, box), after };
}

// ---- effects --------------------------------------------------------------------------------
// The level columns `Results.effects` returns; those marked optional appear when the analysis
// gives them (adjusted p-values, effect sizes, verdicts). Unknown columns are shown too, before
// the rank, so that nothing effects computes is hidden.
const LEVEL_COLUMNS = [
  { key: "level", head: () => "level", cell: (l) => l.level + (l.reference ? " (reference)" : ""), cls: "" },
  { key: "n", head: () => "n", cell: (l) => (l.n_excluded ? `${l.n} (+${l.n_excluded} excl.)` : String(l.n)) },
  { key: "mean", head: () => "mean", cell: (l) => num(l.mean) },
  { key: "std", head: () => "std", cell: (l) => num(l.std) },
  { key: "ci_low", head: (e) => `${e.conf}% CI`, cell: (l) => interval(l.ci_low, l.ci_high) },
  { key: "diff", head: (e) => `diff vs ${e.vs}`, cell: (l) => (l.reference ? "–" : signed(l.diff)) },
  { key: "diff_ci_low", head: (e) => `diff ${e.conf}% CI`, cell: (l) => interval(l.diff_ci_low, l.diff_ci_high) },
  { key: "rel_change", head: () => "rel.", cell: (l) => (l.reference ? "–" : pct(l.rel_change)) },
  { key: "test", optional: true, head: () => "test", cell: (l) => (l.test ? l.test + (l.n_pairs ? ` (${l.n_pairs} pairs)` : "") : "–"), cls: "" },
  { key: "p_value", head: () => "p", cell: (l) => pval(l.p_value), cls: "num p-value" },
  { key: "p_adjusted", optional: "key", head: (e) => `p adj.${e.adjust ? " (" + e.adjust + ")" : ""}`, cell: (l) => pval(l.p_adjusted), cls: "num p-adjusted" },
  { key: "hedges_g", optional: "key", head: (e) => `Hedges' g [${e.conf}% CI]`, cell: (l) => (l.hedges_g === null || l.hedges_g === undefined ? "–" : `${num(l.hedges_g, 3)} ${interval(l.g_ci_low, l.g_ci_high)}`) },
  { key: "rank", head: () => "rank", cell: (l) => (l.rank ?? "–") },
  { key: "verdict", optional: true, head: () => "verdict", cell: (l) => (l.verdict ? chip(l.verdict) : "–"), cls: "" },
  { key: "note", optional: true, head: () => "note", cell: (l) => l.note || "", cls: "note" },
];
const HIDDEN_LEVEL_KEYS = new Set(["factor", "kind", "reference", "vs", "n_excluded", "ci_high", "diff_ci_high", "better",
  "n_pairs", "g_ci_low", "g_ci_high"]);

async function renderEffects(r, refresh) {
  const cols = await columns(refresh);
  const P = Object.fromEntries(r.params.entries());
  const metric = P.metric || cols.metric;
  const valueKind = P.value || "best";
  const adjustKind = P.adjust || "holm";
  const eff = await api(`effects?metric=${encodeURIComponent(metric)}&value=${encodeURIComponent(valueKind)}&adjust=${encodeURIComponent(adjustKind)}`);
  const setE = (changes) => go("effects", Object.assign({ metric, value: valueKind, adjust: adjustKind }, changes));
  const conf = Math.round(100 * eff.confidence);
  const adjust = eff.adjust ? `; p-values adjusted (${eff.adjust}) over ${eff.n_comparisons ?? "all"} comparisons` : "";
  const bar = h("div", { class: "toolbar" },
    h("label", {}, "metric", select(cols.metrics.length ? cols.metrics : [metric], metric, (v) => setE({ metric: v }), { id: "effects-metric" })),
    h("label", {}, "value", select([["best", "best"], ["final", "final"]], valueKind, (v) => setE({ value: v }), { id: "effects-value" })),
    h("label", {}, "adjust p", select([["holm", "Holm"], ["bh", "Benjamini-Hochberg"]], adjustKind, (v) => setE({ adjust: v }), { id: "effects-adjust" })),
    h("span", { class: "muted", text: `${eff.value} ${eff.metric}, ${eff.mode === "max" ? "higher" : "lower"} is better (${eff.mode_source}); ${eff.n_used} of ${eff.n_finished} finished trials used; ${conf}% intervals${adjust}; the same numbers as \`ablator analyze\`.` }));
  const parts = [bar];
  const afters = [];
  for (const f of eff.factors) {
    const rows = eff.levels.filter((l) => l.factor === f.name);
    // Optional columns: shown when any level has a value; those marked "key" whenever the
    // analysis returns them at all (a dash then says why: too few seeds for a test).
    const present = new Set(rows.flatMap((l) => Object.keys(l).filter((k) => l[k] !== null && l[k] !== undefined)));
    const keys = new Set(rows.flatMap((l) => Object.keys(l)));
    const known = new Set(LEVEL_COLUMNS.map((c) => c.key));
    const shown = LEVEL_COLUMNS.filter((c) => !c.optional || present.has(c.key) || (c.optional === "key" && keys.has(c.key)));
    const extra = [...present].filter((k) => !known.has(k) && !HIDDEN_LEVEL_KEYS.has(k));
    const at = shown.findIndex((c) => c.key === "rank");
    const columns_ = [...shown.slice(0, at), ...extra.map((k) => ({
      key: k, head: () => k, cell: (l) => (/^p_|_p$|adj/.test(k) ? pval(l[k]) : value(l[k])),
    })), ...shown.slice(at)];
    const ctx = { conf, vs: rows[0] ? rows[0].vs : "reference", adjust: eff.adjust };
    const table = h("table", { class: "effects", dataset: { factor: f.name } },
      h("thead", {}, h("tr", {}, columns_.map((c) => h("th", { class: c.cls ?? "num", dataset: { key: c.key }, text: c.head(ctx) })))),
      h("tbody", {}, rows.map((l) => h("tr", { class: l.reference ? "ref" : "", dataset: { level: l.level } },
        columns_.map((c) => h("td", { class: c.cls ?? "num", dataset: { key: c.key } }, c.cell(l)))))));
    const canvas = h("canvas", { class: "effect-chart", dataset: { factor: f.name } });
    const title = f.kind === "variant" ? "Ablation: each variant's difference from the baseline" : `${f.name} (${f.kind})`;
    parts.push(h("div", { class: "panel" }, h("h3", { text: title }), table, h("div", { class: "chart-box small" }, canvas)));
    afters.push(() => effectChart(canvas, rows, eff, conf));
  }
  if (eff.trends && eff.trends.length) {
    const adj = eff.trends.some((t) => t.spearman_p_adjusted !== null && t.spearman_p_adjusted !== undefined);
    parts.push(h("div", { class: "panel" }, h("h3", { text: "Trends of numeric factors" }),
      h("table", { id: "trends" }, h("thead", {}, h("tr", {}, ["factor", "n", "Spearman ρ", "p", ...(adj ? ["p adj."] : []), "slope", `slope ${conf}% CI`, "p", "x"].map((t) => h("th", { text: t })))),
        h("tbody", {}, eff.trends.map((t) => h("tr", {}, h("td", { text: t.factor }), h("td", { class: "num", text: t.n }),
          h("td", { class: "num", text: num(t.spearman_rho, 3) }), h("td", { class: "num", text: pval(t.spearman_p) }),
          adj ? h("td", { class: "num", text: pval(t.spearman_p_adjusted) }) : null,
          h("td", { class: "num", text: num(t.slope) }), h("td", { class: "num", text: interval(t.slope_ci_low, t.slope_ci_high) }),
          h("td", { class: "num", text: pval(t.slope_p) }), h("td", { text: t.x_scale === "log10" ? "per decade" : "per unit" })))))));
  }
  if (!eff.factors.length) parts.push(h("p", { class: "muted", text: "No factor: this design varies nothing." }));
  return { node: h("div", { id: "effects" }, parts), after: () => afters.forEach((f) => f()) };
}

function effectChart(canvas, rows, eff, conf) {
  // Differences from the reference with their intervals: green = better, red = worse,
  // grey = the interval includes no change (as the report's ablation.png); by the verdict
  // (adjusted p-value) where the analysis gives one.
  const shown = rows.filter((l) => !l.reference && l.diff !== null && l.diff !== undefined);
  shown.sort((a, b) => (eff.mode === "max" ? b.diff - a.diff : a.diff - b.diff));
  const color = (l) => {
    if (l.verdict) return l.verdict === "better" ? "#1e9e5a" : l.verdict === "worse" ? "#d24b3e" : "#9aa1ad";
    const lo = l.diff_ci_low, hi = l.diff_ci_high;
    if (lo === null || lo === undefined || (lo <= 0 && hi >= 0)) return "#9aa1ad";
    return l.better ? "#1e9e5a" : "#d24b3e";
  };
  canvas.dataset.levels = String(shown.length);
  makeChart(canvas, {
    type: "bar",
    data: {
      labels: shown.map((l) => l.level),
      datasets: [
        { label: `${conf}% CI of the difference`, data: shown.map((l) => [l.diff_ci_low ?? l.diff, l.diff_ci_high ?? l.diff]), backgroundColor: shown.map((l) => color(l) + "66"), borderColor: shown.map(color), borderWidth: 1, barPercentage: 0.5 },
        { type: "scatter", label: "difference of the means", data: shown.map((l) => ({ x: l.diff, y: l.level })), backgroundColor: shown.map(color), pointRadius: 5 },
      ],
    },
    options: {
      indexAxis: "y",
      scales: {
        x: {
          title: { display: true, text: `difference in ${eff.metric} vs the ${shown[0] ? shown[0].vs : "reference"}` },
          grid: { color: (c) => (c.tick && c.tick.value === 0 ? "#555c6a" : "rgba(0,0,0,0.08)") },
        },
        y: { type: "category" },
      },
      plugins: { legend: { display: true } },
    },
  });
}

// ---- one trial ------------------------------------------------------------------------------
async function renderTrial(r) {
  const P = Object.fromEntries(r.params.entries());
  const t = await api(`trial/${r.index}` + (P.log ? `?log=${encodeURIComponent(P.log)}` : ""));
  const row = t.row;
  const metric = P.metric || t.metric;
  const head = h("h2", {}, `Trial #${t.index} `, chip(row.status), row.variant ? ` · ${row.variant}` : "");
  const m = (k) => row[k];
  const summary = h("table", { class: "kv", id: "trial-summary" }, h("tbody", {},
    [["seed", m("seed")], ["repeat", m("repeat")], ["steps", m("steps")], ["attempts", m("attempts")], ["takeovers", m("takeovers")],
      ["host / GPU", `${m("host") || "–"} / ${m("gpu") || "–"}`], ["duration", duration(m("duration_s"))],
      [`best ${t.metric}`, num(m("best." + t.metric), 6)], [`final ${t.metric}`, num(m("final." + t.metric), 6)],
      ["config hash", m("config_hash")], ["error", m("error")]]
      .filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => h("tr", {}, h("td", { text: k }), h("td", { text: value(v) })))));
  const metrics = Object.keys(t.curves);
  const shownMetric = metrics.includes(metric) ? metric : metrics[0];
  const curve = t.curves[shownMetric] || { steps: [], values: [] };
  const canvas = h("canvas", { id: "trial-chart", dataset: { points: String(curve.steps.length), metric: shownMetric || "" } });
  const chartPanel = h("div", { class: "panel" }, h("h3", { text: "Learning curve" }),
    metrics.length ? h("div", { class: "toolbar" }, h("label", {}, "metric", select(metrics, shownMetric, (v) => go(`trial/${t.index}`, Object.assign({}, P, { metric: v })), { id: "trial-metric" })),
      h("span", { class: "muted", text: `${curve.steps.length} points${row.status === "running" ? " so far (provisional: the newest attempt's lineage)" : ""}` })) : h("p", { class: "muted", text: "No metric rows yet." }),
    h("div", { class: "chart-box small" }, canvas));

  // attempts and takeovers on a time line (each writer's wall clock: for display only)
  const starts = t.timeline.map((e) => e.start).filter((x) => x);
  const ends = t.timeline.map((e) => e.end || e.start).filter((x) => x);
  const t0 = Math.min(...starts), t1 = Math.max(...ends, t0 + 1);
  const tl = h("div", { class: "timeline", id: "timeline" }, t.timeline.map((e) => {
    const seg = h("div", { class: "tl-seg " + (/^(completed|early_stopped)$/.test(e.outcome) ? "ok" : e.outcome === "running" ? "run" : /failed|diverged/.test(e.outcome) ? "bad" : "other"), title: `${e.outcome}${e.why ? ": " + e.why : ""}` });
    if (e.start) {
      seg.style.left = (100 * (e.start - t0) / (t1 - t0)) + "%";
      seg.style.width = (100 * ((e.end || e.start) - e.start) / (t1 - t0)) + "%";
    }
    return h("div", { class: "tl-row", dataset: { epoch: e.epoch } },
      h("div", { class: "tl-label" }, h("b", { text: `attempt e${e.epoch}` }), e.takeover ? [" ", h("span", { class: "chip s-retryable", text: "takeover" })] : "",
        h("br"), h("span", { class: "muted", text: `${e.host || "?"}${e.gpu ? " · " + e.gpu : ""} · ${e.outcome}${e.resumed_from ? ` · resumed from e${e.resumed_from[0]} step ${e.resumed_from[1]}` : ""}${e.canonical ? "" : " · off the lineage"}` })),
      h("div", { class: "tl-track" }, seg));
  }));
  const tlPanel = h("div", { class: "panel" }, h("h3", { text: "Attempts and takeovers" }),
    t.timeline.length ? [tl, h("p", { class: "muted", text: `${when(t0)} – ${when(t1)} (times as each writer's clock says)` })] : h("p", { class: "muted", text: "Not claimed yet." }));

  const diff = h("div", { class: "panel" }, h("h3", { text: `Config: difference from ${t.diff.reference}` }),
    t.diff.rows.length ? h("table", { id: "config-diff" }, h("thead", {}, h("tr", {}, ["path", "reference", "this trial"].map((x) => h("th", { text: x })))),
      h("tbody", {}, t.diff.rows.map((d) => h("tr", { dataset: { path: d.path } }, h("td", { text: d.path + (d.override ? "" : " (resolved)") }), h("td", { text: value(d.reference) }), h("td", { text: value(d.value) })))))
      : h("p", { class: "muted", id: "config-diff", text: "No difference: this is the reference config." }),
    h("details", {}, h("summary", { text: "full config" }), h("table", { class: "kv" }, h("tbody", {}, Object.entries(t.config).map(([k, v]) => h("tr", {}, h("td", { text: k }), h("td", { text: value(v) })))))));

  const fails = t.failures.length ? h("div", { class: "panel", id: "failures" }, h("h3", { text: "Failures" }),
    t.failures.map((f) => h("div", {}, h("p", {}, h("b", { text: `attempt e${f.epoch}: ${f.kind}` }), f.step !== null ? ` at step ${f.step}` : "", ": ", f.message.split("\n")[0]),
      f.traceback ? h("pre", { class: "traceback", text: f.traceback }) : null))) : null;

  const logPanel = h("div", { class: "panel" }, h("h3", { text: "Log" }),
    t.log.epochs.length ? [h("div", { class: "toolbar" }, h("label", {}, "attempt", select(t.log.epochs.map((e) => [String(e), `e${e}`]), String(t.log.epoch), (v) => go(`trial/${t.index}`, Object.assign({}, P, { log: v })), { id: "log-epoch" })),
      h("span", { class: "muted", text: t.log.truncated ? `last ${Math.round(t.log.text.length / 1024)} KiB of ${Math.round(t.log.size / 1024)} KiB` : `${t.log.size} bytes` })),
    h("pre", { id: "log", text: t.log.text })] : h("p", { class: "muted", id: "log", text: "No log saved yet (agents save it now and then and at the end of each attempt)." }));

  const ck = h("div", { class: "panel" }, h("h3", { text: "Checkpoints" }),
    t.checkpoints.length ? h("table", { id: "checkpoints" }, h("thead", {}, h("tr", {}, ["attempt", "step", "size", "on the canonical lineage"].map((x) => h("th", { text: x })))),
      h("tbody", {}, t.checkpoints.map((c) => h("tr", {}, h("td", { text: `e${c.epoch}` }), h("td", { class: "num", text: c.step }), h("td", { class: "num", text: `${(c.size / 1024).toFixed(1)} KiB` }), h("td", { text: c.canonical ? "yes" : "no" })))))
      : h("p", { class: "muted", text: "No checkpoint stored." }));

  const after = () => {
    const log = document.querySelector("pre#log");
    if (log) log.scrollTop = log.scrollHeight; // a tail: show its end
    drawTrialChart();
  };
  const drawTrialChart = () => makeChart(canvas, {
    type: "line",
    data: { datasets: [{ label: shownMetric, data: curve.steps.map((s, i) => ({ x: s, y: curve.values[i] })), borderColor: PALETTE[0], backgroundColor: PALETTE[0], pointRadius: curve.steps.length < 60 ? 2 : 0, borderWidth: 2 }] },
    options: { parsing: false, scales: { x: { type: "linear", title: { display: true, text: "step" } } } },
  });
  return { node: h("div", { id: "trial", dataset: { index: t.index } }, head, h("div", { class: "grid2" }, h("div", { class: "panel" }, summary), chartPanel), tlPanel, diff, fails, logPanel, ck), after };
}

// ---- start ----------------------------------------------------------------------------------
window.addEventListener("hashchange", () => render(false));
poll();
setInterval(poll, POLL_MS);
