"""simmtm.sweep (the Python API) on a real tiny sweep, and simmtm export of its test-scored best trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import simmtm
from simmtm.analysis.status import sweep_status
from simmtm.cli import main
from simmtm.train.checkpoint import encoder_state, load_state

pytestmark = pytest.mark.slow


def test_the_api_sweep_and_the_export_of_its_best_trial(tiny_sweep, tmp_path: Path, shared_ray, capsys) -> None:
    path = tiny_sweep({"method": "random", "params": {"pretrain.mask_ratio": {"type": "float", "low": 0.2, "high": 0.8}}},
                      tune={"num_samples": 2, "probe_every": 1, "test_top_k": 1, "scheduler": {"type": "fifo"}})
    result = simmtm.sweep(path, out=tmp_path / "sweep")
    assert result.finished and result.counts["COMPLETE"] == 2 and result.metric == "val_mse"
    assert set(result.best_params) == {"pretrain.mask_ratio"} and result.best_score > 0 and result.test_score > 0
    assert result.best_yaml == tmp_path / "sweep" / "best.yaml"
    status = sweep_status(tmp_path / "sweep")  # simmtm status on the sweep's real files (timing.jsonl, optuna.db, trials.csv)
    assert (status.finished, status.planned, status.left_s, status.counts["RUNNING"]) == (2, 2, 0.0, 0)
    assert status.best_score == pytest.approx(result.best_score) and status.elapsed_s > status.mean_trial_s > 0

    best = sorted((tmp_path / "sweep" / "best").iterdir())
    assert len(best) == 1
    assert main(["export", str(best[0]), "--out", str(tmp_path / "enc")]) == 0
    described = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert described["source"]["kind"] == "sweep trial"
    checkpoint = Path(described["source"]["checkpoint"])
    assert checkpoint.is_relative_to(tmp_path / "sweep") and best[0].name in checkpoint.parts
    pretrained = encoder_state(load_state(checkpoint)["model"])
    loaded = simmtm.load_encoder(tmp_path / "enc").encoder.state_dict()
    assert all(torch.equal(loaded[k], pretrained[k]) for k in pretrained)
    assert described["run_config"]["pretrain"]["mask_ratio"] == pytest.approx(result.best_params["pretrain.mask_ratio"])
    card = (tmp_path / "enc" / "README.md").read_text()
    assert f"trial `{best[0].name}` of the sweep" in card and "best.yaml: the best configuration" in card
    assert "search: random over pretrain.mask_ratio; 2 samples" in card and "(test, scored once): mse" in card
