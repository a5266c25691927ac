"""Does the r x M surface stand out from seed noise? simmtm.analysis.surface on surfaces with a known answer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from simmtm.analysis import load_sweep, surface_noise, sweep_surface_noise, write_report

R_VALUES, M_VALUES = (0.1, 0.3, 0.5, 0.7, 0.9), (1, 2, 3, 4, 5)


def cells(effect: float, noise: float, seeds: int = 3, seed: int = 0) -> dict[tuple[float, int], list[float]]:
    rng = np.random.default_rng(seed)
    return {(r, m): list(0.5 + effect * r + noise * rng.standard_normal(seeds)) for r in R_VALUES for m in M_VALUES}


def test_a_real_r_effect_stands_out() -> None:
    s = surface_noise(cells(effect=0.1, noise=0.01), mode="min")
    assert s.best[0] == 0.1 and s.n_cells == 25 and s.n_runs == 75
    assert s.noise_sd == pytest.approx(0.01, rel=0.25)
    assert s.ratio > 5 > s.noise_only_ratio  # 0.08 of true spread against SD 0.01
    assert s.anova_p < 1e-6
    assert s.share_r > 0.9 and s.share_m < 0.1
    assert all(k[0] <= 0.3 for k in s.tied)  # nothing at r >= 0.5 ties with the best
    assert "beyond seed noise" in s.line("val_mse")


def test_pure_noise_does_not() -> None:
    s = surface_noise(cells(effect=0.0, noise=0.01, seed=4), mode="max")
    assert s.anova_p > 0.05
    assert s.ratio == pytest.approx(s.noise_only_ratio, rel=0.5)  # ~2.3x from noise alone
    assert len(s.tied) > 10
    assert "cannot be told apart" in s.line()


def test_one_seed_a_cell_has_no_noise_estimate() -> None:
    s = surface_noise({k: v[:1] for k, v in cells(0.1, 0.01).items()}, mode="min")
    assert s.noise_sd is None and s.anova_p is None and s.tied == {s.best}
    assert "unknown" in s.line()


def test_a_grid_sweep_with_repeats_reports_it(tmp_path: Path, synth: SimpleNamespace) -> None:
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 5)}
    rows = synth.grid_rows(synth.edge_surface, r_values=R_VALUES, m_values=M_VALUES, repeats=2, noise=0.003)
    rows = [dataclasses.replace(r, test_score=r.score + 0.01) for r in rows]  # every cell scored on test too
    root = synth.write_sweep(tmp_path / "sweep", rows, space, method="grid",
                             search=synth.grid_search({synth.R: list(R_VALUES), synth.M: list(M_VALUES)}))
    s = sweep_surface_noise(load_sweep(root))
    assert s is not None and s.n_cells == 25 and s.anova_p < 1e-6 and s.best == (0.9, 3)
    assert sweep_surface_noise(load_sweep(root), "test_score").best == (0.9, 3)
    report = write_report(root, tmp_path / "report", interactive=False, n_boot=50)
    page = report.html.read_text()
    assert "r x M surface: spread" in page and "of test mse = " in page  # the validation and the test surface


def test_a_small_row_effect_shows_as_a_main_effect() -> None:
    """r moves every cell of its row by a little (0.3 SD a step): r's main effect is clear, M (which does nothing)
    is not."""
    s = surface_noise(cells(effect=0.015, noise=0.01, seeds=3, seed=1), mode="min")
    assert s.r_p < 0.01 < s.m_p
    assert "main effects: r p = " in s.line()
