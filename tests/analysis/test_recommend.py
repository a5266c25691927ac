"""The recommendation on synthetic score surfaces with a known optimum, edge and M-versus-r relation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis import load_sweep, recommend
from simmtm.analysis.best_m import m_vs_r

R_GRID = [0.1, 0.3, 0.5, 0.7, 0.9]


def grid_sweep(tmp_path: Path, synth: SimpleNamespace, surface, *, m_values=range(1, 10), repeats=2, noise=0.003,
               seed=0, name="sweep", categorical: bool = False) -> Path:
    """A grid sweep; its study holds ranges (the sweep's own distributions) or, with ``categorical``, the grid values."""
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 9)}
    if categorical:
        space = {synth.R: CategoricalDistribution(R_GRID), synth.M: CategoricalDistribution(list(m_values))}
    rows = synth.grid_rows(surface, r_values=R_GRID, m_values=list(m_values), repeats=repeats, noise=noise, seed=seed)
    search = synth.grid_search({synth.R: R_GRID, synth.M: m_values})
    return synth.write_sweep(tmp_path / name, rows, space, method="grid", search=search)


def test_interior_optimum_on_a_grid_is_found_with_an_interval(tmp_path: Path, synth: SimpleNamespace) -> None:
    rec = recommend(load_sweep(grid_sweep(tmp_path, synth, synth.interior_surface, m_values=range(1, 7))), n_boot=300)
    assert rec.status == "ok"
    assert rec.params == {synth.R: 0.5, synth.M: 3}
    assert rec.n_support == 2  # the cell's two repeats
    assert rec.ci is not None and rec.ci[0] <= rec.expected_score <= rec.ci[1]
    assert abs(rec.expected_score - 0.40) < 0.01
    assert rec.edges == []
    assert rec.fixed == {synth.TAU: 0.2, synth.ENC: "transformer"}  # not searched: the run config's values


def test_interior_optimum_from_a_noisy_tpe_sweep(interior_tpe_sweep: Path, synth: SimpleNamespace) -> None:
    rec = recommend(load_sweep(interior_tpe_sweep), n_boot=300)
    assert rec.status == "ok"
    assert abs(rec.params[synth.R] - 0.5) <= 0.1
    assert abs(rec.params[synth.M] - 3) <= 1 and isinstance(rec.params[synth.M], int)
    assert rec.params[synth.ENC] == "transformer"
    assert rec.n_support >= 3
    assert not [e for e in rec.edges if e["param"] in (synth.R, synth.M)]
    assert 0 <= rec.stability <= 1
    assert rec.ci[0] < rec.ci[1]
    assert rec.m_vs_r["verdict"] in ("flat", "unclear")  # the best M is 3 at every r


@pytest.mark.parametrize("categorical", [False, True])
def test_best_region_at_the_upper_edge_is_flagged_with_a_wider_bound(tmp_path: Path, synth: SimpleNamespace, categorical: bool) -> None:
    rec = recommend(load_sweep(grid_sweep(tmp_path, synth, synth.edge_surface, categorical=categorical)), n_boot=200)
    assert rec.params[synth.R] == 0.9
    (edge,) = [e for e in rec.edges if e["param"] == synth.R]
    assert edge["side"] == "high" and edge["can_widen"]
    assert 0.9 < edge["suggested_bound"] < 1.0  # the config requires r < 1
    assert "widen" in edge["message"] and "upper bound" in edge["message"]
    assert any("at the edge" in line for line in rec.summary())


def test_best_at_the_lowest_possible_value_says_nothing_to_widen(tmp_path: Path, synth: SimpleNamespace) -> None:
    rec = recommend(load_sweep(grid_sweep(tmp_path, synth, lambda p: 0.4 + 0.02 * p[synth.M] + 0.1 * (p[synth.R] - 0.5) ** 2)), n_boot=200)
    assert rec.params == {synth.R: 0.5, synth.M: 1}
    (edge,) = rec.edges
    assert edge["param"] == synth.M and edge["side"] == "low" and not edge["can_widen"]
    assert "nothing to widen" in edge["message"]
    assert rec.m_vs_r["status"] == "no interior best M" and rec.m_vs_r["slope"] is None


def test_best_m_growing_with_r_gives_a_positive_slope_whose_interval_excludes_zero(tmp_path: Path, synth: SimpleNamespace) -> None:
    rel = m_vs_r(load_sweep(grid_sweep(tmp_path, synth, synth.ridge_surface, noise=0.005)), n_boot=300)
    assert rel["status"] == "ok"
    assert [p["best_M"] for p in rel["points"]] == [1, 3, 5, 7, 9]
    assert rel["slope"] == pytest.approx(10.0, abs=0.5)  # M*(r) = 10 r
    assert rel["intercept"] == pytest.approx(0.0, abs=0.5)
    assert rel["ci"][0] > 0 and rel["verdict"] == "grows"
    assert "grows with r" in rel["message"]


def test_best_m_not_moving_with_r_gives_an_interval_holding_zero(tmp_path: Path, synth: SimpleNamespace) -> None:
    rel = m_vs_r(load_sweep(grid_sweep(tmp_path, synth, synth.flat_m_surface, noise=0.005)), n_boot=300)
    assert rel["status"] == "ok" and rel["verdict"] in ("flat", "unclear")
    assert abs(rel["slope"]) * 0.8 < 0.5  # the best M moves by less than half a masked series over r in [0.1, 0.9]
    assert rel["intercept"] == pytest.approx(4.0, abs=0.3)


