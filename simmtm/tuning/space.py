"""Where a search starts and what Optuna sees of it: the sampler's seed, the first point, the Optuna distributions of
the searched keys, and matching a stored value back to a choice."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from simmtm.config.keys import flatten, get_key
from simmtm.config.schema import RunConfig
from simmtm.tuning.spec import PAPER_DEFAULTS, ParamSpec, SearchSpec, SweepSpec, condition_holds

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["sampler_seed", "first_point", "flat_config", "search_distributions", "match_choice"]


def sampler_seed(spec: SweepSpec, run_seed: int) -> int:
    """The Optuna sampler's seed: ``search.seed``, or the run's seed when that is not set."""
    return run_seed if spec.search.seed is None else spec.search.seed


def first_point(spec: SweepSpec, base: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration enqueued as the first TPE/random trial (paper defaults or the run config's values)."""
    if spec.search.method == "grid" or spec.search.first == "none":
        return None
    point: dict[str, Any] = {}
    defaults = RunConfig.model_validate({"data": {"name": "x"}}).run_dict()
    for key, param in spec.search.params.items():
        if not condition_holds(param.when, {**flatten(base), **point}):
            continue
        if spec.search.first == "paper":
            value = PAPER_DEFAULTS.get(key, get_key(defaults, key))
        else:
            value = get_key(base, key)
        if _inside(param, value):
            point[key] = value
    return point or None


def _inside(param: ParamSpec, value: Any) -> bool:
    if param.type == "categorical":
        return value in (param.choices or [])
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    low, high = param.bounds
    return low <= value <= high and (param.type != "int" or value == int(value))


def flat_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A nested run dict as ``{dotted key: value}``."""
    return flatten(raw)


def search_distributions(
    search: SearchSpec | Mapping[str, Any], keys: Sequence[str] | None = None
) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched key: what ``DefineByRun`` suggests from for tpe/random (so that
    trials a warm start copies in share the sampler's space), and the grid's values as choices for a grid.

    ``search`` may be the search section as ``sweep.json`` stores it; one that does not validate gives ``{}``.
    ``keys``: only these (those the search does not name are left out).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(search, SearchSpec):
        try:
            search = SearchSpec.model_validate(search)
        except ValidationError:
            return {}
    dists: dict[str, BaseDistribution] = {}
    if search.method == "grid":
        dists = {key: CategoricalDistribution(values) for key, values in (search.grid or {}).items()}
    for key, p in search.params.items():
        if p.type == "categorical":
            dists[key] = CategoricalDistribution(p.choices or [])
        elif p.type == "int":
            low, high = p.bounds
            dists[key] = IntDistribution(int(low), int(high), log=p.log, step=int(p.step or 1))
        else:
            dists[key] = FloatDistribution(*p.bounds, log=p.log, step=p.step)
    return dists if keys is None else {k: dists[k] for k in keys if k in dists}


def match_choice(value: Any, choices: Sequence[Any]) -> Any:
    """The choice equal to ``value`` (numbers compared with a tolerance: CSV round trips), or None."""
    for c in choices:
        if c == value:
            return c
        if isinstance(c, (int, float)) and not isinstance(c, bool) and isinstance(value, (int, float)):
            if math.isclose(float(c), float(value), rel_tol=1e-9, abs_tol=1e-12):
                return c
        if isinstance(c, str) and str(value) == c:
            return c
    return None
