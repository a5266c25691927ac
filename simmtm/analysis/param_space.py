"""The space each searched parameter of a sweep is analysed on, and a recorded value as that space's type.

Per parameter: the Optuna study's own distribution (merged over trials, as a define-by-run space may vary), else
the sweep's search section, else one inferred from the recorded values; widened where a recorded value falls
outside it. ``simmtm.analysis.load`` builds a ``Sweep`` with these; ``param_value`` turns a table's cell (a string,
a numpy scalar, NaN) into the int, float or exact categorical choice the distribution holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.tuning.space import match_choice, search_distributions

__all__ = ["param_value", "merge_distributions", "resolve_distributions", "snap_to_distributions"]


def param_value(value: Any, dist: BaseDistribution | None) -> Any:
    """``value`` (as read from a table) as the type ``dist`` holds: int, float or the exact categorical choice."""
    value = _plain(value)
    if value is None or _isnan(value):
        return None
    if isinstance(dist, IntDistribution):
        return int(round(float(value)))
    if isinstance(dist, FloatDistribution):
        return float(value)
    if isinstance(dist, CategoricalDistribution):
        match = match_choice(value, dist.choices)
        return value if match is None else match
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def merge_distributions(a: BaseDistribution | None, b: BaseDistribution) -> BaseDistribution:
    """Two distributions seen for one parameter (a define-by-run space may vary): the smallest one holding both."""
    if a is None or a == b:
        return b
    if isinstance(a, CategoricalDistribution) and isinstance(b, CategoricalDistribution):
        return CategoricalDistribution(list(dict.fromkeys([*a.choices, *b.choices])))
    if isinstance(a, (FloatDistribution, IntDistribution)) and isinstance(b, (FloatDistribution, IntDistribution)):
        low, high = min(a.low, b.low), max(a.high, b.high)
        if isinstance(a, IntDistribution) and isinstance(b, IntDistribution):
            return IntDistribution(int(low), int(high), log=a.log and b.log)
        return FloatDistribution(float(low), float(high), log=a.log and b.log)
    return b


def resolve_distributions(
    params: Sequence[str], from_study: Mapping[str, BaseDistribution], search: Mapping[str, Any], frame: pd.DataFrame
) -> dict[str, BaseDistribution]:
    """Per parameter: the study's own distribution, else the search section's, else one inferred from the values;
    widened where a recorded value falls outside it."""
    parsed = search_distributions(search, params)  # the sweep's own SearchSpec, read by the sweep's code
    out = {}
    for p in params:
        dist = from_study.get(p) or parsed.get(p)
        values = frame[p].dropna() if p in frame.columns else pd.Series([], dtype=float)
        if dist is None:
            dist = _infer(values)
        if dist is None:
            continue
        out[p] = _widen(dist, values)
    return out


def _infer(values: pd.Series) -> BaseDistribution | None:
    if values.empty:
        return None
    if pd.api.types.is_numeric_dtype(values):
        if np.all(np.equal(np.mod(values, 1), 0)):
            return IntDistribution(int(values.min()), int(values.max()))
        return FloatDistribution(float(values.min()), float(values.max()))
    return CategoricalDistribution(sorted({str(v) for v in values}))


def _widen(dist: BaseDistribution, values: pd.Series) -> BaseDistribution:
    if values.empty:
        return dist
    if isinstance(dist, CategoricalDistribution):
        extra = [v for v in dict.fromkeys(_plain(v) for v in values) if match_choice(v, dist.choices) is None]
        return CategoricalDistribution([*dist.choices, *extra]) if extra else dist
    if not pd.api.types.is_numeric_dtype(values):
        return _infer(values) or dist
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low, high = float(values.min()), float(values.max())
    if low >= dist.low and high <= dist.high:
        return dist
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(min(dist.low, math.floor(low))), int(max(dist.high, math.ceil(high))), log=dist.log)
    return FloatDistribution(min(dist.low, low), max(dist.high, high), log=dist.log)


def snap_to_distributions(frame: pd.DataFrame, dists: Mapping[str, BaseDistribution]) -> pd.DataFrame:
    """Replace recorded values of categorical parameters by the exact choice they stand for."""
    for p, d in dists.items():
        if isinstance(d, CategoricalDistribution) and p in frame.columns:
            frame[p] = [(match_choice(_plain(v), d.choices) if not _isnan(v) else v) for v in frame[p]]
    return frame


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