def test_best_m_growing_with_r_in_a_tpe_sweep(tmp_path: Path, synth: SimpleNamespace) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 9)}
    rows = synth.tpe_rows(synth.ridge_surface, space, n_trials=150, noise=0.003, seed=3)
    rel = m_vs_r(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, space)), n_boot=300)
    assert rel["slope"] > 0 and rel["ci"][0] > 0, rel


def test_maximised_metric_picks_the_highest_scores(tmp_path: Path, synth: SimpleNamespace) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 9)}
    rows = synth.grid_rows(lambda p: 0.9 - synth.interior_surface(p), r_values=R_GRID, m_values=range(1, 7), repeats=2, noise=0.002)
    root = synth.write_sweep(tmp_path / "sweep", rows, space, metric="val_accuracy", mode="max", method="grid",
                             search=synth.grid_search({synth.R: R_GRID, synth.M: range(1, 7)}))
    rec = recommend(load_sweep(root), n_boot=200)
    assert rec.params == {synth.R: 0.5, synth.M: 3}
    assert rec.expected_score == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("states", [[], ["FAILED", "FAILED"], ["COMPLETE"], ["COMPLETE", "FAILED", "PRUNED"]])
def test_too_few_finished_trials_is_a_status_not_an_error(tmp_path: Path, synth: SimpleNamespace, states: list[str]) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 9)}
    rows = [synth.Row({synth.R: 0.5, synth.M: 3}, 0.4 if s != "FAILED" else None, state=s) for s in states]
    rec = recommend(load_sweep(synth.write_sweep(tmp_path / "sweep", rows, space)))
    assert rec.status == "insufficient"
    assert f"{states.count('COMPLETE')} finished trial" in rec.message
    assert rec.summary() == [rec.message]


@pytest.mark.parametrize("spread", [0.004, 0.00001])
def test_widening_is_advised_only_beyond_seed_noise(tmp_path: Path, synth: SimpleNamespace, spread: float) -> None:
    """The best r sits at the upper bound by 0.001 over r = 0.7. With repeats that differ by +-0.004 (seed SD ~0.006)
    that is a tie: no advice to widen. With repeats +-0.00001 apart the same gap is real: widen."""
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 3)}
    rows = [
        synth.Row({synth.R: r, synth.M: m}, 0.40 - 0.005 * r + 0.01 * (m - 2) ** 2 + (spread if rep else -spread),
                  repeat=rep)
        for r in R_GRID for m in (1, 2, 3) for rep in (0, 1)
    ]
    root = synth.write_sweep(tmp_path / "sweep", rows, space, method="grid",
                             search=synth.grid_search({synth.R: R_GRID, synth.M: [1, 2, 3]}))
    rec = recommend(load_sweep(root), n_boot=100)
    assert rec.params[synth.R] == 0.9
    (edge,) = [e for e in rec.edges if e["param"] == synth.R]
    assert edge["noise_sd"] == pytest.approx(spread * 2**0.5, rel=1e-6)
    if spread > 0.001:
        assert not edge["can_widen"] and "within seed noise" in edge["message"] and "no need to widen" in edge["message"]
    else:
        assert edge["can_widen"] and "widen the search" in edge["message"]


def test_recommend_says_how_many_cells_tie_with_the_best_within_seed_noise(tmp_path: Path, synth: SimpleNamespace) -> None:
    # A flat surface, 3 seeds a cell: the pick is a coin toss among equals, and recommend says so in its own lines.
    flat = recommend(load_sweep(grid_sweep(tmp_path, synth, lambda p: 0.40, m_values=range(1, 6), repeats=3,
                                           noise=0.01, name="flat")), n_boot=100)
    assert flat.surface is not None and flat.surface["n_cells"] == 25 and flat.surface["indistinct"] is True
    assert flat.surface["recommended_tied"] is True
    assert flat.surface["noise_sd"] == pytest.approx(0.01, rel=0.3)
    assert any("25 cells cannot be told apart from seed noise" in line and "pick among equals" in line
               for line in flat.summary())
    # A real optimum well beyond the noise: one cell (or its neighbours) ties, and it is the one recommended.
    sharp = recommend(load_sweep(grid_sweep(tmp_path, synth, synth.interior_surface, m_values=range(1, 6),
                                            noise=0.0005, name="sharp")), n_boot=100)
    assert sharp.params == {synth.R: 0.5, synth.M: 3}
    assert sharp.surface["n_tied"] <= 3 and sharp.surface["recommended_tied"] is True and not sharp.surface["indistinct"]
    assert "of 25 cells tie with the best" in sharp.surface["message"] and "pick among equals" not in sharp.surface["message"]
    assert sharp.to_dict()["surface"]["n_cells"] == 25  # recommendation.json carries it


def test_one_seed_a_trial_gives_no_surface_line(interior_tpe_sweep: Path) -> None:
    rec = recommend(load_sweep(interior_tpe_sweep), n_boot=100)
    assert rec.status == "ok" and rec.surface is None
    assert not any("tie with the best" in line for line in rec.summary())
