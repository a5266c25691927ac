"""Cut a searched parameter into levels: its grid values where it has few, equal-width bins of its range otherwise.

Levels are what the r x M heatmap's rows and columns and the M-versus-r relation are made of. Levels come from
the searched space, not only from the values seen, so a grid cell that no trial reached is an empty level (shown
blank), never dropped or interpolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

__all__ = ["Levels", "levels_of", "MAX_LEVELS"]

MAX_LEVELS = 12  # at most this many distinct values: one level per value


@dataclass(frozen=True)
class Levels:
    index: np.ndarray  # level of each value (int)
    centres: np.ndarray  # a representative number per level
    labels: list[str]  # per level, for axes and table headers


def _label(v: float) -> str:
    return f"{v:.3g}"


def levels_of(values: pd.Series, dist: BaseDistribution | None, *, n_bins: int = 5) -> Levels:
    """Levels for the (numeric) values of one parameter drawn from ``dist``."""
    v = values.astype(float).to_numpy()
    distinct = np.unique(v[np.isfinite(v)])
    if isinstance(dist, CategoricalDistribution):
        nums = sorted(float(c) for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool))
        grid = np.unique(np.concatenate([np.array(nums, float), distinct]))
    elif isinstance(dist, IntDistribution) and not dist.log and (dist.high - dist.low) // dist.step + 1 <= MAX_LEVELS:
        grid = np.unique(np.concatenate([np.arange(dist.low, dist.high + 1, dist.step, dtype=float), distinct]))
    elif len(distinct) <= MAX_LEVELS or not isinstance(dist, (FloatDistribution, IntDistribution)):
        grid = distinct
    else:
        return _bins(v, dist, n_bins)
    idx = np.searchsorted(grid, v) if len(grid) else np.zeros(len(v), int)
    return Levels(np.clip(idx, 0, max(len(grid) - 1, 0)), grid, [_label(g) for g in grid])


def _bins(v: np.ndarray, dist: FloatDistribution | IntDistribution, n_bins: int) -> Levels:
    if dist.log:
        edges = np.exp(np.linspace(math.log(dist.low), math.log(dist.high), n_bins + 1))
        centres = np.sqrt(edges[:-1] * edges[1:])
    else:
        edges = np.linspace(float(dist.low), float(dist.high), n_bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)
    labels = [f"{_label(a)}-{_label(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return Levels(idx, centres, labels)
