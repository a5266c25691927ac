"""Which r and M (and tau, encoder) to use, how sure we are, and whether the best M grows with r.

The recommendation is the centre of the best *neighbourhood*, not the single best trial: a lucky seed should not
decide it. A neighbourhood holds the finished trials whose numeric parameters lie within ``radius`` (a fraction of
the searched range, on a log scale where the parameter was searched on one) of a centre trial and whose categorical
parameters are equal to it; in a grid sweep it is one cell of the grid (its repeats). Its mean score, over at least
``min_support`` trials where the data allow, is the expected score; the confidence interval bootstraps that mean
over the neighbourhood's trials (their seeds differ). ``stability`` re-runs the whole choice on bootstrap
resamples of all trials and counts how often it lands in the same neighbourhood.

With a confirmation stage, its verdict decides: the recommended parameters and the one sentence, with the
validation and test differences of the confirmed pair. The edges of the searched range (``simmtm.analysis.edges``),
the M-versus-r relation (``simmtm.analysis.best_m``) and the seed noise (``simmtm.analysis.noise``) have modules of
their own. ``Recommendation`` is the one type that ``simmtm.recommend``, ``simmtm recommend --json`` and best.yaml
share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.best_m import m_vs_r
from simmtm.analysis.edges import find_edges, fmt_value, gate_edges, unit
from simmtm.analysis.load import ENCODER_KEY, M_KEY, R_KEY, SHORT_NAMES, TAU_KEY, Sweep, param_value
from simmtm.analysis.noise import seed_noise
from simmtm.config.keys import apply_params
from simmtm.config.schema import RunConfig, parse_config
from simmtm.errors import UserError
from simmtm.tuning.outputs import write_recommended_yaml
from simmtm.verdict.confirmation import beyond_official_r

__all__ = [
    "Recommendation",
    "recommend",
    "m_vs_r",
    "best_config",
    "write_best_config",
    "MIN_FINISHED",
]

logger = logging.getLogger(__name__)

MIN_FINISHED = 2  # fewer finished trials: nothing to compare, no recommendation


@dataclass(frozen=True)
class Recommendation:
    """What to run next; ``status`` is "insufficient" (and ``message`` says why) when the sweep cannot tell yet.

    The one recommendation type: ``simmtm.recommend`` returns it, ``simmtm recommend --json`` prints ``to_dict()``
    and best.yaml's header quotes its ``sentence``.
    """

    status: Literal["ok", "insufficient"]
    message: str
    metric: str
    mode: str
    n_finished: int
    params: dict[str, Any] = field(default_factory=dict)  # recommended value per searched parameter
    fixed: dict[str, Any] = field(default_factory=dict)  # r, M, tau, encoder where the sweep did not search them
    expected_score: float | None = None
    ci: tuple[float, float] | None = None
    confidence: float = 0.95
    n_support: int = 0  # trials in the recommended neighbourhood
    neighbourhood: dict[str, str] = field(default_factory=dict)  # per parameter: how "near" was judged
    stability: float | None = None  # share of bootstrap resamples that pick the same neighbourhood
    best_trial: dict[str, Any] = field(default_factory=dict)  # the single best trial, for reference
    edges: list[dict[str, Any]] = field(default_factory=list)  # parameters whose best value sits at a bound
    m_vs_r: dict[str, Any] = field(default_factory=dict)
    # From the confirmation stage (confirmation.json), when the sweep ran one: its verdict decides ``params``.
    sentence: str | None = None  # the one sentence the sweep's last line, the report and this command print
    confirmation: dict[str, Any] | None = None  # the verdict: paired differences, seeds, seed spread
    probe_check: dict[str, Any] | None = None  # the rung score's rank correlation with the final score
    search: list[str] = field(default_factory=list)  # the search-only lines (one seed a trial: exploratory)
    # A grid with 2+ seeds a cell: how many r x M cells tie with the best within seed noise (simmtm.analysis.surface)
    surface: dict[str, Any] | None = None
    seed_noise: dict[str, Any] = field(default_factory=dict)  # the sweep's one noise figure (analysis.noise)
    best_yaml: str | None = None  # the run config written with it (simmtm.recommend(..., write=...))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out

    def summary(self) -> list[str]:
        """Readable lines for the terminal and the report; with a confirmation, its sentence is the last line."""
        if self.sentence is not None:
            lines = [f"search (one seed a trial, exploratory): {line}" for line in self.search]
            if self.seed_noise.get("sd") is not None:
                lines.append(
                    f"seed noise: {self.seed_noise['sd']:.3g} SD of {self.metric} between seeds "
                    f"({self.seed_noise['n_runs']} runs)"
                )
            agrees = (self.confirmation or {}).get("test_agrees")
            if agrees is not None:
                said = "agrees with" if agrees else "does not confirm"
                lines.append(f"test split (scored once, nothing selected on it): {said} the validation verdict")
            if self.probe_check:
                lines.append(self.probe_check["line"])
            return [*lines, self.sentence]
        return self._search_summary()

    def _search_summary(self) -> list[str]:
        if self.status != "ok":
            return [self.message]
        values = ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(v)}" for k, v in self.params.items())
        fixed = ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(v)}" for k, v in self.fixed.items())
        ci = (
            f" ({self.confidence:.0%} CI {_score(self.ci[0])} to {_score(self.ci[1])})"
            if self.ci
            else " (one trial: no interval)"
        )
        lines = [
            f"recommended: {values}"
            + (f" (not searched: {fixed})" if fixed else "")
            + (" [r beyond the official code's reachable 0.75]" if beyond_official_r(self.params) else ""),
            f"expected {self.metric}: {_score(self.expected_score)}{ci}, from {self.n_support} of {self.n_finished} "
            "finished trials",
        ]
        if self.stability is not None:
            lines.append(f"stability: {self.stability:.0%} of bootstrap resamples pick the same neighbourhood")
        lines.extend(f"at the edge: {e['message']}" for e in self.edges)
        if self.surface is not None:
            lines.append(self.surface["message"])
        if self.m_vs_r.get("message"):
            lines.append(f"M vs r: {self.m_vs_r['message']}")
        return lines


def _score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.5g}"


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
        others = ", ".join(f"{v} {k.lower()}" for k, v in sweep.counts().items() if v and k != "COMPLETE")
        why = f"no recommendation: {n} finished trial(s){' (' + others + ')' if others else ''}"
        return _with_confirmation(
            Recommendation("insufficient", f"{why}; it needs at least {MIN_FINISHED}", **base), sweep
        )
    params = [p for p in sweep.params if p in sweep.distributions and done[p].notna().all()]
    rng = np.random.default_rng(seed)
    scores = done["score"].to_numpy(float)
    good = sweep.sign * scores  # higher is better
    near, how = _neighbours(done, params, sweep, radius)
    support = near.sum(axis=1)
    need = min(min_support, int(support.max()))
    centre = _pick(near, good, need)
    members = np.flatnonzero(near[centre])
    member_scores = scores[members]
    expected = float(member_scores.mean())
    ci = _bootstrap_mean_ci(member_scores, confidence, n_boot, rng) if len(members) > 1 else None
    stability = _stability(near, good, need, centre, n_boot=min(n_boot, 300), rng=rng)

    values = _recommended_values(sweep, params, members, centre, how)
    edges = find_edges(values, sweep.distributions, how, edge_fraction)
    best_row = done.iloc[int(np.argmax(good))]
    rec = Recommendation(
        "ok",
        "",
        params=values,
        expected_score=expected,
        ci=ci,
        n_support=len(members),
        neighbourhood=how,
        stability=stability,
        best_trial={
            "trial_id": best_row["trial_id"],
            "score": float(best_row["score"]),
            "params": sweep.params_of(best_row),
        },
        edges=gate_edges(edges, done, sweep, members, edge_fraction, confidence=confidence, noise=noise["sd"]),
        m_vs_r=m_vs_r(sweep, n_boot=n_boot, seed=seed, confidence=confidence),
        surface=_surface_ties(sweep, values),
        **base,
    )
    return _with_confirmation(replace(rec, message="; ".join(rec.summary()[:2])), sweep)


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
    from simmtm.analysis.surface import sweep_surface_noise

    surface = sweep_surface_noise(sweep)
    if surface is None or surface.noise_sd is None:
        return None
    cell = (round(float(values[R_KEY]), 6), int(values[M_KEY])) if R_KEY in values and M_KEY in values else None
    tied, n = len(surface.tied), surface.n_cells
    noise = f"seed noise SD {surface.noise_sd:.3g} of {sweep.metric}, {surface.n_runs} runs"
    if surface.indistinct or tied == n:
        anova = f", ANOVA p = {surface.anova_p:.2g}" if surface.anova_p is not None else ""
        message = (
            f"r x M: the {n} cells cannot be told apart from seed noise ({noise}{anova}; {tied} tie with the "
            "best): the recommended cell is a pick among equals, not a finding"
        )
    elif cell in surface.tied:
        message = f"r x M: {tied} of {n} cells tie with the best within seed noise ({noise}); the recommended is one"
    else:
        message = (
            f"r x M: {tied} of {n} cells tie with the best within seed noise ({noise}); the recommended neighbourhood "
            "is not among them (it pools nearby cells)"
        )
    return {
        "message": message,
        "n_tied": tied,
        "n_cells": n,
        "recommended_tied": None if cell is None else cell in surface.tied,
        "indistinct": surface.indistinct,
        "noise_sd": surface.noise_sd,
        "spread_over_noise": surface.ratio,
    }


def _with_confirmation(rec: Recommendation, sweep: Sweep) -> Recommendation:
    """Let the confirmation's verdict decide: its recommended parameters and its sentence (the search's own pick
    stays in ``search``, as exploratory lines)."""
    conf = sweep.confirmation or {}
    verdict = conf.get("verdict")
    if not verdict:
        return replace(rec, probe_check=conf.get("probe_check"))
    decided = verdict["status"] != "insufficient"
    return replace(
        rec,
        probe_check=conf.get("probe_check"),
        search=rec._search_summary(),
        confirmation=verdict,
        sentence=verdict["sentence"],
        message=verdict["sentence"],
        status="ok" if decided else rec.status,
        params=dict(verdict["recommended"]) if decided else rec.params,
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


def _pick(near: np.ndarray, good: np.ndarray, need: int) -> int:
    """The centre whose neighbourhood (of at least ``need`` trials) has the best mean; ties: more support."""
    support = near.sum(axis=1)
    means = (near @ good) / np.maximum(support, 1)
    means = np.where(support >= need, means, -np.inf)
    order = np.lexsort((-support, -means))  # best mean first, then most support
    return int(order[0])


def _bootstrap_mean_ci(x: np.ndarray, confidence: float, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _stability(
    near: np.ndarray, good: np.ndarray, need: int, centre: int, *, n_boot: int, rng: np.random.Generator
) -> float | None:
    """Share of bootstrap resamples of all trials whose chosen centre lies in the neighbourhood of ``centre``."""
    n = len(good)
    if n < 3:
        return None
    draws = rng.integers(0, n, size=(n_boot, n))  # the same numbers as n_boot draws of n, one after the other
    # A resample as counts: trial j drawn counts[j] times. A drawn centre's support and mean in the resample are then
    # near @ counts and near @ (counts * good), for all resamples in one matrix product (row blocks bound the memory),
    # not an n x n sub-matrix per resample: O(n^2) work a resample in BLAS instead of in fancy indexing.
    counts = np.zeros((n, n_boot))
    for b, idx in enumerate(draws):
        counts[:, b] = np.bincount(idx, minlength=n)
    support, total = np.empty((n, n_boot)), np.empty((n, n_boot))
    weighted = counts * good[:, None]
    for start in range(0, n, 1024):
        rows = near[start : start + 1024].astype(float)
        support[start : start + 1024], total[start : start + 1024] = rows @ counts, rows @ weighted
    hits = 0
    for b, idx in enumerate(draws):
        # candidates in order of first draw: ties go to the earlier one, as _pick over the resample's rows did
        _, first = np.unique(idx, return_index=True)
        cand = idx[np.sort(first)]
        sup = support[cand, b]
        means = np.where(sup >= min(need, int(sup.max())), total[cand, b] / np.maximum(sup, 1), -np.inf)
        k = cand[np.lexsort((-sup, -means))[0]]
        hits += bool(near[centre, k])
    return hits / n_boot


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
    ci = f" ({rec.confidence:.0%} CI {_score(rec.ci[0])} to {_score(rec.ci[1])})" if rec.ci else ""
    evidence = (
        rec.sentence
        or f"expected {rec.metric} {_score(rec.expected_score)}{ci} from {rec.n_support} of {rec.n_finished} "
        "finished trials"
    )
    params = ", ".join(f"{k}={fmt_value(v)}" for k, v in rec.params.items())
    write_recommended_yaml(Path(path), config.run_dict(), sweep_dir=sweep.path, params=params, evidence=evidence)
    return config
