"""What a sweep recommends, decided on plain numbers: the neighbourhood to run, how sure it is, whether a range
should widen, and the words for it (``Recommendation``).

``simmtm.analysis.recommend`` reads the sweep and measures it (which trials lie near which, the recommended values,
the edges of the searched range, the r x M surface, the seed noise) and hands the numbers here:

- ``choose_neighbourhood``: the centre whose neighbourhood has the best mean score (over at least ``min_support``
  trials where the data allow), its bootstrap interval, and ``stability``: how often bootstrap resamples of all
  trials pick a centre inside the same neighbourhood;
- ``simmtm.verdict.widening``: whether a best value at a bound of the searched range calls for a wider range;
- ``surface_ties``: how many r x M cells tie with the best within seed noise;
- ``with_confirmation``: with a confirmation stage, its verdict decides the parameters and the sentence.

``Recommendation`` is the one type that ``simmtm.recommend``, ``simmtm recommend --json``, recommendation.json and
best.yaml share.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from simmtm.config.keys import SHORT_NAMES
from simmtm.verdict.confirmation import beyond_official_r

__all__ = [
    "MIN_FINISHED",
    "Recommendation",
    "Neighbourhood",
    "choose_neighbourhood",
    "pick_centre",
    "stability",
    "too_few",
    "surface_ties",
    "with_confirmation",
    "fmt_value",
    "display_name",
]

MIN_FINISHED = 2  # fewer finished trials: nothing to compare, no recommendation


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.5g}"


def display_name(key: str) -> str:
    """A dotted key with its short name where the paper has one: ``pretrain.mask_ratio (r)``."""
    return f"{key} ({SHORT_NAMES[key]})" if key in SHORT_NAMES else key


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
        return self.search_summary()

    def search_summary(self) -> list[str]:
        """The search's own lines: the recommended values, the expected score, the edges, the surface, M vs r."""
        if self.status != "ok":
            return [self.message]
        values = ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(v)}" for k, v in self.params.items())
        fixed = ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(v)}" for k, v in self.fixed.items())
        lines = [
            f"recommended: {values}"
            + (f" (not searched: {fixed})" if fixed else "")
            + (" [r beyond the official code's reachable 0.75]" if beyond_official_r(self.params) else ""),
            f"expected {self.metric}: {_score(self.expected_score)}{self._ci(' (one trial: no interval)')}, from "
            f"{self.n_support} of {self.n_finished} finished trials",
        ]
        if self.stability is not None:
            lines.append(f"stability: {self.stability:.0%} of bootstrap resamples pick the same neighbourhood")
        lines.extend(f"at the edge: {e['message']}" for e in self.edges)
        if self.surface is not None:
            lines.append(self.surface["message"])
        if self.m_vs_r.get("message"):
            lines.append(f"M vs r: {self.m_vs_r['message']}")
        return lines

    def params_line(self) -> str:
        """The recommended values as a written run config's header lists them (full dotted keys)."""
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.params.items())

    def evidence(self) -> str:
        """The one line a written run config quotes: the confirmation's sentence, else the expected score."""
        return (
            self.sentence
            or f"expected {self.metric} {_score(self.expected_score)}{self._ci('')} from {self.n_support} of "
            f"{self.n_finished} finished trials"
        )

    def _ci(self, without: str) -> str:
        if not self.ci:
            return without
        return f" ({self.confidence:.0%} CI {_score(self.ci[0])} to {_score(self.ci[1])})"


def too_few(counts: Mapping[str, int], **base: Any) -> Recommendation:
    """No recommendation: fewer than ``MIN_FINISHED`` finished trials (``counts``: trials per state; ``base``: the
    fields every recommendation has, ``n_finished`` among them)."""
    others = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v and k != "COMPLETE")
    why = f"no recommendation: {base['n_finished']} finished trial(s){' (' + others + ')' if others else ''}"
    return Recommendation("insufficient", f"{why}; it needs at least {MIN_FINISHED}", **base)


