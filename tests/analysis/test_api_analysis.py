"""simmtm.analyze and simmtm.recommend on small sweeps written here: typed, frozen results equal to the CLI's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import simmtm
from simmtm.analysis import Recommendation
from simmtm.cli import main


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, synth: SimpleNamespace) -> Path:
    root = tmp_path_factory.mktemp("api")
    rows = synth.tpe_rows(synth.interior_surface, synth.FULL_SPACE, n_trials=24, noise=0.003, seed=0)
    return synth.write_sweep(root / "sweep", rows, synth.FULL_SPACE)


def test_recommend_returns_what_the_cli_prints_and_writes_the_config(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    rec = simmtm.recommend(sweep_dir, write=tmp_path / "best.yaml", bootstrap=100)
    assert isinstance(rec, Recommendation)  # one type: the analysis computes it, the API returns it as it is
    assert rec.status == "ok" and rec.best_yaml == str(tmp_path / "best.yaml") and Path(rec.best_yaml).is_file()
    assert set(rec.params) >= {"pretrain.mask_ratio", "pretrain.num_masked"} and rec.ci[0] <= rec.expected_score <= rec.ci[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "x"  # type: ignore[misc]
    assert main(["recommend", str(sweep_dir), "--json", "--bootstrap", "100"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"] == pytest.approx(dict(rec.params))
    assert set(printed) == {f.name for f in dataclasses.fields(Recommendation)}  # the same field names


def test_analyze_writes_the_report(sweep_dir: Path, tmp_path: Path) -> None:
    result = simmtm.analyze(sweep_dir, out=tmp_path / "report", interactive=False, bootstrap=100)
    assert result.report == tmp_path / "report" / "report.html" and result.report.is_file()
    assert result.counts["COMPLETE"] == 24 and result.figures and all(p.is_file() for p in result.figures.values())
    assert result.recommendation.status == "ok"
