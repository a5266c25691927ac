"""One trial as a plain function, outside Tune: probes per epoch checkpointed into the trial's own folder, a final
fine-tune whose result the folder keeps, and a trial started again that continues from its folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simmtm.tuning.record import TrialStore, trials_root
from simmtm.tuning.spec import TrialSpec
from simmtm.tuning.trainable import run_trial
from simmtm.tuning.trial import trial_loop


@pytest.fixture
def trial(make_config, csv_writer, tmp_path):
    csv = csv_writer(tmp_path / "series.csv")
    run = make_config(csv, {"pretrain": {"epochs": 3, "max_steps": None}, "finetune": {"horizons": [4, 8]}})
    spec = TrialSpec(run=run, metric="val_mse", probe_steps=3, tb_dir=str(tmp_path / "tb"), storage_path=str(tmp_path))
    return {"sweep": spec.model_dump(), "pretrain.mask_ratio": 0.3, "pretrain.num_masked": 2, "repeat": 1, "number": 7}


def test_a_trial_probes_every_epoch_then_fine_tunes_and_its_folder_keeps_the_record(trial, tmp_path) -> None:
    folder = tmp_path / "trials" / "trial-0007"
    seen, saved = [], {}

    def report(metrics, state):
        assert state is None  # the trial keeps its own checkpoint; Tune gets metrics only
        checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
        seen.append((dict(metrics), checkpoint["epoch"]))
        saved.setdefault(checkpoint["epoch"], (folder / "checkpoint.pt").read_bytes())

    result = trial_loop(trial, report=report)
    probes = [m for m, _ in seen if m["stage"] == "probe"]
    assert [m["epoch"] for m in probes] == [1, 2, 3]
    assert all(math.isfinite(m["probe_val_mse"]) for m in probes)
    assert [epoch for m, epoch in seen[:3]] == [1, 2, 3]  # each probe's checkpoint is written before its report
    final = seen[-1][0]
    assert final == result and final["stage"] == "final" and math.isfinite(final["val_mse"])
    assert final["last_probe_val_mse"] == probes[-1]["probe_val_mse"]
    assert final["probes"] == {str(m["epoch"]): m["probe_val_mse"] for m in probes} and final["resumed_from"] is None
    assert json.loads((folder / "result.json").read_text()) == result
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["config"]["pretrain"]["mask_ratio"] == 0.3 and state["config"]["seed"] == 1  # seed 0 + repeat 1
    assert list((tmp_path / "tb" / "trial-0007" / "scores").glob("events.*"))

    # Started again after it finished (the driver died before it heard): its result again, nothing runs.
    again = []
    assert trial_loop(trial, report=lambda m, s: again.append(m)) == result
    assert again == [result]

    # Started again with the epoch-2 checkpoint: that probe is reported again, then only epoch 3 is pre-trained.
    (folder / "result.json").unlink()
    (folder / "checkpoint.pt").write_bytes(saved[2])
    resumed = []
    out = trial_loop(trial, report=lambda m, s: resumed.append(m))
    assert [m["epoch"] for m in resumed if m["stage"] == "probe"] == [2, 3] and out["resumed_from"] == 2
    assert out["val_mse"] == result["val_mse"] and out["probes"] == result["probes"]  # exact: the same run
    assert TrialStore(trials_root(str(tmp_path))).read_result("trial-0007") == out


def test_a_failing_trial_leaves_its_reason_in_its_folder(trial, tmp_path) -> None:
    trial["sweep"]["run"]["pretrain"]["lr"] = 1e6  # diverges at once
    with pytest.raises(Exception) as raised:
        trial_loop(trial)
    error = (tmp_path / "trials" / "trial-0007" / "error.txt").read_text().strip()
    assert error.startswith(type(raised.value).__name__) and "\n" not in error


def test_run_trial_outside_tune_returns_the_final_result(trial) -> None:
    result = run_trial(trial)
    assert result["stage"] == "final" and result["epoch"] == 3 and math.isfinite(result["val_mse"])
