"""Which r and M (and tau, encoder) to use, how sure we are, and whether the best M grows with r: the sweep read
and measured here, the choice made in ``simmtm.verdict.recommendation``.

The recommendation is the centre of the best *neighbourhood*, not the single best trial: a lucky seed should not
decide it. A neighbourhood holds the finished trials whose numeric parameters lie within ``radius`` (a fraction of
the searched range, on a log scale where the parameter was searched on one) of a centre trial and whose categorical
parameters are equal to it; in a grid sweep it is one cell of the grid (its repeats). This module works out which
trials are near which, the recommended values, the edges of the searched range (``simmtm.analysis.edges``), the
M-versus-r relation (``simmtm.analysis.best_m``), the seed noise (``simmtm.analysis.noise``) and the r x M surface
(``simmtm.analysis.surface``); the verdict layer picks the neighbourhood, bootstraps its mean and stability, gates
the advice to widen on the seed noise, and lets a confirmation stage's verdict decide. ``Recommendation`` is the one
type that ``simmtm.recommend``, ``simmtm recommend --json`` and best.yaml share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.best_m import m_vs_r
from simmtm.analysis.edges import find_edges, inside_groups, unit
from simmtm.analysis.load import ENCODER_KEY, M_KEY, R_KEY, TAU_KEY, Sweep
from simmtm.analysis.noise import seed_noise
from simmtm.analysis.param_space import param_value
from simmtm.analysis.surface import sweep_surface_noise
from simmtm.config.keys import apply_params
from simmtm.config.schema import RunConfig, parse_config
from simmtm.errors import UserError
from simmtm.tuning.outputs import write_recommended_yaml
from simmtm.verdict.recommendation import (
    MIN_FINISHED,
    Recommendation,
    choose_neighbourhood,
    surface_ties,
    too_few,
    with_confirmation,
)
from simmtm.verdict.widening import gate_edges

__all__ = [
    "Recommendation",
    "recommend",
    "m_vs_r",
    "best_config",
    "write_best_config",
    "MIN_FINISHED",
]

logger = logging.getLogger(__name__)


def recommend(
    sweep: Sweep,
    *,
    radius: float = 0.15,
    min_support: int = 3,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    edge_fraction: float = 0.1,
) -> Recommendation:
    """Recommend parameters from a sweep's finished trials (seeded: the same sweep gives the same answer)."""
    done = sweep.finished
    n = len(done)
    noise = asdict(seed_noise(sweep))
    base: dict[str, Any] = dict(
        metric=sweep.metric, mode=sweep.mode, n_finished=n, confidence=confidence, fixed=_fixed(sweep), seed_noise=noise
    )
    if n < MIN_FINISHED:
        return with_confirmation(too_few(sweep.counts(), **base), sweep.confirmation)
    params = [p for p in sweep.params if p in sweep.distributions and done[p].notna().all()]
    scores = done["score"].to_numpy(float)
    good = sweep.sign * scores  # higher is better
    near, how = _neighbours(done, params, sweep, radius)
    chosen = choose_neighbourhood(
        near, scores, sweep.sign, min_support=min_support, confidence=confidence, n_boot=n_boot, seed=seed
    )
    values = _recommended_values(sweep, params, chosen.members, chosen.centre, how)
    edges = find_edges(values, sweep.distributions, how, edge_fraction)
    inside = inside_groups(edges, done, sweep, good, edge_fraction) if noise["sd"] is not None else {}
    best_row = done.iloc[int(np.argmax(good))]
    rec = Recommendation(
        "ok",
        "",
        params=values,
        expected_score=chosen.expected,
        ci=chosen.ci,
        n_support=len(chosen.members),
        neighbourhood=how,
        stability=chosen.stability,
        best_trial={
            "trial_id": best_row["trial_id"],
            "score": float(best_row["score"]),
            "params": sweep.params_of(best_row),
        },
        edges=gate_edges(
            edges,
            inside,
            expected=float(good[chosen.members].mean()),
            n_members=len(chosen.members),
            confidence=confidence,
            noise=noise["sd"],
        ),
        m_vs_r=m_vs_r(sweep, n_boot=n_boot, seed=seed, confidence=confidence),
        surface=_surface_ties(sweep, values),
        **base,
    )
    return with_confirmation(replace(rec, message="; ".join(rec.summary()[:2])), sweep.confirmation)


