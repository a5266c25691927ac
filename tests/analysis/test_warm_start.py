"""Warm start: an earlier sweep's finished trials seed a new study, once, and only when the parameters match."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from studies import study_of

from simmtm.analysis import finished_trials, load_sweep, warm_start_study
from simmtm.errors import UserError


@pytest.fixture
def previous(tmp_path: Path, synth: SimpleNamespace) -> Path:
    rows = synth.tpe_rows(synth.interior_surface, synth.FULL_SPACE, n_trials=20, seed=4)
    rows.append(synth.Row({synth.R: 0.5, synth.M: 3, synth.TAU: 0.2, synth.ENC: "patch"}, None, state="FAILED"))
    return synth.write_sweep(tmp_path / "previous", rows, synth.FULL_SPACE)


def test_finished_trials_are_params_and_scores(previous: Path, synth: SimpleNamespace) -> None:
    pairs = finished_trials(previous)
    assert len(pairs) == 20
    params, score = pairs[0]
    assert set(params) == set(synth.FULL_SPACE) and isinstance(params[synth.M], int) and isinstance(score, float)
    assert score == pytest.approx(synth.interior_surface(params))


@pytest.mark.parametrize("space_form", ["distributions", "search_section"])
def test_warm_start_seeds_a_new_study_once_and_the_sampler_goes_on(previous: Path, synth: SimpleNamespace, space_form: str) -> None:
    space = synth.FULL_SPACE if space_form == "distributions" else json.loads((previous / "sweep.json").read_text())["search_space"]
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    assert warm_start_study(study, previous, space, metric="val_mse") == 20
    assert warm_start_study(study, previous, space) == 0  # a resumed sweep does not copy them twice
    copied = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(copied) == 20
    assert {t.user_attrs["warm_start_from"] for t in copied} == {str(previous.resolve())}
    assert sorted(t.value for t in copied) == sorted(s for _, s in finished_trials(previous))
    best_before = study.best_value
    study.optimize(lambda t: synth.interior_surface({k: synth.suggest(t, k, d) for k, d in synth.FULL_SPACE.items()}), n_trials=5)
    assert len(study.trials) == 25 and study.best_value <= best_before


def test_trials_outside_a_narrower_space_are_skipped(previous: Path, synth: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    narrow = {**synth.FULL_SPACE, synth.R: FloatDistribution(0.3, 0.7)}
    inside = sum(0.3 <= p[synth.R] <= 0.7 for p, _ in finished_trials(previous))
    assert 0 < inside < 20
    study = optuna.create_study(direction="minimize")
    with caplog.at_level(logging.WARNING):
        assert warm_start_study(study, previous, narrow) == inside
    assert "outside this sweep's search space" in caplog.text


@pytest.mark.parametrize(("change", "message"), [
    ("fewer_params", "a warm start needs the same parameters"),
    ("other_params", "a warm start needs the same parameters"),
    ("metric", "scores are not comparable"),
    ("direction", "this study is set to maximize"),
])
def test_mismatches_are_user_errors(previous: Path, synth: SimpleNamespace, change: str, message: str) -> None:
    space, metric, direction = dict(synth.FULL_SPACE), "val_mse", "minimize"
    if change == "fewer_params":
        space.pop(synth.TAU)
    elif change == "other_params":
        space["pretrain.mask_length"] = FloatDistribution(1, 5)
    elif change == "metric":
        metric = "val_mae"
    else:
        direction = "maximize"
    study = optuna.create_study(direction=direction)
    with pytest.raises(UserError, match=message) as info:
        warm_start_study(study, previous, space, metric=metric)
    assert str(previous) in str(info.value) and "\n" not in str(info.value)
    assert not study.trials


def test_the_new_sweeps_analysis_leaves_the_copied_trials_out(previous: Path, tmp_path: Path, synth: SimpleNamespace) -> None:
    """A new sweep directory whose study was warm-started: its report counts only its own trials."""
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 8), synth.TAU: FloatDistribution(0.02, 1.0, log=True),
             synth.ENC: CategoricalDistribution(["transformer", "patch"])}
    own = synth.tpe_rows(synth.interior_surface, space, n_trials=6, seed=9)
    new = synth.write_sweep(tmp_path / "new", own, space, write_csv=False)
    study = study_of(new)
    assert warm_start_study(study, previous, space) == 20
    sweep = load_sweep(new)
    assert sweep.n_warm_start == 20 and len(sweep.finished) == 6 and sweep.source == "optuna.db"
