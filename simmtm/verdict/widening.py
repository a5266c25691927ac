"""Whether a best value at a bound of the searched range calls for a wider range, and how much wider.

``edge_advice``: the bound a wider search would use (half the range again, on a log scale where searched so, never
past what ``RunConfig`` accepts). ``gate_edges``: the advice stands only when the recommended neighbourhood beats the
best configuration inside the range beyond the sweep's seed noise; within it, "no need to widen"; without any
noise figure the advice stands and says so. ``simmtm.analysis.edges`` finds the edges and the inside of the range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from simmtm.config.schema import RunConfig
from simmtm.verdict.recommendation import display_name, fmt_value

__all__ = ["edge_advice", "gate_edges"]


def edge_advice(key: str, side: str, value: Any, low: float, high: float, *, log: bool) -> dict[str, Any]:
    """A best ``value`` at the ``side`` ("low" or "high") bound of the range [low, high] of ``key``: how far to
    widen it (half the range again, on a log scale where searched so, and never past what RunConfig accepts)."""
    bound = low if side == "low" else high
    limit_low, limit_high = _config_limits(key)
    limit = limit_low if side == "low" else limit_high
    where = "lowest" if side == "low" else "highest"
    at_limit = dict(
        param=key,
        side=side,
        value=value,
        bound=bound,
        can_widen=False,
        suggested_bound=None,
        message=f"{display_name(key)}={fmt_value(value)} is at the {where} value it can take; nothing to widen",
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
        message=f"the best {display_name(key)} ({fmt_value(value)}) lies at the {which} bound {fmt_value(bound)} of "
        f"the searched range; widen the search: {verb} the {which} bound to about {fmt_value(target)}",
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


def gate_edges(
    edges: list[dict[str, Any]],
    inside: Mapping[str, Sequence[Sequence[float]]],
    *,
    expected: float,
    n_members: int,
    confidence: float,
    noise: float | None,
) -> list[dict[str, Any]]:
    """Advise widening a range only when the edge beats the inside of the range beyond seed noise.

    ``expected``: the recommended neighbourhood's mean (higher-better) over its ``n_members`` trials; ``inside``: per
    edge parameter, the higher-better scores of each configuration whose value lies inside the range (repeats
    together). The best of them (by mean) is compared with ``expected``: within z * SD * sqrt(1/n + 1/n') of it,
    the edge is a tie and the advice becomes "no need to widen". ``noise``: the sweep's seed-to-seed SD; without it
    the advice stands, saying so.
    """
    out = []
    for edge in edges:
        if not edge["can_widen"]:
            out.append(edge)
            continue
        if noise is None:
            out.append({**edge, "message": edge["message"] + " (seed noise not measured: confirm before widening)"})
            continue
        groups = inside.get(edge["param"]) or []
        if not groups:
            out.append(edge)
            continue
        best_inside = max(groups, key=lambda g: float(np.mean(g)))
        gap = expected - float(np.mean(best_inside))
        critical = float(norm.ppf(confidence)) * noise * math.sqrt(1 / n_members + 1 / len(best_inside))
        if gap <= critical:
            out.append(
                {
                    **edge,
                    "can_widen": False,
                    "suggested_bound": None,
                    "noise_sd": noise,
                    "gap": gap,
                    "message": f"the best {display_name(edge['param'])} ({fmt_value(edge['value'])}) lies at the "
                    f"{edge['side']} bound, but values inside the range are within seed noise of it (gap {gap:.3g}, "
                    f"seed SD {noise:.3g}): no need to widen",
                }
            )
        else:
            out.append({**edge, "noise_sd": noise, "gap": gap})
    return out