# --- the recommended neighbourhood ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbourhood:
    """The chosen centre trial, the trials in its neighbourhood, their mean score and its interval."""

    centre: int
    members: np.ndarray  # row numbers
    expected: float  # the members' mean score
    ci: tuple[float, float] | None
    stability: float | None


def choose_neighbourhood(
    near: np.ndarray, scores: np.ndarray, sign: float, *, min_support: int, confidence: float, n_boot: int, seed: int
) -> Neighbourhood:
    """``near[i, j]``: trial j lies in the neighbourhood centred on trial i; ``scores`` in the metric, ``sign``
    -1 or 1 so that ``sign * scores`` is higher-better. Seeded: the same numbers give the same choice."""
    rng = np.random.default_rng(seed)
    good = sign * scores  # higher is better
    need = min(min_support, int(near.sum(axis=1).max()))
    centre = pick_centre(near, good, need)
    members = np.flatnonzero(near[centre])
    member_scores = scores[members]
    ci = _bootstrap_mean_ci(member_scores, confidence, n_boot, rng) if len(members) > 1 else None
    share = stability(near, good, need, centre, n_boot=min(n_boot, 300), rng=rng)
    return Neighbourhood(centre, members, float(member_scores.mean()), ci, share)


def pick_centre(near: np.ndarray, good: np.ndarray, need: int) -> int:
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


def stability(
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
        # candidates in order of first draw: ties go to the earlier one, as pick_centre over the resample's rows did
        _, first = np.unique(idx, return_index=True)
        cand = idx[np.sort(first)]
        sup = support[cand, b]
        means = np.where(sup >= min(need, int(sup.max())), total[cand, b] / np.maximum(sup, 1), -np.inf)
        k = cand[np.lexsort((-sup, -means))[0]]
        hits += bool(near[centre, k])
    return hits / n_boot


# --- the r x M surface and the confirmation ---------------------------------------------------------------------


def surface_ties(
    *,
    tied: Collection[tuple[float, int]],
    n_cells: int,
    cell: tuple[float, int] | None,
    noise_sd: float,
    n_runs: int,
    indistinct: bool,
    anova_p: float | None,
    ratio: float | None,
    metric: str,
) -> dict[str, Any]:
    """How many r x M cells tie with the best within seed noise (``tied``), and whether the recommended ``cell``
    is one of them."""
    n_tied = len(tied)
    noise = f"seed noise SD {noise_sd:.3g} of {metric}, {n_runs} runs"
    if indistinct or n_tied == n_cells:
        anova = f", ANOVA p = {anova_p:.2g}" if anova_p is not None else ""
        message = (
            f"r x M: the {n_cells} cells cannot be told apart from seed noise ({noise}{anova}; {n_tied} tie with the "
            "best): the recommended cell is a pick among equals, not a finding"
        )
    elif cell in tied:
        message = (
            f"r x M: {n_tied} of {n_cells} cells tie with the best within seed noise ({noise}); the recommended is one"
        )
    else:
        message = (
            f"r x M: {n_tied} of {n_cells} cells tie with the best within seed noise ({noise}); the recommended "
            "neighbourhood is not among them (it pools nearby cells)"
        )
    return {
        "message": message,
        "n_tied": n_tied,
        "n_cells": n_cells,
        "recommended_tied": None if cell is None else cell in tied,
        "indistinct": indistinct,
        "noise_sd": noise_sd,
        "spread_over_noise": ratio,
    }


def with_confirmation(rec: Recommendation, confirmation: Mapping[str, Any] | None) -> Recommendation:
    """Let the confirmation's verdict (confirmation.json, as read) decide: its recommended parameters and its
    sentence (the search's own pick stays in ``search``, as exploratory lines)."""
    conf = confirmation or {}
    verdict = conf.get("verdict")
    if not verdict:
        return replace(rec, probe_check=conf.get("probe_check"))
    decided = verdict["status"] != "insufficient"
    return replace(
        rec,
        probe_check=conf.get("probe_check"),
        search=rec.search_summary(),
        confirmation=verdict,
        sentence=verdict["sentence"],
        message=verdict["sentence"],
        status="ok" if decided else rec.status,
        params=dict(verdict["recommended"]) if decided else rec.params,
    )
