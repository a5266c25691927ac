"""Reading sweep directories: finished, running (no trials.csv yet), partial, and paths that are not sweeps."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis import analysis_study, load_sweep, search_distributions
from simmtm.cli import main
from simmtm.errors import UserError


def test_load_reads_trials_csv_with_states_and_distributions(interior_tpe_sweep: Path, synth: SimpleNamespace) -> None:
    sweep = load_sweep(interior_tpe_sweep)
    assert sweep.source == "trials.csv"
    assert (sweep.metric, sweep.mode, sweep.method) == ("val_mse", "min", "tpe")
    assert sweep.counts() == {"COMPLETE": 120, "PRUNED": 1, "FAILED": 2, "RUNNING": 0, "PENDING": 0}
    assert len(sweep.finished) == 120
    assert sweep.distributions == synth.FULL_SPACE  # read back from the study, equal to what it sampled from
    assert sweep.trials["test_score"].notna().sum() == 3
    assert analysis_study(sweep).direction.name == "MINIMIZE"
    assert len(analysis_study(sweep).trials) == 120


def test_running_sweep_without_csv_is_read_from_the_study_and_its_file_left_untouched(tmp_path: Path, synth: SimpleNamespace) -> None:
    rows = synth.grid_rows(synth.interior_surface, r_values=[0.3, 0.5], m_values=[2, 3], repeats=1)
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8)}
    root = synth.write_sweep(tmp_path / "sweep", rows, space, write_csv=False, running=2)
    before = hashlib.sha256((root / "optuna.db").read_bytes()).hexdigest()
    sweep = load_sweep(root)
    assert sweep.source == "optuna.db"
    assert sweep.counts()["COMPLETE"] == 4 and sweep.counts()["RUNNING"] == 2
    assert sorted(sweep.finished["score"]) == sorted(r.score for r in rows)
    assert hashlib.sha256((root / "optuna.db").read_bytes()).hexdigest() == before


def test_reading_a_study_leaves_no_snapshot_behind(tmp_path: Path, synth: SimpleNamespace, monkeypatch) -> None:
    rows = synth.grid_rows(synth.interior_surface, r_values=[0.3, 0.5], m_values=[2, 3], repeats=1)
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8)}
    root = synth.write_sweep(tmp_path / "sweep", rows, space, write_csv=False, running=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    sweep = load_sweep(root)
    assert sweep.counts()["COMPLETE"] == 4 and sweep.counts()["RUNNING"] == 1  # read through the snapshot
    assert len(analysis_study(sweep).trials) == 4
    assert list(scratch.iterdir()) == []  # the snapshot of optuna.db is gone once the study is in memory


def test_a_stale_csv_gives_way_to_the_study(tmp_path: Path, synth: SimpleNamespace) -> None:
    rows = synth.grid_rows(synth.interior_surface, r_values=[0.3, 0.5, 0.7], m_values=[2, 3], repeats=1)
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8)}
    root = synth.write_sweep(tmp_path / "sweep", rows, space)
    synth.write_sweep(tmp_path / "old", rows[:2], space)
    (root / "trials.csv").write_bytes((tmp_path / "old" / "trials.csv").read_bytes())  # written before 4 more finished
    sweep = load_sweep(root)
    assert sweep.source == "optuna.db" and len(sweep.finished) == 6
    assert any("fewer finished trials" in n for n in sweep.notes)


def test_search_sections_in_the_sweep_file_forms() -> None:
    tpe = {"method": "tpe", "params": {
        "pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
        "pretrain.num_masked": {"type": "int", "low": 1.0, "high": 8.0},
        "pretrain.temperature": {"type": "float", "low": 0.02, "high": 1.0, "log": True},
        "model.encoder": {"type": "categorical", "choices": ["transformer", "patch"]}}}
    keys = list(tpe["params"])
    assert search_distributions(tpe, keys) == {
        keys[0]: FloatDistribution(0.1, 0.9), keys[1]: IntDistribution(1, 8),
        keys[2]: FloatDistribution(0.02, 1.0, log=True), keys[3]: CategoricalDistribution(["transformer", "patch"])}
    grid = {"method": "grid", "grid": {"pretrain.mask_ratio": [0.25, 0.5, 0.75], "pretrain.num_masked": [1, 3]}}
    assert search_distributions(grid, keys[:2]) == {keys[0]: CategoricalDistribution([0.25, 0.5, 0.75]),
                                                    keys[1]: CategoricalDistribution([1, 3])}
    assert search_distributions({"params": {"x.y": "not a spec"}}, ["x.y"]) == {}


@pytest.mark.parametrize("kind", ["missing", "file", "empty_dir", "bad_json", "no_metric"])
def test_not_a_sweep_directory_is_one_line_and_exit_2(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "x"
    if kind == "file":
        target.write_text("hello")
    elif kind != "missing":
        target.mkdir()
    if kind == "bad_json":
        (target / "sweep.json").write_text("{not json")
    if kind == "no_metric":
        (target / "sweep.json").write_text(json.dumps({"mode": "min", "params": []}))
    with pytest.raises(UserError):
        load_sweep(target)
    for command in ("analyze", "recommend"):
        capsys.readouterr()
        assert main([command, str(target)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and str(target) in err, err
    assert not (tmp_path / "x-report").exists()


def test_the_study_is_found_by_name_or_as_the_only_one_and_a_wrong_name_among_many_is_a_note(tmp_path: Path) -> None:
    import optuna

    from simmtm.tuning.outputs import SweepMeta, read_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name, value in (("a", 1.0), ("b", 2.0)):
        optuna.create_study(study_name=name, storage=url).add_trial(
            optuna.trial.create_trial(params={}, distributions={}, value=value))
    meta = lambda name: SweepMeta(metric="val_mse", mode="min", params=[], study_name=name, storage=url)  # noqa: E731
    assert read_study(tmp_path, meta("b")).trials[0].value == 2.0
    notes: list[str] = []
    assert read_study(tmp_path, meta("c"), notes) is None
    assert notes == ["optuna.db has no study 'c' (has a, b); trials.csv only"]
    optuna.delete_study(study_name="a", storage=url)
    assert read_study(tmp_path, meta("c")).trials[0].value == 2.0  # the only study, whatever its name
