"""The confirmation stage on a real local Ray: fixed configurations x shared seeds, and a resume that re-runs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from simmtm.confirmation import PAPER_DEFAULTS, judge
from simmtm.sweep.confirm import ConfirmPlan, confirm_points, confirmed_configs, run_confirmation
from simmtm.sweep.driver import collect_rows
from simmtm.sweep.trial import run_trial, trial_config

R, M, TAU = "pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature"
CAND = {R: 0.3, M: 2, TAU: 0.2}


def test_points_are_seed_major_and_paired():
    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=2)
    assert confirm_points(plan) == [{"repeat": 1000, **PAPER_DEFAULTS}, {"repeat": 1000, **CAND},
                                    {"repeat": 1001, **PAPER_DEFAULTS}, {"repeat": 1001, **CAND}]


@pytest.mark.slow
def test_confirmation_runs_every_pair_once_and_resume_reruns_nothing(local_ray, tiny_config, tmp_path: Path):
    from ray import tune

    raw = tiny_config({"pretrain": {"epochs": 2, "max_steps": None}, "finetune": {"horizons": [4]}})
    entry = trial_config(raw, metric="val_mse", probe_every=2, probe_steps=5, tb_dir=str(tmp_path / "tb"))
    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=2)
    trainable = tune.with_resources(run_trial, {"cpu": 1})
    path = run_confirmation(trainable, entry, plan, storage_path=str(tmp_path), max_concurrent=2)
    rows = collect_rows(path, [R, M, TAU])
    assert len(rows) == 4 and all(r.state == "COMPLETE" and r.score is not None and r.val_score is not None for r in rows)
    assert sorted((r.repeat, r.params[M]) for r in rows) == [(1000, 2), (1000, 3), (1001, 2), (1001, 3)]
    configs = confirmed_configs(rows, plan, base_seed=raw["seed"])
    assert [c.is_default for c in configs] == [True, False]
    assert all(set(c.finished()) == {raw["seed"] + 1000, raw["seed"] + 1001} for c in configs)  # paired seeds
    assert judge(configs, metric="val_mse", mode="min").status in ("beats", "keep_default")

    before = {r.trial_id: r.score for r in rows}
    runs_before = sorted(p.name for p in (tmp_path / "tb").iterdir())
    run_confirmation(trainable, entry, plan, storage_path=str(tmp_path), max_concurrent=2)
    again = collect_rows(path, [R, M, TAU])
    assert {r.trial_id: r.score for r in again} == before  # restored, not re-run
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs_before
