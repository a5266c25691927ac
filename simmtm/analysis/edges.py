"""Parameters whose best value sits at a bound of the searched range, and whether widening the range is worth it.

An edge is advised for widening only when the recommended neighbourhood beats the best configuration inside the
range beyond the sweep's seed noise (``simmtm.analysis.noise.seed_noise``, passed in); within it, the advice is
"no need to widen"; without any noise figure the advice stands and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.load import SHORT_NAMES, Sweep
from simmtm.analysis.noise import search_groups
from simmtm.config.schema import RunConfig

__all__ = ["find_edges", "gate_edges", "unit", "fmt_value"]


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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
            out.append(_edge(p, side, v, low, high, log=getattr(dist, "log", False)))
    return out


def gate_edges(
    edges: list[dict[str, Any]],
    done: pd.DataFrame,
    sweep: Sweep,
    members: np.ndarray,
    fraction: float,
    *,
    confidence: float,
    noise: float | None,
) -> list[dict[str, Any]]:
    """Advise widening a range only when the edge beats the inside of the range beyond seed noise.

    The recommended neighbourhood's mean is compared with the best configuration whose value of that parameter lies
    inside the range (its mean over repeats); within z * SD * sqrt(1/n + 1/n') of it, the edge is a tie and the
    advice becomes "no need to widen". ``noise``: the sweep's seed-to-seed SD (``seed_noise``); without it the advice
    stands, saying so.
    """
    from scipy.stats import norm

    scores = done["score"].to_numpy(float)
    good = sweep.sign * scores
    expected = float(good[members].mean())
    out = []
    for edge in edges:
        if not edge["can_widen"]:
            out.append(edge)
            continue
        name = f"{edge['param']} ({SHORT_NAMES[edge['param']]})" if edge["param"] in SHORT_NAMES else edge["param"]
        if noise is None:
            out.append({**edge, "message": edge["message"] + " (seed noise not measured: confirm before widening)"})
            continue
        inside = _inside(done[edge["param"]], sweep.distributions[edge["param"]], edge, fraction)
        groups = search_groups(done, [p for p in sweep.params if p in done], good, np.flatnonzero(inside))
        if not groups:
            out.append(edge)
            continue
        best_inside = max(groups.values(), key=lambda g: float(np.mean(g)))
        gap = expected - float(np.mean(best_inside))
        critical = float(norm.ppf(confidence)) * noise * math.sqrt(1 / len(members) + 1 / len(best_inside))
        if gap <= critical:
            out.append(
                {
                    **edge,
                    "can_widen": False,
                    "suggested_bound": None,
                    "noise_sd": noise,
                    "gap": gap,
                    "message": f"the best {name} ({fmt_value(edge['value'])}) lies at the {edge['side']} bound, but "
                    f"values inside the range are within seed noise of it (gap {gap:.3g}, seed SD {noise:.3g}): "
                    "no need to widen",
                }
            )
        else:
            out.append({**edge, "noise_sd": noise, "gap": gap})
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


def _edge(key: str, side: str, value: Any, low: float, high: float, *, log: bool) -> dict[str, Any]:
    bound = low if side == "low" else high
    limit_low, limit_high = _config_limits(key)
    limit = limit_low if side == "low" else limit_high
    name = f"{key} ({SHORT_NAMES[key]})" if key in SHORT_NAMES else key
    where = "lowest" if side == "low" else "highest"
    at_limit = dict(
        param=key,
        side=side,
        value=value,
        bound=bound,
        can_widen=False,
        suggested_bound=None,
        message=f"{name}={fmt_value(value)} is at the {where} value it can take; nothing to widen",
    )
    if limit is not None and math.isclose(bound, limit[0]) and limit[1]:
        return at_limit
    span = (math.log(high) - math.log(low)) if log and low > 0 else (high - low)
    if log and low > 0:
        target = bound * math.exp(-span / 2) if side == "low" else bound * math.exp(span / 2)
    else:
        target = bound - span / 2 if side == "low" else bound + span / 2
    if limit is not None:  # stay inside what the config accepts
        lim, inclusive = limit
        if (side == "low" and target <= lim) or (side == "high" and target >= lim):
            target = lim if inclusive else bound + 0.75 * (lim - bound)
    if isinstance(value, int) and isinstance(bound, int):
        target = int(math.floor(target) if side == "low" else math.ceil(target))
    else:
        target = float(f"{target:.3g}")
    if target == bound:
        return at_limit
    verb = "lower" if side == "low" else "raise"
    which = "lower" if side == "low" else "upper"
    return dict(
        param=key,
        side=side,
        value=value,
        bound=bound,
        can_widen=True,
        suggested_bound=target,
        message=f"the best {name} ({fmt_value(value)}) lies at the {which} bound {fmt_value(bound)} of the searched "
        f"range; widen the search: {verb} the {which} bound to about {fmt_value(target)}",
    )


def _config_limits(key: str) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """(low, inclusive) and (high, inclusive) that RunConfig accepts for a dotted key, where it sets any."""
    model: Any = RunConfig
    parts = key.split(".")
    for part in parts[:-1]:
        f = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if f is None:
            return None, None
        model = f.annotation
    f = model.model_fields.get(parts[-1]) if hasattr(model, "model_fields") else None
    if f is None:
        return None, None
    low = high = None
    for m in f.metadata:
        if getattr(m, "gt", None) is not None:
            low = (float(m.gt), False)
        if getattr(m, "ge", None) is not None:
            low = (float(m.ge), True)
        if getattr(m, "lt", None) is not None:
            high = (float(m.lt), False)
        if getattr(m, "le", None) is not None:
            high = (float(m.le), True)
    return low, high
