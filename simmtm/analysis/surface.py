"""Does the r x M surface stand out from seed noise? The question a sensitivity study must answer first.

``surface_noise`` takes the scores of each cell (several training seeds a cell) and returns the seed noise (pooled
within-cell SD), the surface's spread (best cell mean minus worst), their ratio, a one-way ANOVA over the cells
(F and p: is any cell different from the others beyond seed noise?), the share of the between-cell variation that
r and M explain as main effects, and the cells statistically tied with the best. ``sweep_surface_noise`` does it
for a sweep's finished trials (a grid with ``tune.repeats`` >= 2 is what makes it possible).

With few seeds the spread of cell means is inflated by noise alone (for 25 cells of 3 seeds of pure noise it is
about 2.3x the seed SD; ``noise_only_ratio`` gives the figure for the cells at hand): the ANOVA's p is the test,
the ratio the yardstick a reader can picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simmtm.analysis.load import M_KEY, R_KEY, Sweep
from simmtm.verdict.stats import Mode, seed_spread, tied_with_best

__all__ = ["SurfaceNoise", "surface_noise", "sweep_surface_noise"]


@dataclass(frozen=True)
class SurfaceNoise:
    n_cells: int
    n_runs: int
    noise_sd: float | None  # pooled within-cell SD (None: no cell has 2 seeds)
    spread: float  # best cell mean minus worst, in the score's units (always >= 0)
    anova_f: float | None
    anova_p: float | None
    share_r: float | None  # share of the between-cell sum of squares explained by r's main effect
    share_m: float | None
    best: tuple[Any, Any]
    best_mean: float
    tied: frozenset[tuple[Any, Any]]  # cells tied with the best (one-sided 95 %), the best included
    noise_only_ratio: float | None = None  # the ratio that seed noise alone gives with these cells and seeds (mean)
    # main effects against the within-cell (seed) error: more power than the cell-by-cell ANOVA when r or M moves
    # every cell of its row a little (exact for a balanced grid, approximate otherwise)
    r_p: float | None = None
    m_p: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.spread / self.noise_sd if self.noise_sd else None

    @property
    def indistinct(self) -> bool:
        """Seed noise explains the whole surface: no cell stands out and neither r nor M shifts rows or columns."""
        return self.noise_sd is not None and not self._cells_differ and not self._shifts

    @property
    def _cells_differ(self) -> bool:
        return self.anova_p is not None and self.anova_p < 0.05

    @property
    def _shifts(self) -> list[str]:
        return [name for name, q in (("r", self.r_p), ("M", self.m_p)) if q is not None and q < 0.05]

    def verdict(self) -> str:
        if self._cells_differ:
            return "r and M matter here beyond seed noise"
        if self._shifts:
            moves = "r and M shift" if len(self._shifts) > 1 else f"{self._shifts[0]} shifts"
            return f"no single cell stands out, but {moves} whole rows or columns"
        return "the cells cannot be told apart from seed noise"

    def line(self, metric: str = "score") -> str:
        """One sentence for a report or a terminal."""
        if self.noise_sd is None:
            return f"r x M surface: spread {self.spread:.3g} of {metric}; seed noise unknown (needs 2+ seeds a cell)"
        verdict = self.verdict()
        anova = f", ANOVA p = {self.anova_p:.2g}" if self.anova_p is not None else ""
        main = (
            f"; main effects: r p = {self.r_p:.2g}, M p = {self.m_p:.2g}"
            if self.r_p is not None and self.m_p is not None
            else ""
        )
        alone = f"; noise alone gives {self.noise_only_ratio:.1f}x" if self.noise_only_ratio is not None else ""
        return (
            f"r x M surface: spread {self.spread:.3g} of {metric} = {self.ratio:.1f}x the seed noise "
            f"(SD {self.noise_sd:.3g}, {self.n_runs} runs in {self.n_cells} cells{anova}{alone}); {verdict}; "
            f"{len(self.tied)} of {self.n_cells} cells tied with the best{main}"
        )


def surface_noise(cells: Mapping[tuple[Any, Any], Sequence[float]], *, mode: Mode) -> SurfaceNoise:
    """The surface-versus-noise summary of ``cells``: (r, M) -> the scores of its seeds."""
    from scipy.stats import f_oneway

    clean = {k: [float(v) for v in vs if v is not None and math.isfinite(v)] for k, vs in cells.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        raise ValueError("no cell holds a finite score")
    means = {k: float(np.mean(v)) for k, v in clean.items()}
    best = (min if mode == "min" else max)(means, key=lambda k: means[k])
    noise = seed_spread(clean).sd
    groups = [v for v in clean.values() if len(v) >= 2]
    f = p = None
    if len(groups) >= 2 and noise:
        res = f_oneway(*groups)
        f, p = float(res.statistic), float(res.pvalue)
    grand = float(np.mean(list(means.values())))
    ss_cells = sum((m - grand) ** 2 for m in means.values())

    def share(axis: int) -> float | None:
        if ss_cells <= 0:
            return None
        by_level: dict[Any, list[float]] = {}
        for key, mean in means.items():  # one pass: linear in the cells
            by_level.setdefault(key[axis], []).append(mean)
        return sum(len(ms) * (float(np.mean(ms)) - grand) ** 2 for ms in by_level.values()) / ss_cells

    return SurfaceNoise(
        n_cells=len(means),
        n_runs=sum(len(v) for v in clean.values()),
        noise_sd=noise,
        spread=max(means.values()) - min(means.values()),
        anova_f=f,
        anova_p=p,
        share_r=share(0),
        share_m=share(1),
        best=best,
        best_mean=means[best],
        tied=frozenset(tied_with_best(clean, mode=mode) if noise is not None else {best}),
        noise_only_ratio=_noise_only_ratio([len(v) for v in clean.values()]) if noise else None,
        r_p=_main_effect_p(clean, 0) if noise else None,
        m_p=_main_effect_p(clean, 1) if noise else None,
    )


def _main_effect_p(cells: Mapping[tuple[Any, Any], list[float]], axis: int) -> float | None:
    """F test of one factor's main effect (its levels' run means) against the pooled within-cell error."""
    from scipy.stats import f as f_dist

    by_level: dict[Any, list[float]] = {}
    for key, vs in cells.items():  # one pass: linear in the runs
        by_level.setdefault(key[axis], []).extend(vs)
    n_runs = sum(len(vs) for vs in by_level.values())
    df_within = n_runs - len(cells)
    if len(by_level) < 2 or df_within < 1:
        return None
    grand = float(np.mean([v for vs in by_level.values() for v in vs]))
    ss = sum(len(vs) * (float(np.mean(vs)) - grand) ** 2 for vs in by_level.values())
    ss_within = sum(float(((np.asarray(v) - np.mean(v)) ** 2).sum()) for v in cells.values())
    if ss_within <= 0:
        return None
    f = (ss / (len(by_level) - 1)) / (ss_within / df_within)
    return float(f_dist.sf(f, len(by_level) - 1, df_within))


def _noise_only_ratio(sizes: list[int], *, draws: int = 2000, seed: int = 0) -> float:
    """The mean of (range of cell means) / (pooled within-cell SD) when every cell is pure noise (same sizes).

    Vectorised by cell size; fewer draws on big grids (at most ~5 million numbers drawn in all)."""
    df = sum(n - 1 for n in sizes)
    if df <= 0:
        return math.nan
    draws = max(200, min(draws, 5_000_000 // max(sum(sizes), 1)))
    rng = np.random.default_rng(seed)
    means, ss = [], np.zeros(draws)
    for n in sorted(set(sizes)):
        x = rng.standard_normal((draws, sizes.count(n), n))
        m = x.mean(axis=2)
        means.append(m)
        ss += ((x - m[..., None]) ** 2).sum(axis=(1, 2))
    all_means = np.concatenate(means, axis=1)
    return float(np.mean((all_means.max(axis=1) - all_means.min(axis=1)) / np.sqrt(ss / df)))


def sweep_surface_noise(sweep: Sweep, column: str = "score") -> SurfaceNoise | None:
    """``surface_noise`` over a sweep's finished trials by (r, M); None when r and M were not both searched, or, for
    ``column`` test_score, unless every finished trial has a test score (``tune.test_top_k`` covering the grid)."""
    done = sweep.finished
    if R_KEY not in done or M_KEY not in done or done.empty:
        return None
    values = done[column].astype(float)
    if not np.isfinite(values).all():
        return None
    cells: dict[tuple[Any, Any], list[float]] = {}
    for r, m, score in zip(done[R_KEY], done[M_KEY], values):
        cells.setdefault((round(float(r), 6), int(m)), []).append(score)
    mode: Mode = "min" if sweep.mode == "min" else "max"
    return surface_noise(cells, mode=mode)
