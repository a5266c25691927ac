"""`simmtm sweep --warm-start A`: sweep B's Optuna study starts with A's finished trials; B's tables hold B's own.

Two real tiny sweeps on a local Ray (2 CPUs): A with two trials, then B seeded from A.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState
from studies import study_of

from simmtm.analysis import load_sweep
from simmtm.cli import main
from simmtm.tuning.outputs import read_trials_csv

pytestmark = pytest.mark.slow

R, M = "pretrain.mask_ratio", "pretrain.num_masked"
SEARCH = {"method": "tpe", "params": {R: {"type": "float", "low": 0.1, "high": 0.9}, M: {"type": "int", "low": 1, "high": 4}}}
TUNE = {"num_samples": 2, "scheduler": {"type": "fifo"}, "test_top_k": 0}


def test_a_warm_started_sweep_learns_from_the_earlier_one_and_reports_only_its_own(
        shared_ray, tiny_sweep, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = tmp_path / "a"
    assert main(["sweep", str(tiny_sweep(SEARCH, tune=TUNE)), "--out", str(first), "--quiet-table"]) == 0
    earlier = {r["trial_id"]: float(r["score"]) for r in read_trials_csv(first / "trials.csv") if r["state"] == "COMPLETE"}
    assert len(earlier) == 2

    # A different parameter set, or a grid: exit 2 with one line, before any trial (nothing written to --out).
    other = tiny_sweep({"method": "tpe", "params": {R: SEARCH["params"][R]}}, tune=TUNE, name="other.yaml")
    grid = tiny_sweep({"method": "grid", "grid": {R: [0.5], M: [2]}}, tune={"scheduler": {"type": "fifo"}}, name="grid.yaml")
    capsys.readouterr()
    for path, message in ((other, "a warm start needs the same parameters"), (grid, "runs every cell anyway")):
        bad = tmp_path / f"bad-{path.stem}"
        assert main(["sweep", str(path), "--out", str(bad), "--warm-start", str(first), "--quiet-table"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and str(first.resolve()) in err and "\n" not in err
        assert not bad.exists()

    second = tmp_path / "b"
    assert main(["sweep", str(tiny_sweep(SEARCH, tune=TUNE)), "--out", str(second), "--warm-start", str(first),
                 "--quiet-table"]) == 0
    assert json.loads((second / "sweep.json").read_text())["warm_start"] == str(first.resolve())

    # B's study: A's finished trials as COMPLETE copies with A's scores, marked as warm-start copies, in the same
    # search space as B's own trials (so TPE uses them), then B's own trials.
    trials = study_of(second).get_trials()
    copies = [t for t in trials if "warm_start_from" in t.user_attrs]
    own = [t for t in trials if "trial_id" in t.user_attrs]
    assert len(copies) == 2 and len(own) == 2 and len(trials) == 4
    assert {t.user_attrs["warm_start_trial"]: t.value for t in copies} == pytest.approx(earlier)
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["warm_start_from"] == str(first.resolve()) for t in copies)
    assert all(t.distributions == own[0].distributions for t in copies + own)

    # B's tables and its analysis hold B's trials only.
    rows = read_trials_csv(second / "trials.csv")
    assert {r["trial_id"] for r in rows} == {t.user_attrs["trial_id"] for t in own}
    assert len(rows) == 2  # trials are named by their number in B's study (A's names may recur): B's own only
    sweep = load_sweep(second)
    assert sweep.n_warm_start == 2 and len(sweep.finished) == 2
