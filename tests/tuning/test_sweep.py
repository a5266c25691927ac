"""Real sweeps on a local Ray (2 CPUs) over tiny data: the directory contract, honest Optuna states, a NaN trial.

Each test runs real Tune trials (pre-training, probes, ASHA, fine-tuning); each takes well under a minute.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from studies import study_of

from simmtm.cli import main
from simmtm.config.schema import load_config
from simmtm.tuning.driver import run_sweep
from simmtm.tuning.outputs import TRIAL_COLUMNS, read_trials_csv

R, M, TAU = "pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature"

pytestmark = pytest.mark.slow


def test_a_four_trial_sweep_writes_the_sweep_directory(shared_ray, tiny_sweep, tmp_path: Path) -> None:
    search = {"method": "tpe", "params": {
        R: {"type": "float", "low": 0.1, "high": 0.9},
        M: {"type": "int", "low": 1, "high": 4},
        TAU: {"type": "float", "low": 0.05, "high": 1.0, "log": True},
    }}
    path = tiny_sweep(search, tune={"num_samples": 4, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    out = tmp_path / "out"
    started = time.time()
    outcome = run_sweep(path, out, verbose=0)
    assert time.time() - started < 180
    assert outcome.finished and outcome.metric == "val_mse" and outcome.mode == "min"

    meta = json.loads((out / "sweep.json").read_text())
    assert {k: meta[k] for k in ("metric", "mode", "params", "method", "seed")} == {
        "metric": "val_mse", "mode": "min", "params": [R, M, TAU], "method": "tpe", "seed": 0}
    assert meta["storage"] == f"sqlite:///{out.resolve() / 'optuna.db'}" and meta["search_space"]["params"][M]["high"] == 4
    assert yaml.safe_load((out / "sweep.yaml").read_text())["search"]["method"] == "tpe"

    header = (out / "trials.csv").read_text().splitlines()[0].split(",")
    assert header == [*TRIAL_COLUMNS, R, M, TAU]
    rows = {r["trial_id"]: r for r in read_trials_csv(out / "trials.csv")}
    assert len(rows) == 4 and {r["state"] for r in rows.values()} <= {"COMPLETE", "PRUNED"}
    complete = [r for r in rows.values() if r["state"] == "COMPLETE"]
    assert complete
    for r in rows.values():
        assert r["val_score"] and float(r["wall_s"]) > 0 and r["error"] == ""
        if r["state"] == "COMPLETE":
            assert r["score"] and int(r["epochs"]) == 3
        else:  # pruned by ASHA on the probe score, before pre-training ended
            assert r["score"] == "" and int(r["epochs"]) < 3

    # The study agrees with the table: same trials, COMPLETE with the final score, PRUNED as pruned.
    study = study_of(out)
    trials = {t.user_attrs["trial_id"]: t for t in study.get_trials()}
    assert set(trials) == set(rows)
    for tid, r in rows.items():
        t = trials[tid]
        assert t.state.name == r["state"] and t.intermediate_values  # every probe score is an intermediate value
        if r["state"] == "COMPLETE":
            assert t.value == pytest.approx(float(r["score"]))
        assert t.params[R] == pytest.approx(float(r[R])) and t.params[M] == int(r[M])
    first = min(study.get_trials(), key=lambda t: t.number)
    assert first.params == {R: 0.5, M: 3, TAU: 0.2}  # the paper's defaults are the first trial

    # Test scored once, for the best configuration only.
    best = min(complete, key=lambda r: float(r["score"]))
    scored = [r for r in rows.values() if r["test_score"]]
    assert [r["trial_id"] for r in scored] == [best["trial_id"]]
    test_metrics = json.loads((out / "best" / best["trial_id"] / "metrics.json").read_text())
    assert float(best["test_score"]) == pytest.approx(test_metrics["mse"])
    assert test_metrics["val_mse"] == pytest.approx(float(best["score"]), rel=1e-3)  # the same fine-tune as the trial's

    # best.yaml is a plain run config with the best parameters, and `simmtm pretrain` runs it as is.
    best_config = load_config(out / "best.yaml")
    assert best_config.search is None and best_config.pretrain.mask_ratio == pytest.approx(float(best[R]))
    assert best_config.pretrain.num_masked == int(best[M])
    assert main(["pretrain", str(out / "best.yaml"), "--out", str(tmp_path / "best-run"), "--no-progress"]) == 0

    # TensorBoard per trial, an HParams run per trial, Ray's experiment folder, timings.
    for tid in rows:
        assert list((out / "tb" / tid / "pretrain" / "tb").glob("events.*"))
        assert list((out / "tb" / tid / "scores").glob("events.*"))
        assert (out / "tb" / "hparams" / tid).is_dir()
        assert (out / "ray" / tid).is_dir()
        assert (out / "trials" / tid / "checkpoint.pt").is_file()  # the trial's own record
        assert ((out / "trials" / tid / "result.json").is_file()) == (rows[tid]["state"] == "COMPLETE")
    timing = json.loads((out / "timing.json").read_text())
    assert timing["trials"] and all(v["trial_s"] > 0 for v in timing["trials"].values())


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(shared_ray, tiny_sweep, tmp_path: Path, capsys) -> None:
    search = {"method": "grid", "grid": {"pretrain.lr": [0.001, 1.0e10]}}  # lr 1e10: the loss is NaN at step 1
    path = tiny_sweep(search, tune={"scheduler": {"type": "fifo"}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet-table"]) == 0
    printed = capsys.readouterr().out
    rows = {float(r["pretrain.lr"]): r for r in read_trials_csv(out / "trials.csv")}
    assert rows[0.001]["state"] == "COMPLETE" and math.isfinite(float(rows[0.001]["score"]))
    failed = rows[1.0e10]
    assert failed["state"] == "FAILED" and failed["score"] == ""
    assert "TrainingDiverged" in failed["error"] and "nan" in failed["error"]
    assert f"failed {failed['trial_id']}: " in printed and "best:" in printed
    states = {t.user_attrs["trial_id"]: t.state for t in study_of(out).get_trials()}
    assert states == {rows[0.001]["trial_id"]: TrialState.COMPLETE, failed["trial_id"]: TrialState.FAIL}
    assert load_config(out / "best.yaml").pretrain.lr == 0.001


def test_a_grid_with_seeds_a_cell_ends_on_the_surface_against_seed_noise(shared_ray, tiny_sweep, tmp_path: Path,
                                                                         capsys) -> None:
    # No confirmation stage (the fixture's default here): the repeats of each cell tell the seed noise instead.
    search = {"method": "grid", "grid": {"pretrain.mask_ratio": [0.3, 0.6], "pretrain.num_masked": [2]}}
    path = tiny_sweep(search, tune={"scheduler": {"type": "fifo"}, "repeats": 2}, run={"pretrain": {"epochs": 2}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet-table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("best: ") and "the search's best configuration, mean of 2 seeds" in line for line in lines)
    assert lines[-1].startswith("r x M surface: spread") and "4 runs in 2 cells" in lines[-1], lines[-3:]
    assert ("r and M matter here beyond seed noise" in lines[-1]) != ("cannot be told apart" in lines[-1]
                                                                       or "shifts whole" in lines[-1])
