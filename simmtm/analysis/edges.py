"""Parameters whose best value sits at a bound of the searched range (``find_edges``), and the configurations
inside the range that such an edge must beat (``inside_groups``).

Whether to widen the range is decided in ``simmtm.verdict.recommendation`` (``edge_advice``: how far;
``gate_edges``: only when the edge beats the inside of the range beyond the sweep's seed noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.load import Sweep
from simmtm.analysis.noise import search_groups
from simmtm.verdict.widening import edge_advice

__all__ = ["find_edges", "inside_groups", "unit"]


def unit(values: np.ndarray, dist: BaseDistribution) -> np.ndarray:
    """Position in the searched range, 0 at the low bound and 1 at the high one (log scale where searched so)."""
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low, high, v = float(dist.low), float(dist.high), values.astype(float)
    if dist.log:
        low, high, v = math.log(low), math.log(high), np.log(v)
    return (v - low) / (high - low) if high > low else np.zeros_like(v)


def find_edges(
    values: Mapping[str, Any], dists: Mapping[str, BaseDistribution], how: Mapping[str, str], fraction: float
) -> list[dict[str, Any]]:
    out = []
    for p, v in values.items():
        dist = dists[p]
        if isinstance(dist, CategoricalDistribution):
            nums = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if len(nums) < 3 or len(nums) != len(dist.choices) or not isinstance(v, (int, float)):
                continue  # names (encoders) or too few levels have no edge
            low, high = min(nums), max(nums)
            side = "low" if v == low else "high" if v == high else None
        else:
            assert isinstance(dist, (FloatDistribution, IntDistribution))
            low, high = dist.low, dist.high
            if how.get(p) == "same value":  # grid levels
                side = "low" if v <= low else "high" if v >= high else None
            else:
                u = float(unit(np.array([v]), dist)[0])
                side = "low" if u <= fraction else "high" if u >= 1 - fraction else None
        if side is not None:
            out.append(edge_advice(p, side, v, low, high, log=getattr(dist, "log", False)))
    return out


def inside_groups(
    edges: list[dict[str, Any]], done: pd.DataFrame, sweep: Sweep, good: np.ndarray, fraction: float
) -> dict[str, list[list[float]]]:
    """Per edge that could widen: the ``good`` (higher-better) scores of each configuration whose value of that
    parameter lies inside the range, away from the edge (repeats of a configuration together)."""
    keys = [p for p in sweep.params if p in done]
    out = {}
    for edge in edges:
        if edge["can_widen"]:
            inside = _inside(done[edge["param"]], sweep.distributions[edge["param"]], edge, fraction)
            out[edge["param"]] = list(search_groups(done, keys, good, np.flatnonzero(inside)).values())
    return out


def _inside(values: pd.Series, dist: BaseDistribution, edge: dict[str, Any], fraction: float) -> np.ndarray:
    """Rows whose value of the edge's parameter lies away from that edge."""
    if isinstance(dist, CategoricalDistribution) or not isinstance(values.iloc[0], (int, float, np.number)):
        return (values.astype(str) != str(edge["value"])).to_numpy()
    numeric = values.astype(float).to_numpy()
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        u = unit(numeric, dist)
        edge_u = float(unit(np.array([float(edge["value"])]), dist)[0])
        if edge["side"] == "low":
            return (u > max(fraction, edge_u)) & (numeric != float(edge["value"]))
        return (u < min(1 - fraction, edge_u)) & (numeric != float(edge["value"]))
    return numeric != float(edge["value"])
