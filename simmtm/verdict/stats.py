"""The statistics behind a trustworthy r/M recommendation: seed noise, paired differences, rank correlation, ties.

Everything here works on plain scores (floats) and knows nothing of sweeps, so it is tested on its own:

- ``seed_spread``: the seed-to-seed standard deviation of a score, pooled over configurations that were each run
  with several training seeds (what "noise" means when two configurations are compared).
- ``paired_difference``: how much configuration A beats B when both ran with the same seeds, with a Student-t
  interval on the per-seed differences (and a bootstrap one beside it). "Beats" is always in the better
  direction: positive means A is better, whether the score is minimised or maximised.
- ``spearman``: rank correlation with a Fisher-z interval (the probe-versus-final check).
- ``tied_with_best``: which configurations cannot be told apart from the best one given the seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "SeedSpread",
    "seed_spread",
    "PairedDifference",
    "paired_difference",
    "RankCorrelation",
    "spearman",
    "tied_with_best",
]

Mode = Literal["min", "max"]


def _sign(mode: Mode) -> float:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


# --- seed noise ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSpread:
    """Seed-to-seed standard deviation pooled over configurations; ``sd`` is None when no configuration has 2 runs."""

    sd: float | None
    n_configs: int  # configurations with at least two seeds
    n_runs: int  # runs in those configurations
    df: int  # degrees of freedom of the pooled estimate (n_runs - n_configs)

    def describe(self, digits: int = 4) -> str:
        if self.sd is None:
            return "seed noise not measured (no configuration ran with two seeds)"
        return (
            f"seed-to-seed spread (SD) {self.sd:.{digits}g}, from {self.n_runs} runs of {self.n_configs} "
            f"configuration(s)"
        )


def seed_spread(groups: Mapping[Any, Sequence[float]]) -> SeedSpread:
    """Pooled within-configuration SD: sqrt(sum of squared deviations from each group's mean / (N - groups))."""
    ss, runs, configs = 0.0, 0, 0
    for scores in groups.values():
        x = np.asarray([s for s in scores if s is not None and math.isfinite(s)], dtype=float)
        if len(x) < 2:
            continue
        ss += float(((x - x.mean()) ** 2).sum())
        runs += len(x)
        configs += 1
    df = runs - configs
    return SeedSpread(sd=math.sqrt(ss / df) if df > 0 else None, n_configs=configs, n_runs=runs, df=df)


# --- paired differences ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """A minus B over paired seeds, as an improvement (positive: A is better), with its intervals."""

    mean: float
    ci: tuple[float, float] | None  # Student t on the per-seed differences; None with one pair
    ci_boot: tuple[float, float] | None  # bootstrap percentile interval of the mean difference
    sd: float | None  # SD of the per-seed differences
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        """A is better beyond seed noise: the whole interval lies above zero."""
        return self.ci is not None and self.ci[0] > 0


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, mode: Mode, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> PairedDifference:
    """How much A improves on B, seed by seed (``a[i]`` and ``b[i]`` ran with the same training seed)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired scores need two equally long, non-empty lists (got {len(x)} and {len(y)})")
    d = _sign(mode) * (x - y)  # positive: A better
    n, mean = len(d), float(d.mean())
    if n < 2:
        return PairedDifference(mean, None, None, None, n, confidence)
    sd = float(d.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    boot = (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))
    return PairedDifference(mean, (mean - half, mean + half), boot, sd, n, confidence)


# --- rank correlation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho of two scores over the same runs, with a Fisher-z interval (None below 4 runs)."""

    rho: float | None
    ci: tuple[float, float] | None
    n: int
    confidence: float

    def describe(self) -> str:
        if self.rho is None:
            return f"not measurable ({self.n} run(s) with both scores; needs 3)"
        ci = (
            f", {self.confidence:.0%} interval {self.ci[0]:+.2f} to {self.ci[1]:+.2f}"
            if self.ci
            else ", no interval below 4 runs"
        )
        return f"Spearman {self.rho:+.2f}{ci}, {self.n} runs"


def spearman(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95) -> RankCorrelation:
    """Spearman's rho; its interval transforms with Fisher's z and the standard error sqrt(1.06 / (n - 3))
    (Fieller, Hartley & Pearson 1957), which holds for rank correlations better than 1 / sqrt(n - 3)."""
    pairs = [
        (float(a), float(b))
        for a, b in zip(x, y)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    n = len(pairs)
    if n < 3:
        return RankCorrelation(None, None, n, confidence)
    u, v = np.array(pairs).T
    if np.ptp(u) == 0 or np.ptp(v) == 0:  # a constant score has no ranking
        return RankCorrelation(None, None, n, confidence)
    rho = float(_scipy_stats.spearmanr(u, v).statistic)
    if n < 4:
        return RankCorrelation(rho, None, n, confidence)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = float(_scipy_stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(1.06 / (n - 3))
    return RankCorrelation(rho, (math.tanh(z - half), math.tanh(z + half)), n, confidence)


# --- ties with the best ----------------------------------------------------------------------------------------


def tied_with_best(
    groups: Mapping[Any, Sequence[float]], *, mode: Mode, noise_sd: float | None = None, confidence: float = 0.95
) -> set[Any]:
    """The configurations (keys of ``groups``) that are statistically tied with the one of best mean score.

    A configuration is tied when its mean lies within the one-sided critical difference of the best mean:
    z * s * sqrt(1/n_best + 1/n), with s the seed-to-seed SD (``noise_sd``, else pooled from ``groups``). Without
    any noise estimate only the best itself is returned: nothing can be called a tie.
    """
    means = {k: float(np.mean(v)) for k, v in groups.items() if len(v)}
    if not means:
        return set()
    sign = _sign(mode)
    best = max(means, key=lambda k: sign * means[k])
    s = noise_sd if noise_sd is not None else seed_spread(groups).sd
    if s is None:
        return {best}
    z = float(_scipy_stats.norm.ppf(confidence))
    n_best = len(groups[best])
    return {
        k
        for k, m in means.items()
        if sign * (means[best] - m) <= z * s * math.sqrt(1 / n_best + 1 / len(groups[k])) + 1e-15
    }
