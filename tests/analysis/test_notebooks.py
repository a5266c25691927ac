"""The notebooks in analysis/: committed clean, and executed headless against small sweeps made here."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
NOTEBOOKS = sorted(ANALYSIS.glob("*.ipynb"))
FIGURE_MIMES = ("image/png", "application/vnd.plotly.v1+json")


def test_notebooks_are_committed_without_outputs_and_without_logic() -> None:
    assert [p.name for p in NOTEBOOKS] == ["compare_sweeps.ipynb", "sensitivity.ipynb"]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: the first code cell holds the parameters"
        assert "SMALL" in code[0].source
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: committed with outputs"
            source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
            tree = ast.parse(source)
            defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
            assert not defined, f"{path.name}: defines its own functions; move the logic into simmtm.analysis"
        assert any("from simmtm.analysis" in c.source for c in code)


def execute(path: Path, parameters: dict[str, object], cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return book


def figure_outputs(book: nbformat.NotebookNode) -> list[str]:
    return [mime for c in book.cells if c.cell_type == "code" for o in c.outputs for mime in o.get("data", {}) if mime in FIGURE_MIMES]


def errors(book: nbformat.NotebookNode) -> list[str]:
    return [o.get("ename", "") for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory, synth: SimpleNamespace) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("notebooks")
    a = synth.write_sweep(root / "a", synth.tpe_rows(synth.interior_surface, synth.FULL_SPACE, n_trials=30, noise=0.003, seed=0),
                          synth.FULL_SPACE)
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 9)}
    rows = synth.grid_rows(synth.ridge_surface, r_values=[0.1, 0.3, 0.5, 0.7, 0.9], m_values=range(1, 10), repeats=1, noise=0.003)
    b = synth.write_sweep(root / "b", rows, space, method="grid",
                          search=synth.grid_search({synth.R: [0.1, 0.3, 0.5, 0.7, 0.9], synth.M: range(1, 10)}))
    return a, b


@pytest.mark.slow
def test_sensitivity_notebook_runs_and_draws(two_sweeps: tuple[Path, Path], tmp_path: Path) -> None:
    book = execute(ANALYSIS / "sensitivity.ipynb", {"SWEEP_DIR": str(two_sweeps[0]), "SMALL": False}, tmp_path)
    assert errors(book) == []
    mimes = figure_outputs(book)
    assert mimes.count("image/png") >= 6  # importance, heatmap, slices, history, parallel, M vs r
    assert "application/vnd.plotly.v1+json" in mimes  # the interactive views
    text = "".join(o.get("text", "") for c in book.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "recommended: r=" in text
    assert "r x M surface: spread" in text  # the surface against seed noise (unknown here: one run a cell)


@pytest.mark.slow
def test_compare_notebook_runs_and_draws(two_sweeps: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_sweeps
    book = execute(ANALYSIS / "compare_sweeps.ipynb",
                   {"SWEEP_A": str(a), "SWEEP_B": str(b), "LABEL_A": "tpe", "LABEL_B": "grid", "SMALL": True}, tmp_path)
    assert errors(book) == []
    assert figure_outputs(book).count("image/png") >= 3  # importance, heatmaps, M vs r
    summary = next(o for c in book.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {}))
    assert "recommended r" in summary["data"]["text/html"] and "grows" in summary["data"]["text/html"]
