"""The package's import graph: no two modules of simmtm import each other (directly or through others), and no
module imports a private name of another. Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simmtm"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """``{module: simmtm modules it imports}`` and the private names imported across modules."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    private = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = []
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in files else node.module)
                    private_name = alias.name.startswith("_") and not alias.name.endswith("__")
                    if sub not in files and private_name and node.module.startswith("simmtm"):
                        private.append(f"{name} imports {node.module}.{alias.name}")
            else:
                continue
            for target in targets:
                # importing a submodule runs its packages first: that is Python's doing, not a dependency
                if target in files and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph, _ = import_graph()
    assert len(graph) > 40
    assert cycles(graph) == []


def test_no_private_names_imported_across_modules() -> None:
    _, private = import_graph()
    assert private == []


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "simmtm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from simmtm.b import g\n")
    (package / "b.py").write_text("from simmtm import a\nfrom simmtm.a import _h\n")
    graph, private = import_graph(package)
    assert cycles(graph) == [["simmtm.a", "simmtm.b"]]
    assert private == ["simmtm.b imports simmtm.a._h"]
