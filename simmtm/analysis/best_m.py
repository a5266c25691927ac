"""Whether the best M changes with r: a quadratic response surface over r and M, its ridge line, a bootstrap slope.

The fitted relation lets every trial inform the slope; taking the best M of each bin of r and bootstrapping it
overstates the certainty when cells hold one or two trials (the same lucky trial wins again in most resamples).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from simmtm.analysis.edges import unit
from simmtm.analysis.levels import levels_of
from simmtm.analysis.load import M_KEY, R_KEY, Sweep

__all__ = ["m_vs_r", "MIN_M_CHANGE"]

MIN_M_CHANGE = 0.5  # a best M moving less than this over the searched r range counts as flat, however certain


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
    slopes = _bootstrap_slopes(X, good, scale, n_boot=n_boot, rng=np.random.default_rng(seed))
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
    verdict, message = _slope_verdict(slope, lo, hi, slope * scale[1], confidence)
    if share < 0.9:
        message += f" ({share:.0%} of resamples had a best M inside the range)"
    return {**out, "status": "ok", "ci": [lo, hi], "verdict": verdict, "message": message}


def _bootstrap_slopes(
    X: np.ndarray, good: np.ndarray, scale: tuple[float, float, float, float], *, n_boot: int, rng: np.random.Generator
) -> list[float]:
    """The ridge line's slope refitted on ``n_boot`` resamples of the trials (those without a peak in M left out)."""
    slopes = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(X), size=len(X))
        Xb = X[idx]
        if np.linalg.matrix_rank(Xb) < X.shape[1]:
            continue
        b = _ridge_line(np.linalg.lstsq(Xb, good[idx], rcond=None)[0], scale)
        if b is not None:
            slopes.append(b[0])
    return slopes


def _slope_verdict(slope: float, lo: float, hi: float, across: float, confidence: float) -> tuple[str, str]:
    """How the best M moves with r, in words (``across``: its change over the searched range of r)."""
    per = f"{slope / 10:+.2g} M per +0.1 in r ({confidence:.0%} CI {lo / 10:+.2g} to {hi / 10:+.2g})"
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
    return verdict, message


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
            x = unit(done[p].to_numpy(), dist)
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
