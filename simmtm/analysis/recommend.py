"""Which r and M (and tau, encoder) to use, how sure we are, and whether the best M grows with r.

The recommendation is the centre of the best *neighbourhood*, not the single best trial: a lucky seed should not
decide it. A neighbourhood holds the finished trials whose numeric parameters lie within ``radius`` (a fraction of
the searched range, on a log scale where the parameter was searched on one) of a centre trial and whose categorical
parameters are equal to it; in a grid sweep it is one cell of the grid (its repeats). Its mean score, over at least
``min_support`` trials where the data allow, is the expected score; the confidence interval bootstraps that mean
over the neighbourhood's trials (their seeds differ). ``stability`` re-runs the whole choice on bootstrap
resamples of all trials and counts how often it lands in the same neighbourhood.

The M-versus-r relation fits a quadratic response surface of the score over r and M (the other parameters as
covariates); where it peaks in M, the best M at each r lies on a line whose slope, bootstrapped over trials, is
reported. A slope whose interval excludes 0 says the best M changes with r on this data. (Taking the best M of each
bin of r and bootstrapping it overstates the certainty when cells hold one or two trials: the same lucky trial wins
again in most resamples. A fitted surface lets every trial inform the slope.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.levels import levels_of
from simmtm.analysis.load import ENCODER_KEY, M_KEY, R_KEY, SHORT_NAMES, TAU_KEY, Sweep, param_value
from simmtm.config import RunConfig, parse_config
from simmtm.config_keys import apply_params
from simmtm.confirmation import beyond_official_r
from simmtm.errors import UserError
from simmtm.sweep.outputs import write_run_yaml

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
MIN_M_CHANGE = 0.5  # a best M moving less than this over the searched r range counts as flat, however certain


@dataclass
class Recommendation:
    """What to run next; ``status`` is "insufficient" (and ``message`` says why) when the sweep cannot tell yet."""

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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out

    def summary(self) -> list[str]:
        """Readable lines for the terminal and the report; with a confirmation, its sentence is the last line."""
        if self.sentence is not None:
            lines = [f"search (one seed a trial, exploratory): {line}" for line in self.search]
            if self.confirmation and self.confirmation.get("seed_spread", {}).get("sd") is not None:
                spread = self.confirmation["seed_spread"]
                lines.append(
                    f"seed noise: {spread['sd']:.3g} SD of {self.metric} between seeds "
                    f"({spread['n_runs']} confirmation runs)"
                )
            if self.probe_check:
                lines.append(self.probe_check["line"])
            return [*lines, self.sentence]
        return self._search_summary()

    def _search_summary(self) -> list[str]:
        if self.status != "ok":
            return [self.message]
        values = ", ".join(f"{SHORT_NAMES.get(k, k)}={_fmt(v)}" for k, v in self.params.items())
        fixed = ", ".join(f"{SHORT_NAMES.get(k, k)}={_fmt(v)}" for k, v in self.fixed.items())
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.5g}"


# --- the recommendation ----------------------------------------------------------------------------------------


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
    base: dict[str, Any] = dict(
        metric=sweep.metric, mode=sweep.mode, n_finished=n, confidence=confidence, fixed=_fixed(sweep)
    )
    if n < MIN_FINISHED:
        counts = sweep.counts()
        others = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v and k != "COMPLETE")
        return _with_confirmation(
            Recommendation(
                "insufficient",
                f"no recommendation: {n} finished trial(s)"
                f"{' (' + others + ')' if others else ''}; it needs at least {MIN_FINISHED}",
                **base,
            ),
            sweep,
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

    values = {
        p: _centre_value(done[p].iloc[members], done[p].iloc[centre], sweep.distributions[p], how[p]) for p in params
    }
    for p in sweep.params:  # conditional parameters: from the members that have them
        have = done[p].iloc[members].dropna() if p in sweep.distributions and p not in values else None
        if have is not None and not have.empty:
            dist = sweep.distributions[p]
            numeric = isinstance(dist, (FloatDistribution, IntDistribution))
            values[p] = _centre_value(have, have.mode().iloc[0], dist, "numeric" if numeric else "same value")
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
        edges=_edges(values, sweep.distributions, how, edge_fraction),
        m_vs_r=m_vs_r(sweep, n_boot=n_boot, seed=seed, confidence=confidence),
        **base,
    )
    rec.edges = _gate_edges(rec.edges, done, sweep, members, edge_fraction, confidence=confidence)
    rec.surface = _surface_ties(sweep, values)
    rec.message = "; ".join(rec.summary()[:2])
    return _with_confirmation(rec, sweep)


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
    rec.probe_check = conf.get("probe_check")
    if not verdict:
        return rec
    rec.search = rec._search_summary()
    rec.confirmation = verdict
    rec.sentence = verdict["sentence"]
    rec.message = verdict["sentence"]
    if verdict["status"] != "insufficient":
        rec.status = "ok"
        rec.params = dict(verdict["recommended"])
    return rec


def _fixed(sweep: Sweep) -> dict[str, Any]:
    return {
        k: sweep.fixed_value(k)
        for k in (R_KEY, M_KEY, TAU_KEY, ENCODER_KEY)
        if k not in sweep.params and sweep.fixed_value(k) is not None
    }


def _is_levels(dist: BaseDistribution, sweep: Sweep) -> bool:
    """Judge this parameter level by level (a grid, or categorical) rather than by distance."""
    return isinstance(dist, CategoricalDistribution) or sweep.method == "grid"


def _unit(values: np.ndarray, dist: BaseDistribution) -> np.ndarray:
    """Position in the searched range, 0 at the low bound and 1 at the high one (log scale where searched so)."""
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low, high, v = float(dist.low), float(dist.high), values.astype(float)
    if dist.log:
        low, high, v = math.log(low), math.log(high), np.log(v)
    return (v - low) / (high - low) if high > low else np.zeros_like(v)


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
            u = _unit(col.to_numpy(), dist)
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


# --- edges of the searched space -------------------------------------------------------------------------------


def _edges(
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
                u = float(_unit(np.array([v]), dist)[0])
                side = "low" if u <= fraction else "high" if u >= 1 - fraction else None
        if side is not None:
            out.append(_edge(p, side, v, low, high, log=getattr(dist, "log", False)))
    return out


def search_noise(done: pd.DataFrame, sweep: Sweep) -> float | None:
    """The seed-to-seed SD of the score: the confirmation's paired runs, else the search's own repeats."""
    from simmtm.stats import seed_spread

    sd = ((sweep.confirmation or {}).get("seed_spread") or {}).get("sd")
    if sd is not None:
        return float(sd)
    keys = [p for p in sweep.params if p in done]
    return seed_spread(_by_configuration(done, keys, done["score"].to_numpy(float), range(len(done)))).sd


def _by_configuration(done: pd.DataFrame, keys: list[str], values: np.ndarray, rows: Any) -> dict[tuple, list[float]]:
    """``values`` of the given ``rows`` grouped by their searched parameters (repeats of a configuration together)."""
    labels = done[keys].astype(str).to_numpy()
    groups: dict[tuple, list[float]] = {}
    for i in rows:
        groups.setdefault(tuple(labels[i]), []).append(float(values[i]))
    return groups


def _gate_edges(
    edges: list[dict[str, Any]],
    done: pd.DataFrame,
    sweep: Sweep,
    members: np.ndarray,
    fraction: float,
    *,
    confidence: float,
) -> list[dict[str, Any]]:
    """Advise widening a range only when the edge beats the inside of the range beyond seed noise.

    The recommended neighbourhood's mean is compared with the best configuration whose value of that parameter lies
    inside the range (its mean over repeats); within z * SD * sqrt(1/n + 1/n') of it, the edge is a tie and the
    advice becomes "no need to widen". Without any noise estimate the advice stands, saying so.
    """
    from scipy.stats import norm

    noise = search_noise(done, sweep)
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
        groups = _by_configuration(done, [p for p in sweep.params if p in done], good, np.flatnonzero(inside))
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
                    "message": f"the best {name} ({_fmt(edge['value'])}) lies at the {edge['side']} bound, but "
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
        u = _unit(numeric, dist)
        edge_u = float(_unit(np.array([float(edge["value"])]), dist)[0])
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
        message=f"{name}={_fmt(value)} is at the {where} value it can take; nothing to widen",
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
        message=f"the best {name} ({_fmt(value)}) lies at the {which} bound {_fmt(bound)} of the searched range; "
        f"widen the search: {verb} the {which} bound to about {_fmt(target)}",
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


# --- M against r -----------------------------------------------------------------------------------------------


def _best_m_points(
    r_idx: np.ndarray, m_idx: np.ndarray, good: np.ndarray, r_centres: np.ndarray, m_centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per r level that tried at least two M levels: (r centre, best M, trials)."""
    nr, nm = len(r_centres), len(m_centres)
    sums = np.zeros((nr, nm))
    counts = np.zeros((nr, nm))
    np.add.at(sums, (r_idx, m_idx), good)
    np.add.at(counts, (r_idx, m_idx), 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    keep = (counts > 0).sum(axis=1) >= 2
    best = m_centres[np.argmax(means, axis=1)]
    return r_centres[keep], best[keep], counts.sum(axis=1)[keep]


def m_vs_r(
    sweep: Sweep, *, n_bins: int = 5, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """The fitted relation between the best M and r, with the slope's bootstrap interval.

    A quadratic response surface is fitted to the score over (r, M), with the other searched parameters as
    covariates: score ~ r + M + r^2 + M^2 + r*M + .... Where it curves down in M (a best M inside the range), the
    best M at each r lies on the line M*(r) = -(b_M + b_rM r) / (2 b_MM), whose slope -b_rM / (2 b_MM) is the
    answer; the bootstrap refits it on resamples of the trials. ``points`` are, for display, the best M per bin of r.
    """
    if R_KEY not in sweep.distributions or M_KEY not in sweep.distributions:
        return {"status": "not searched", "message": "r and M were not both searched"}
    done = sweep.finished.dropna(subset=[R_KEY, M_KEY]).reset_index(drop=True)
    good = sweep.sign * done["score"].to_numpy(float)
    r_levels = levels_of(done[R_KEY], sweep.distributions[R_KEY], n_bins=n_bins)
    m_levels = levels_of(done[M_KEY], sweep.distributions[M_KEY], n_bins=n_bins)
    r, m, counts = _best_m_points(r_levels.index, m_levels.index, good, r_levels.centres, m_levels.centres)
    out: dict[str, Any] = {
        "method": "quadratic response surface over r and M (other parameters as covariates)",
        "points": [{"r": float(a), "best_M": float(b), "n_trials": int(c)} for a, b, c in zip(r, m, counts)],
        "confidence": confidence,
        "slope": None,
        "intercept": None,
        "ci": None,
    }
    X, scale = _surface_design(done, sweep)  # scale: (r_low, r_span, m_low, m_span)
    if len(done) < X.shape[1] + 3 or np.linalg.matrix_rank(X) < X.shape[1]:
        return {
            **out,
            "status": "insufficient",
            "message": f"{len(done)} finished trials over {len(set(zip(done[R_KEY], done[M_KEY])))} (r, M) pairs: "
            f"too few to fit how the score curves in r and M ({X.shape[1]} coefficients)",
        }
    line = _ridge_line(np.linalg.lstsq(X, good, rcond=None)[0], scale)
    if line is None:
        return {
            **out,
            "status": "no interior best M",
            "message": "at a fixed r the fitted score does not peak inside the searched range of M (the best M sits at "
            "an end of it), so there is no best-M line to fit; see the r x M heatmap",
        }
    slope, intercept = line
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(done), size=len(done))
        Xb = X[idx]
        if np.linalg.matrix_rank(Xb) < X.shape[1]:
            continue
        b = _ridge_line(np.linalg.lstsq(Xb, good[idx], rcond=None)[0], scale)
        if b is not None:
            slopes.append(b[0])
    share = len(slopes) / n_boot
    out.update(slope=float(slope), intercept=float(intercept), peaked_share=share)
    if share < 0.5:
        return {
            **out,
            "status": "insufficient",
            "message": f"slope {slope:.3g} M per unit r, but only {share:.0%} of bootstrap resamples show a best M "
            "inside the range: too uncertain for an interval",
        }
    a = (1 - confidence) / 2
    lo, hi = float(np.quantile(slopes, a)), float(np.quantile(slopes, 1 - a))
    per = f"{slope / 10:+.2g} M per +0.1 in r ({confidence:.0%} CI {lo / 10:+.2g} to {hi / 10:+.2g})"
    across = slope * scale[1]  # change of the best M over the searched range of r
    if (lo > 0 or hi < 0) and abs(across) < MIN_M_CHANGE:
        verdict, message = (
            "flat",
            (
                f"the best M hardly changes with r: {per}, {across:+.2g} across the searched range of r "
                f"(less than {MIN_M_CHANGE} masked series)"
            ),
        )
    elif lo > 0:
        verdict, message = "grows", f"on this data the best M grows with r: {per}"
    elif hi < 0:
        verdict, message = "shrinks", f"on this data the best M shrinks as r grows: {per}"
    else:
        verdict, message = (
            "unclear",
            (f"no clear relation: {per}; the interval includes 0, so this data does not show M changing with r"),
        )
    if share < 0.9:
        message += f" ({share:.0%} of resamples had a best M inside the range)"
    return {**out, "status": "ok", "ci": [lo, hi], "verdict": verdict, "message": message}


def _range(values: pd.Series, dist: BaseDistribution) -> tuple[float, float]:
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        return float(dist.low), float(dist.high)
    v = values.astype(float)
    return float(v.min()), float(v.max())


def _surface_design(done: pd.DataFrame, sweep: Sweep) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Columns 1, u, v, u^2, v^2, u*v (u, v: r and M scaled to [0, 1]), then the covariates."""
    r_low, r_high = _range(done[R_KEY], sweep.distributions[R_KEY])
    m_low, m_high = _range(done[M_KEY], sweep.distributions[M_KEY])
    r_span, m_span = max(r_high - r_low, 1e-12), max(m_high - m_low, 1e-12)
    u = (done[R_KEY].astype(float).to_numpy() - r_low) / r_span
    v = (done[M_KEY].astype(float).to_numpy() - m_low) / m_span
    cols = [np.ones_like(u), u, v, u * u, v * v, u * v]
    for p in sweep.params:
        if p in (R_KEY, M_KEY) or p not in sweep.distributions or done[p].isna().any() or done[p].nunique() < 2:
            continue
        dist = sweep.distributions[p]
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            x = _unit(done[p].to_numpy(), dist)
            cols.extend([x, x * x] if done[p].nunique() > 2 else [x])
        else:
            keys = done[p].map(str)
            cols.extend((keys == level).to_numpy(float) for level in sorted(keys.unique())[1:])
    return np.column_stack(cols), (r_low, r_span, m_low, m_span)


def _ridge_line(beta: np.ndarray, scale: tuple[float, float, float, float]) -> tuple[float, float] | None:
    """(slope, intercept) of M*(r) in natural units, or None where the surface does not peak in M."""
    r_low, r_span, m_low, m_span = scale
    b_v, b_vv, b_uv = beta[2], beta[4], beta[5]
    if b_vv >= 0:  # "good" is higher-better: a peak in M needs negative curvature
        return None
    slope_unit = -b_uv / (2 * b_vv)  # dv*/du
    ends = (-b_v / (2 * b_vv), -(b_v + b_uv) / (2 * b_vv))  # v* at the lowest and highest searched r
    if min(ends) > 1 or max(ends) < 0:  # the peak lies outside the searched M range at every r
        return None
    v0 = -(b_v + b_uv * (0 - r_low) / r_span) / (2 * b_vv)  # v* at r = 0
    return float(slope_unit * m_span / r_span), float(m_low + m_span * v0)


# --- the run config --------------------------------------------------------------------------------------------


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
    path = Path(path)
    ci = f" ({rec.confidence:.0%} CI {_score(rec.ci[0])} to {_score(rec.ci[1])})" if rec.ci else ""
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in rec.params.items())
    write_run_yaml(
        path,
        config.run_dict(),
        [
            f"{path.name}: the run config recommended by `simmtm recommend {sweep.path}`",
            values,
            rec.sentence
            or f"expected {rec.metric} {_score(rec.expected_score)}{ci} from {rec.n_support} of {rec.n_finished} "
            "finished trials",
            f"Run it:   simmtm pretrain {path} --out runs/{path.stem}",
        ],
    )
    return config
