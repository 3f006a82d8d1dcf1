"""The import rules of docs/architecture.md, checked on the source (no imports are run).

Layers, bottom up; a module imports only its own layer and the layers below, with no import-time
cycle, never ``ablator.cli`` (the entry layer), and never another module's ``_private`` names.
"""

from __future__ import annotations

import ast
from pathlib import Path

from testkit import ROOT

PACKAGE = ROOT / "ablator"

LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "_typing_utils"}),
    (
        "data",
        {"formats", "overrides", "validation", "config", "space", "samplers", "entrypoint"}
        | {"records", "layout", "store/", "lineage"},
    ),
    ("design", {"pruners", "tpe", "experiment", "planning", "spec", "ablator"}),
    ("protocol", {"lease/", "codesnap"}),
    ("work", {"train/", "analysis/", "serve/"}),
    ("orchestration", {"agent/", "ops", "status", "running", "trials", "engines/"}),
    ("entry", {"cli", "__main__"}),
]
"""``ablator`` is the package's ``__init__`` (the public names and ``__version__``)."""

TRAIN_MAY_NOT_IMPORT = {"lease/", "experiment", "planning", "analysis/", "agent/", "ops"}
"""The trainer runs a trial it is given; claiming, designs and analysis are not its business."""

EXCEPTIONS = {
    # `python -m ablator.agent` is an entry point: its main() hands argv to the CLI.
    ("ablator.agent", "cli"),
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _group(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "ablator"
    return f"{parts[1]}/" if (PACKAGE / parts[1]).is_dir() else parts[1]


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, bool, list[str]]]:
    """(imported module, at import time?, names imported from it) for every ablator import,
    ``if TYPE_CHECKING:`` blocks left out."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only = {
        id(n)
        for t in ast.walk(tree)
        if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
        for b in t.body
        for n in ast.walk(b)
    }
    top = {id(n) for n in tree.body}
    out: list[tuple[str, bool, list[str]]] = []
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        if isinstance(n, ast.Import):
            out += [(a.name, id(n) in top, []) for a in n.names if a.name in mods]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("ablator"):
                continue
            names = []
            for a in n.names:
                if f"{base}.{a.name}" in mods:
                    out.append((f"{base}.{a.name}", id(n) in top, []))
                else:
                    names.append(a.name)
            if names:
                out.append((base, id(n) in top, names))
    return out


def test_every_module_has_a_layer() -> None:
    placed = set().union(*(groups for _, groups in LAYERS))
    unplaced = sorted({_group(m) for m in _modules()} - placed)
    assert unplaced == [], (
        f"new modules {unplaced}: give each a layer in LAYERS here and a row in docs/architecture.md's module map"
    )


def test_imports_go_down_the_layers() -> None:
    mods = _modules()
    rank = {g: i for i, (_, groups) in enumerate(LAYERS) for g in groups}
    wrong = []
    for m, p in mods.items():
        src = _group(m)
        for target, _, _ in _imports(m, p, mods):
            dst = _group(target)
            if dst == src or (m, dst) in EXCEPTIONS:
                continue
            if rank[dst] > rank[src] or (src == "train/" and dst in TRAIN_MAY_NOT_IMPORT):
                wrong.append(f"{m} imports {target}")
    assert wrong == [], "imports against docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_another_modules_private_names() -> None:
    mods = _modules()
    wrong = [
        f"{m}: from {target} import {name}"
        for m, p in mods.items()
        for target, _, names in _imports(m, p, mods)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert wrong == []


def test_no_import_time_cycles() -> None:
    """Module-level imports form no cycle (a function may import back for a convenience, e.g.
    ``Results.effects()``; that runs after both modules are loaded)."""
    mods = _modules()
    graph = {
        m: {t for t, at_import, _ in _imports(m, p, mods) if at_import and t != m} for m, p in mods.items()
    }
    cycles: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join([*stack[stack.index(w) :], w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert cycles == []
