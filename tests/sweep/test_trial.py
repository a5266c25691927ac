"""One trial as a plain function, outside Tune: probes per epoch with checkpoints, a final fine-tune, resumption."""

from __future__ import annotations

import math

import pytest

from simmtm.sweep.spec import TrialSpec
from simmtm.sweep.trainable import run_trial
from simmtm.sweep.trial import trial_loop


@pytest.fixture
def trial(make_config, csv_writer, tmp_path):
    csv = csv_writer(tmp_path / "series.csv")
    run = make_config(csv, {"pretrain": {"epochs": 3, "max_steps": None}, "finetune": {"horizons": [4, 8]}})
    return {"sweep": TrialSpec(run=run, metric="val_mse", probe_steps=3, tb_dir=str(tmp_path / "tb")).model_dump(),
            "pretrain.mask_ratio": 0.3, "pretrain.num_masked": 2, "repeat": 1}


def test_a_trial_probes_every_epoch_then_fine_tunes(trial, tmp_path) -> None:
    reports = []
    result = trial_loop(trial, report=lambda metrics, state: reports.append((dict(metrics), state)))
    probes = [m for m, _ in reports if m["stage"] == "probe"]
    assert [m["epoch"] for m in probes] == [1, 2, 3]
    assert all(math.isfinite(m["probe_val_mse"]) for m in probes)
    assert all(state is not None and state["epoch"] == m["epoch"] for m, state in reports[:3])  # checkpoint per probe
    final, final_state = reports[-1]
    assert final == result and final["stage"] == "final" and math.isfinite(final["val_mse"])
    assert final["last_probe_val_mse"] == probes[-1]["probe_val_mse"]
    assert final_state["sweep_final"] == result and final_state["config"]["pretrain"]["mask_ratio"] == 0.3
    assert final_state["config"]["seed"] == 1  # seed 0 + repeat 1
    assert list((tmp_path / "tb" / "local" / "scores").glob("events.*"))

    # Resumed from the final checkpoint (a trial that had finished when the driver died): nothing runs again.
    again = []
    assert trial_loop(trial, report=lambda m, s: again.append(m), resume=final_state) == result
    assert again == [result]

    # Resumed from the epoch-2 checkpoint: only epoch 3 is pre-trained (and probed) again.
    resumed = []
    trial_loop(trial, report=lambda m, s: resumed.append(m), resume=reports[1][1])
    assert [m["epoch"] for m in resumed if m["stage"] == "probe"] == [3]


def test_run_trial_outside_tune_returns_the_final_result(trial) -> None:
    result = run_trial(trial)
    assert result["stage"] == "final" and result["epoch"] == 3 and math.isfinite(result["val_mse"])
