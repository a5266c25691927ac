"""A two-worker trial on a local two-node Ray cluster (two `ray start` nodes of one CPU each).

The trial launches a TorchTrainer named after its trial id; its workers' probe scores must reach Tune's scheduler
and the Optuna study through TuneReportCallback, and its Train checkpoint must serve the test scoring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from ray_nodes import free_port, stop_node, wait_for_port
from optuna.trial import TrialState

from simmtm.sweep.outputs import read_trials_csv

pytestmark = pytest.mark.slow








def test_a_two_worker_trial_runs_a_named_torchtrainer_across_two_nodes(tiny_sweep, tmp_path: Path) -> None:
    search = {"method": "grid", "grid": {"pretrain.mask_ratio": [0.5], "pretrain.num_masked": [2]}}
    path = tiny_sweep(search, tune={"scheduler": {"type": "fifo"}}, resources={"workers": 2, "cpus_per_worker": 1})
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0"}  # a test-only cluster
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]  # one CPU per node: two workers need both nodes
    temp = Path(tempfile.mkdtemp(prefix="simmtm-sw-"))  # short: Ray's socket paths live under it (107-char limit)
    nodes = []
    out = tmp_path / "out"
    try:
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp / 'head'}", *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(port)
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", f"--address={address}", f"--temp-dir={temp / 'worker'}", *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # If the second node has not joined yet, the driver starts anyway and the trial waits for it.
        done = subprocess.run([sys.executable, "-m", "simmtm", "sweep", str(path), "--out", str(out), "--address", address,
                               "--quiet-table"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)

    (row,) = read_trials_csv(out / "trials.csv")
    assert row["state"] == "COMPLETE" and float(row["score"]) > 0 and int(row["epochs"]) == 3
    assert row["val_score"] and row["test_score"]  # probe scores came through; the Train checkpoint was scored once
    train_run = out / "ray" / f"train-{row['trial_id']}"  # the Train run is named after the trial: restorable
    assert any(p.name.startswith("checkpoint_") for p in train_run.iterdir())
    meta = json.loads((out / "sweep.json").read_text())
    (trial,) = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"]).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(float(row["score"]))
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # one probe score per epoch, reported by rank 0
