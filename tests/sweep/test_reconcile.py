"""The study is brought into agreement with Tune's trials after an interrupted driver (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from simmtm.sweep.outputs import TrialRow
from simmtm.sweep.results import ORPHAN_REASON, reconcile_study


def test_a_trial_asked_before_it_was_tagged_becomes_a_named_failed_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    dist = {"pretrain.mask_ratio": FloatDistribution(0.1, 0.9)}
    done = study.ask(dist)  # ran and finished in Tune, still RUNNING in the study (killed before tell)
    done.set_user_attr("tune_trial_id", "aaaa")
    untagged = study.ask(dist)  # asked, then the driver died before the searcher tagged it
    warm = optuna.trial.create_trial(params={"pretrain.mask_ratio": 0.5}, distributions=dist, value=1.0,
                                     user_attrs={"warm_start_from": "/elsewhere"})
    study.add_trial(warm)
    rows = [TrialRow(trial_id="aaaa", state="COMPLETE", params={"pretrain.mask_ratio": done.params["pretrain.mask_ratio"]}, score=0.25)]

    orphans = reconcile_study(url, "s", rows, ["pretrain.mask_ratio"])

    assert [o.trial_id for o in orphans] == [f"optuna-{untagged.number}"]
    assert orphans[0].state == "FAILED" and orphans[0].error == ORPHAN_REASON
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[done.number].state == TrialState.COMPLETE and by_number[done.number].value == 0.25
    orphan = by_number[untagged.number]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs["tune_trial_id"] == f"optuna-{untagged.number}"
    assert orphan.user_attrs["reason"] == ORPHAN_REASON
    assert "tune_trial_id" not in next(t for t in trials if "warm_start_from" in t.user_attrs).user_attrs
