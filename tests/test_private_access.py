"""simmtm/ uses no private name of another library (Ray, Optuna, ...) and never reads Tune's own state files.

A private name is one with a leading underscore that simmtm does not define itself: an import path with a
``._`` part (``ray.autoscaler._private.util``), an imported ``_name``, or an attribute ``x._name``
(``searcher._ot_study``, ``study._storage``). Tune's state files (``experiment_state-*``, ``search_gen_state-*``,
``searcher-state-*``) belong to Tune: a sweep's record is the Optuna study and its own trial folders.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "simmtm"

# The one function allowed a private use: no public Ray API checks a cluster file against the launcher's schema;
# it says so in one ConfigError when a Ray release moves it (tests/test_cluster_check.py covers both).
ALLOWED = {("cluster/ray_schema.py", "_launcher_prepare")}

# TEMPORARY: files allowed a private use until a rewrite lands (empty: none is); a file listed here that no longer
# needs it fails test_temporary_list_is_current.
TEMPORARY: set[str] = set()

TUNE_STATE_FILES = ("experiment_state-", "search_gen_state-", "searcher-state-")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_path(module: str) -> bool:
    return any(_is_private(part) for part in module.split("."))


def _stdlib(value: ast.expr) -> bool:
    """``argparse._SubParsersAction`` and the like: the rule is about third-party libraries."""
    return isinstance(value, ast.Name) and value.id in sys.stdlib_module_names


def _own_names(sources: dict[str, str]) -> set[str]:
    """Every name simmtm defines: functions, classes, assigned names and attributes, arguments, import aliases."""
    names: set[str] = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return names


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """Each node with the name of the outermost function or class around it ('' at module level)."""
    for top in tree.body:
        owner = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ""
        for node in ast.walk(top):
            yield owner, node


def private_uses(source: str, own: set[str]) -> Iterator[tuple[str, int, str]]:
    """(enclosing function, line, what) for each private name of another library that ``source`` uses."""
    for owner, node in _functions(ast.parse(source)):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names if _private_path(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found = [module] if _private_path(module) else []
            if node.level == 0:  # simmtm's own modules import each other relatively or by package name
                found += [f"{module}.{a.name}" for a in node.names if _is_private(a.name) and a.name not in own]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            found = [] if _stdlib(node.value) else [f".{node.attr}"]  # read or written
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found = [f"Tune state file {s!r}" for s in TUNE_STATE_FILES if s in node.value]
        else:
            found = []
        for what in found:
            yield owner, node.lineno, what


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def _uses(sources: dict[str, str]) -> dict[str, list[tuple[str, int, str]]]:
    own = _own_names(sources)
    uses = {name: list(private_uses(source, own)) for name, source in sources.items()}
    return {name: found for name, found in uses.items() if found}


def test_simmtm_uses_no_private_name_of_another_library(sources: dict[str, str]) -> None:
    bad = [
        f"simmtm/{name}:{line} in {owner or 'module'}: {what}"
        for name, found in _uses(sources).items()
        if name not in TEMPORARY
        for owner, line, what in found
        if (name, owner) not in ALLOWED
    ]
    assert not bad, "private names of Ray/Optuna or Tune's state files (use a public API):\n" + "\n".join(bad)


def test_allowlist_and_temporary_list_are_current(sources: dict[str, str]) -> None:
    """An allowance that nothing needs any more is dropped, so the lists only shrink."""
    uses = _uses(sources)
    needed = {(name, owner) for name, found in uses.items() for owner, _, _ in found}
    assert ALLOWED <= needed, f"allowed but unused: {ALLOWED - needed}"
    stale = {name for name in TEMPORARY if name not in uses}
    assert not stale, f"TEMPORARY entries without a private use any more (delete them): {sorted(stale)}"


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("from ray.autoscaler._private.util import prepare_config", "ray.autoscaler._private.util"),
        ("import ray._private.worker", "ray._private.worker"),
        ("from ray.tune.trainable.trainable_fn_utils import _in_tune_session", "._in_tune_session"),
        ("def f(searcher):\n    return searcher._ot_study", "._ot_study"),
        ("def f(study):\n    return study._storage.get_trial(0)", "._storage"),
        ("import optuna\nx = optuna.samplers._tpe", "._tpe"),
        ("PATTERN = 'experiment_state-*.json'", "experiment_state-"),
        ("def f(d):\n    return list(d.glob('searcher-state-*.pkl'))", "searcher-state-"),
    ],
)
def test_the_scan_catches_each_kind(source: str, what: str) -> None:
    found = [w for _, _, w in private_uses(source, own=set())]
    assert found and any(what.lstrip(".") in w for w in found), found


def test_the_scan_passes_simmtms_own_private_names_and_dunders() -> None:
    source = "class A:\n    def __init__(self):\n        self._x = 1\n    def f(self):\n        return self._x, A.__name__"
    assert list(private_uses(source, own={"_x"})) == []
    assert [w for _, _, w in private_uses(source, own=set())] == ["._x", "._x"]  # written, then read
