"""The layout contract of README.md "Architecture": layers import only downward, no import cycle
(imports inside functions included), no module over 600 lines, solvers imported lazily.

Reads the source as text (ast) and runs none of it, so it checks the real import graph."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Subpackage -> layer rank; a module may import modules of its own rank or lower only.
LAYERS = {
    "lumpver.errors": 0, "lumpver.progress": 0, "lumpver.fileio": 0,
    "lumpver.ir": 1,
    "lumpver.specs": 2,
    "lumpver.bounds": 3,
    "lumpver.verifiers": 4,
    "lumpver.certificates": 5,
    "lumpver.reductions": 6,
    "lumpver.reports": 7,
    "lumpver.api": 8,
    "lumpver.commands": 9, "lumpver.cli": 9, "lumpver.__main__": 9,
}
#: The package facade re-exports the public API lazily; it is not a layer.
FACADE = "lumpver"
SOLVERS = ("z3", "cvxpy", "maraboupy", "ray", "torch")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, name in ((ROOT / "lumpver", "lumpver"), (ROOT / "verifiers", "lumpver.verifiers")):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([name, *parts])] = path
    return found


MODULES = _modules()


def _rank(module: str) -> int:
    best = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and README.md"
    return best[1]


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module top level) for every import of a lumpver module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = set(id(n) for n in tree.body)
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.append((name, node.lineno, id(node) in top))
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_layers_import_only_downward():
    bad = []
    for module, deps in GRAPH.items():
        if module == FACADE:
            continue
        for dep, line, _ in deps:
            if dep != FACADE and _rank(dep) > _rank(module):
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {dep}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    g.add_edges_from((m, d) for m, deps in GRAPH.items() for d, _, _ in deps if d != FACADE and m != FACADE)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_short():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_are_imported_lazily(solver):
    bad = []
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == solver or n.startswith(solver + ".") for n in names):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"{solver} imported at module level: {bad}"
