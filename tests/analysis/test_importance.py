"""Parameter importance by PED-ANOVA and fANOVA, and the r x M matrix behind the heatmap."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis import load_sweep, param_importances
from simmtm.analysis.figures import heatmap_matrix
from simmtm.analysis.importance import MIN_TRIALS


def test_both_methods_rank_the_one_parameter_that_matters_first(tmp_path: Path, synth: SimpleNamespace) -> None:
    surface = lambda p: 0.4 + 2.0 * (p[synth.R] - 0.5) ** 2  # noqa: E731  (only r matters)
    rows = synth.tpe_rows(surface, synth.FULL_SPACE, n_trials=60, noise=0.002, seed=0)
    imp = param_importances(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, synth.FULL_SPACE)))
    assert imp.ok and imp.n_trials == 60
    assert set(imp.table.index) == set(synth.FULL_SPACE)
    for method in ("ped_anova", "fanova"):
        assert imp.table[method].sum() == pytest.approx(1.0)
        assert imp.table[method].idxmax() == synth.R
        assert imp.table.loc[synth.R, f"rank_{method}"] == 1


def test_importance_of_the_interior_sweep_has_both_columns(interior_tpe_sweep: Path, synth: SimpleNamespace) -> None:
    imp = param_importances(load_sweep(interior_tpe_sweep))
    assert list(imp.table.columns) == ["ped_anova", "fanova", "rank_ped_anova", "rank_fanova"]
    assert imp.table.notna().all().all()
    assert imp.table["fanova"].idxmax() == synth.M  # (M - 3)^2 over 1..8 spreads the scores most
    assert imp.target_quantile == pytest.approx(0.1)


def test_conditional_parameter_is_left_to_ped_anova(tmp_path: Path, synth: SimpleNamespace) -> None:
    patch_len = "model.patch_len"
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.ENC: CategoricalDistribution(["transformer", "patch"]),
             patch_len: IntDistribution(4, 32)}
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        p = {synth.R: float(rng.uniform(0.1, 0.9)), synth.ENC: ["transformer", "patch"][i % 2]}
        if p[synth.ENC] == "patch":
            p[patch_len] = int(rng.integers(4, 33))
        rows.append(synth.Row(p, 0.4 + (p[synth.R] - 0.5) ** 2 + 0.001 * p.get(patch_len, 0)))
    imp = param_importances(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, space)))
    assert imp.ok
    assert math.isnan(imp.table.loc[patch_len, "fanova"]) and imp.table.loc[patch_len, "ped_anova"] >= 0
    assert "conditional" in imp.note


def test_too_few_trials_give_a_note_not_numbers(tmp_path: Path, synth: SimpleNamespace) -> None:
    rows = synth.tpe_rows(synth.interior_surface, synth.FULL_SPACE, n_trials=MIN_TRIALS - 1, seed=0)
    imp = param_importances(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, synth.FULL_SPACE)))
    assert not imp.ok and imp.table.empty
    assert f"importances need at least {MIN_TRIALS}" in imp.note


def test_heatmap_matrix_means_counts_and_blank_cells(tmp_path: Path, synth: SimpleNamespace) -> None:
    r_grid, m_grid = [0.1, 0.5, 0.9], [1, 2, 3, 4]
    space = {synth.R: CategoricalDistribution(r_grid), synth.M: CategoricalDistribution(m_grid)}
    rows = synth.grid_rows(synth.interior_surface, r_values=r_grid, m_values=m_grid, repeats=3, noise=0.01, seed=2,
                           skip=[(0.9, 4), (0.1, 1)])
    means, counts = heatmap_matrix(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, space, method="grid",
                                                                search=synth.grid_search({synth.R: r_grid, synth.M: m_grid}))))
    assert list(means.index) == ["0.1", "0.5", "0.9"] and list(means.columns) == ["1", "2", "3", "4"]
    assert np.isnan(means.loc["0.9", "4"]) and np.isnan(means.loc["0.1", "1"])  # no trial: blank, not interpolated
    assert counts.loc["0.9", "4"] == 0 and counts.loc["0.1", "1"] == 0
    assert int(counts.to_numpy().sum()) == len(rows) and counts.loc["0.5", "3"] == 3
    cell = [r.score for r in rows if r.params == {synth.R: 0.5, synth.M: 3}]
    assert means.loc["0.5", "3"] == pytest.approx(np.mean(cell))
    assert int(np.isnan(means.to_numpy()).sum()) == 2


def test_heatmap_of_a_tpe_sweep_bins_r_and_keeps_every_m(interior_tpe_sweep: Path) -> None:
    means, counts = heatmap_matrix(load_sweep(interior_tpe_sweep))
    assert means.shape == (5, 8)  # r in 5 bins of [0.1, 0.9]; M = 1..8 each its own column
    assert int(counts.to_numpy().sum()) == 120
    assert np.array_equal(np.isnan(means.to_numpy()), counts.to_numpy() == 0)


def test_fanovas_depth_cap_leaves_the_importances_of_a_large_study_as_they_were() -> None:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from simmtm.analysis.importance import FANOVA_MAX_DEPTH

    space = {"r": FloatDistribution(0.1, 0.9), "m": IntDistribution(1, 5),
             "tau": FloatDistribution(0.05, 1.0, log=True)}
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    for _ in range(200):  # fully grown trees here reach depths above 10: the cap binds on their deepest branches
        p = {"r": float(rng.uniform(0.1, 0.9)), "m": int(rng.integers(1, 6)),
             "tau": float(np.exp(rng.uniform(np.log(0.05), 0)))}
        score = 0.05 * (p["r"] - 0.5) ** 2 + 0.002 * (p["m"] - 3) ** 2 + 0.01 * np.log(p["tau"] / 0.2) ** 2
        study.add_trial(optuna.trial.create_trial(params=p, distributions=space, value=score + rng.normal(0, 0.002)))
    capped, full = (get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0, max_depth=depth))
                    for depth in (FANOVA_MAX_DEPTH, 64))  # 64: Optuna's default, trees grown to single trials
    assert list(capped) == list(full)  # the same ranking
    assert max(abs(capped[k] - full[k]) for k in full) < 0.02
