"""A two-worker trial on a local two-node Ray cluster (two `ray start` nodes of one CPU each).

The trial launches a TorchTrainer named after its trial id; its workers' probe scores must reach Tune's scheduler
and the Optuna study through TuneReportCallback, and the checkpoint rank 0 keeps in the trial's folder must serve the
test scoring.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState
from studies import study_of

from simmtm.tuning.outputs import read_trials_csv

pytestmark = pytest.mark.slow


def test_a_two_worker_trial_runs_a_named_torchtrainer_across_two_nodes(tiny_sweep, tmp_path: Path, two_node_ray) -> None:
    search = {"method": "grid", "grid": {"pretrain.mask_ratio": [0.5], "pretrain.num_masked": [2]}}
    path = tiny_sweep(search, tune={"scheduler": {"type": "fifo"}}, resources={"workers": 2, "cpus_per_worker": 1})
    out = tmp_path / "out"
    address, env = two_node_ray  # one CPU per node: two workers need both nodes
    # If the second node has not joined yet, the driver starts anyway and the trial waits for it.
    done = subprocess.run([sys.executable, "-m", "simmtm", "sweep", str(path), "--out", str(out), "--address", address,
                           "--quiet-table"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    (row,) = read_trials_csv(out / "trials.csv")
    assert row["state"] == "COMPLETE" and float(row["score"]) > 0 and int(row["epochs"]) == 3
    assert row["val_score"] and row["test_score"]  # probe scores came through; the Train checkpoint was scored once
    assert (out / "ray" / f"train-{row['trial_id']}").is_dir()  # the Train run is named after the trial
    assert (out / "trials" / row["trial_id"] / "checkpoint.pt").is_file()  # rank 0 wrote the trial's own record
    (trial,) = study_of(out).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(float(row["score"]))
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # one probe score per epoch, reported by rank 0