def _recommended_values(
    sweep: Sweep, params: list[str], members: np.ndarray, centre: int, how: Mapping[str, str]
) -> dict[str, Any]:
    """Each searched parameter's recommended value, from the centre trial and its neighbourhood's ``members``."""
    done = sweep.finished
    values = {
        p: _centre_value(done[p].iloc[members], done[p].iloc[centre], sweep.distributions[p], how[p]) for p in params
    }
    for p in sweep.params:  # conditional parameters: from the members that have them
        have = done[p].iloc[members].dropna() if p in sweep.distributions and p not in values else None
        if have is not None and not have.empty:
            dist = sweep.distributions[p]
            numeric = isinstance(dist, (FloatDistribution, IntDistribution))
            values[p] = _centre_value(have, have.mode().iloc[0], dist, "numeric" if numeric else "same value")
    return values


def _surface_ties(sweep: Sweep, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """How many r x M cells tie with the best within seed noise, and whether the recommended cell is one of them
    (None unless r and M were both searched with 2+ seeds in some cell)."""
    surface = sweep_surface_noise(sweep)
    if surface is None or surface.noise_sd is None:
        return None
    cell = (round(float(values[R_KEY]), 6), int(values[M_KEY])) if R_KEY in values and M_KEY in values else None
    return surface_ties(
        tied=surface.tied,
        n_cells=surface.n_cells,
        cell=cell,
        noise_sd=surface.noise_sd,
        n_runs=surface.n_runs,
        indistinct=surface.indistinct,
        anova_p=surface.anova_p,
        ratio=surface.ratio,
        metric=sweep.metric,
    )


def _fixed(sweep: Sweep) -> dict[str, Any]:
    return {
        k: sweep.fixed_value(k)
        for k in (R_KEY, M_KEY, TAU_KEY, ENCODER_KEY)
        if k not in sweep.params and sweep.fixed_value(k) is not None
    }


def _is_levels(dist: BaseDistribution, sweep: Sweep) -> bool:
    """Judge this parameter level by level (a grid, or categorical) rather than by distance."""
    return isinstance(dist, CategoricalDistribution) or sweep.method == "grid"


def _neighbours(
    done: pd.DataFrame, params: list[str], sweep: Sweep, radius: float
) -> tuple[np.ndarray, dict[str, str]]:
    """near[i, j]: trial j lies in the neighbourhood centred on trial i."""
    n = len(done)
    near = np.ones((n, n), dtype=bool)
    how = {}
    for p in params:
        dist = sweep.distributions[p]
        col = done[p]
        if _is_levels(dist, sweep) or not isinstance(dist, (FloatDistribution, IntDistribution)):
            keys = col.map(str).to_numpy()
            near &= keys[:, None] == keys[None, :]
            how[p] = "same value"
        else:
            u = unit(col.to_numpy(), dist)
            near &= np.abs(u[:, None] - u[None, :]) <= radius + 1e-12
            how[p] = f"within {radius:.0%} of the searched range" + (" (log scale)" if dist.log else "")
    return near, how


def _centre_value(members: pd.Series, centre: Any, dist: BaseDistribution, how: str) -> Any:
    """The recommended value: the centre's own value for levels, the members' median for numeric neighbourhoods."""
    if how == "same value" or not isinstance(dist, (FloatDistribution, IntDistribution)):
        return param_value(centre, dist)
    if dist.log:
        value = float(np.exp(np.median(np.log(members.astype(float)))))
    else:
        value = float(np.median(members.astype(float)))
    value = min(max(value, float(dist.low)), float(dist.high))
    if isinstance(dist, IntDistribution):
        return int(round(value))
    return float(f"{value:.3g}") if dist.log else round(value, 3)


def best_config(sweep: Sweep, rec: Recommendation) -> RunConfig:
    """The sweep's run config with the recommended parameters set (validated; no search/tune/resources)."""
    if rec.status != "ok":
        raise UserError(f"{sweep.path}: cannot write a run config: {rec.message}")
    if not sweep.run_config:
        raise UserError(f"{sweep.path / 'sweep.yaml'}: missing or empty; it is the base of the recommended run config")
    raw = apply_params(sweep.run_config, rec.params)
    return parse_config(raw, source=f"{sweep.path / 'sweep.yaml'} with the recommended parameters")


def write_best_config(sweep: Sweep, rec: Recommendation, path: str | Path) -> RunConfig:
    """Write the recommended run config as YAML, with a header saying where it comes from and how to run it."""
    config = best_config(sweep, rec)
    write_recommended_yaml(
        Path(path), config.run_dict(), sweep_dir=sweep.path, params=rec.params_line(), evidence=rec.evidence()
    )
    return config
