"""`simmtm analyze` and `simmtm recommend` through the real entry point: the report, its figures, the
recommendation files, and sweeps with too few trials."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image

from simmtm.analysis.figures import FIGURES
from simmtm.analysis.r_m_figures import cell_digits
from simmtm.cli import main
from simmtm.config.schema import load_config

SECTIONS = ("recommendation", "importance", "heatmap", "slices", "history", "parallel", "m_vs_r", "interactive", "top", "failed")


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_writes_a_self_contained_report_with_every_figure(interior_tpe_sweep: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "report"
    code, out, err = run(["analyze", str(interior_tpe_sweep), "--out", str(out_dir), "--bootstrap", "200"], capsys)
    assert code == 0, err
    assert "120 complete, 1 pruned, 2 failed" in out and "recommended: r=" in out

    pngs = sorted((out_dir / "figures").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(FIGURES)
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200

    page = (out_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == len(FIGURES)  # embedded, not linked
    assert "Plotly.newPlot" in page and 'src="http' not in page  # plotly.js inline: no network needed
    top = re.search(r'<table[^>]*id="top-configurations".*?</table>', page, re.S).group(0)
    assert top.count("<tr>") >= 10 + 1 and "test_score" in top  # ten configurations; test scores where scored
    assert "PED-ANOVA" in page and "fANOVA" in page and 'id="importance-table"' in page
    assert "RuntimeError: out of memory" in page  # the failed trials with their errors

    rec = json.loads((out_dir / "recommendation.json").read_text())
    assert rec["status"] == "ok" and rec["n_finished"] == 120
    assert set(rec["params"]) == {"pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature", "model.encoder"}
    assert rec["ci"][0] <= rec["expected_score"] <= rec["ci"][1]


def test_default_report_dir_and_png_only(tmp_path: Path, synth: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8)}
    rows = synth.tpe_rows(synth.interior_surface, space, n_trials=12, seed=0)
    root = synth.write_sweep(tmp_path / "sweep", rows, space)
    code, _, err = run(["analyze", str(root), "--no-interactive", "--bootstrap", "100"], capsys)
    assert code == 0, err
    report = tmp_path / "sweep-report"  # beside the sweep: `simmtm sweep --resume` accepts only its own files in DIR
    page = (report / "report.html").read_text()
    assert "Plotly.newPlot" not in page and '<section id="interactive">' not in page
    assert len(list((report / "figures").glob("*.png"))) == len(FIGURES)
    assert sorted(p.name for p in root.iterdir()) == ["optuna.db", "sweep.json", "sweep.yaml", "trials.csv"]


@pytest.mark.parametrize(("states", "says"), [
    ([], "no finished trials yet"),
    (["FAILED", "FAILED", "FAILED"], "All 3 trial(s) so far failed"),
    (["COMPLETE"], "only 1 finished trial"),
    (["COMPLETE", "FAILED", "PRUNED"], "only 1 finished trial"),
])
def test_too_few_trials_give_a_report_that_says_so(tmp_path: Path, synth: SimpleNamespace, capsys: pytest.CaptureFixture,
                                                   states: list[str], says: str) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8)}
    rows = [synth.Row({synth.R: 0.5, synth.M: 3}, None if s == "FAILED" else 0.4, state=s, error="ValueError: NaN loss" if s == "FAILED" else "")
            for s in states]
    root = synth.write_sweep(tmp_path / "sweep", rows, space)
    report = tmp_path / "sweep-report"
    (report / "figures").mkdir(parents=True)
    (report / "figures" / "heatmap.png").write_bytes(b"from an earlier run")  # must not survive as if current
    code, out, err = run(["analyze", str(root)], capsys)
    assert code == 0, err
    page = (report / "report.html").read_text()
    assert says in page and 'id="status"' in page
    assert "no recommendation" in out
    assert json.loads((report / "recommendation.json").read_text())["status"] == "insufficient"
    assert not list((report / "figures").glob("*.png"))
    if "FAILED" in states:
        assert "ValueError: NaN loss" in page


def test_a_sweep_that_just_started_has_only_its_metadata(tmp_path: Path, synth: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    root = synth.write_sweep(tmp_path / "sweep", [], {synth.R: FloatDistribution(0.1, 0.9)}, write_csv=False, write_db=False)
    code, _, err = run(["analyze", str(root)], capsys)
    assert code == 0, err
    assert "no finished trials yet" in (tmp_path / "sweep-report" / "report.html").read_text()


def test_recommend_writes_a_run_config_for_pretrain(interior_tpe_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    best = tmp_path / "best.yaml"
    code, out, err = run(["recommend", str(interior_tpe_sweep), "--write", str(best), "--bootstrap", "200"], capsys)
    assert code == 0, err
    assert out.startswith("recommended: ") and "expected val_mse" in out and f"simmtm pretrain {best}" in out
    config = load_config(best)
    assert config.search is None and config.tune is None and config.resources is None
    code, out, _ = run(["recommend", str(interior_tpe_sweep), "--json", "--bootstrap", "200"], capsys)
    rec = json.loads(out)
    assert config.pretrain.mask_ratio == rec["params"]["pretrain.mask_ratio"]
    assert config.pretrain.num_masked == rec["params"]["pretrain.num_masked"]
    assert config.pretrain.temperature == rec["params"]["pretrain.temperature"]
    assert config.model.encoder == rec["params"]["model.encoder"]
    assert config.data.name == "ETTh1" and config.model.d_model == 16  # everything else from sweep.yaml
    assert best.read_text().startswith("# best.yaml: the run config recommended by")


def test_recommend_without_enough_trials_exits_1_and_writes_nothing(tmp_path: Path, synth: SimpleNamespace,
                                                                     capsys: pytest.CaptureFixture) -> None:
    root = synth.write_sweep(tmp_path / "sweep", [synth.Row({synth.R: 0.5}, 0.4)], {synth.R: FloatDistribution(0.1, 0.9)})
    code, out, _ = run(["recommend", str(root), "--write", str(tmp_path / "best.yaml")], capsys)
    assert code == 1 and "no recommendation: 1 finished trial" in out
    assert not (tmp_path / "best.yaml").exists()


def test_heatmap_labels_carry_enough_digits_to_tell_close_cells_apart() -> None:
    import numpy as np

    assert cell_digits(np.array([0.10654, 0.10790, np.nan])) == 4  # a flat surface: 0.1065 vs 0.1079, not 0.107 twice
    assert cell_digits(np.array([0.31, 0.52])) == 3
    assert cell_digits(np.array([0.5, 0.5])) == 3 and cell_digits(np.array([np.nan])) == 3
    assert cell_digits(np.array([1.0, 1.0 + 1e-12])) == 8  # capped
