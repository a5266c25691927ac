"""The confirmation stage's plan and verdict: which configurations are re-run, and what their paired runs say.

After the search, the top ``k`` configurations and the paper's default (r = 0.5, M = 3, tau = 0.2) are re-run at full
budget with ``n`` fresh training seeds, the same seeds for every configuration. Each candidate is then compared to
the default seed by seed (``stats.paired_difference``); the k comparisons share one family-wise error rate
(Bonferroni: each interval at 1 - 0.05 / k). The verdict is one of

- ``beats``: a candidate beats the default beyond seed noise (its whole interval lies on the better side);
- ``keep_default``: nothing does; keep the paper's r = 0.5, M = 3;
- ``insufficient``: too few finished paired runs to judge (the sentence says what is missing).

Beside the validation difference it reports the test-split difference of the same pair (each confirmation run scores
the test split once; nothing is selected on it), and says "too few seeds to tell" when the interval's half-width
exceeds the difference it would claim. The seed noise is ``sweep_noise``: one figure for every output.

``Verdict.sentence()`` is the one sentence that the sweep's last line, ``simmtm recommend``, recommendation.json
and the report all print: nothing else words the recommendation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scipy import stats as scipy_stats

from simmtm.config.keys import SHORT_NAMES
from simmtm.verdict.stats import PairedDifference, SeedSpread, paired_difference, seed_spread

__all__ = [
    "OFFICIAL_MAX_R",
    "CONFIRM_SEED_OFFSET",
    "ConfirmedConfig",
    "Verdict",
    "confirmation_candidates",
    "confirmation_seeds",
    "judge",
    "sweep_noise",
    "detectable_difference",
    "seeds_for_half_width",
    "format_params",
    "same_params",
    "beyond_official_r",
]

# The official geometric masking caps the masked share at lm / (lm + 1) = 0.75 for lm = 3 (docs/fidelity.md, K1).
OFFICIAL_MAX_R = 0.75
# Confirmation seeds start this far above the sweep's seed, away from the seeds the search trained with.
CONFIRM_SEED_OFFSET = 1000


def confirmation_seeds(base_seed: int, n: int) -> list[int]:
    """The fresh training seeds of the confirmation runs (shared by every configuration: paired)."""
    return [base_seed + CONFIRM_SEED_OFFSET + i for i in range(n)]


def same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal configurations (floats compared to 1e-9 relative: a value read back from a table may round)."""
    keys = set(a) | set(b)
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, float) or isinstance(y, float):
            if x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def confirmation_candidates(
    ranked: Sequence[Mapping[str, Any]], default: Mapping[str, Any], top_k: int
) -> list[dict[str, Any]]:
    """The configurations to confirm: the default first, then the best ``top_k`` of ``ranked`` (best first) that
    differ from it (a search whose best is the default itself confirms the next ones)."""
    out = [dict(default)]
    for params in ranked:
        if len(out) > top_k:
            break
        if not any(same_params(params, seen) for seen in out):
            out.append(dict(params))
    return out


def format_params(params: Mapping[str, Any]) -> str:
    """``r = 0.3, M = 4, tau = 0.2`` (short names, 3 significant digits), r beyond the official range marked."""
    parts = []
    for key, value in params.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{SHORT_NAMES.get(key, key)} = {text}")
    return ", ".join(parts) + (" [r beyond the official code's reachable 0.75]" if beyond_official_r(params) else "")


def beyond_official_r(params: Mapping[str, Any]) -> bool:
    r = params.get("pretrain.mask_ratio")
    return isinstance(r, (int, float)) and r > OFFICIAL_MAX_R + 1e-12


@dataclass(frozen=True)
class ConfirmedConfig:
    """One confirmed configuration: its parameters and its score per confirmation seed (None: that run failed)."""

    params: dict[str, Any]
    scores: dict[int, float | None]  # seed -> final validation score
    is_default: bool = False
    test_scores: dict[int, float | None] = field(default_factory=dict)  # seed -> its test score (scored once)

    def finished(self, split: Literal["validation", "test"] = "validation") -> dict[int, float]:
        scores = self.scores if split == "validation" else self.test_scores
        return {s: v for s, v in scores.items() if v is not None and math.isfinite(v)}


def sweep_noise(confirmed: Sequence[ConfirmedConfig], search: Mapping[Any, Sequence[float]]) -> SeedSpread:
    """A sweep's seed noise, the one figure that every message and file reports: the seed-to-seed SD of the score,
    pooled within configuration over the confirmation's paired runs and the search's repeated configurations."""
    groups: dict[Any, Sequence[float]] = {("search", k): v for k, v in search.items()}
    groups.update({("confirm", i): list(c.finished().values()) for i, c in enumerate(confirmed)})
    return seed_spread(groups)


def detectable_difference(sd: float, n: int, confidence: float = 0.95) -> float | None:
    """The smallest paired difference that ``n`` seeds can tell from zero: the half-width of the t interval when
    single runs vary by ``sd`` (a paired difference of two runs varies by sqrt(2) sd); None below 2 seeds."""
    if n < 2:
        return None
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(2) * sd / math.sqrt(n)


def seeds_for_half_width(sd_diff: float, target: float, *, cap: int, confidence: float = 0.95) -> int:
    """The fewest paired seeds (2 to ``cap``) whose interval half-width, for differences of SD ``sd_diff``, is at most
    ``target`` (``cap`` when none is)."""
    for n in range(2, cap + 1):
        if float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd_diff / math.sqrt(n) <= target:
            return n
    return cap


def _interval(d: PairedDifference) -> str:
    return f"{d.confidence * 100:.3g} % interval {d.ci[0]:.3g} to {d.ci[1]:.3g}" if d.ci else "one seed: no interval"


def _way(d: PairedDifference, metric: str) -> str:
    """Which way a difference goes, in words: ``0.000258 val_mse worse than the default``."""
    return f"{abs(d.mean):.3g} {metric} {'better' if d.mean >= 0 else 'worse'} than the default"


@dataclass
class Verdict:
    """What the paired confirmation runs say; ``sentence()`` words it once for every output."""

    status: Literal["beats", "keep_default", "insufficient"]
    metric: str
    mode: str
    default: dict[str, Any]
    spread: SeedSpread  # the sweep's seed noise (``sweep_noise``)
    winner: dict[str, Any] | None = None
    difference: PairedDifference | None = None  # winner (or best candidate) minus default, as an improvement
    best_candidate: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # one per candidate: params, mean, interval
    reason: str = ""  # why ``insufficient``
    test_difference: PairedDifference | None = None  # the same pair on the test split (None: not scored)

    @property
    def recommended(self) -> dict[str, Any]:
        """The parameters to run with: the winner, else the paper's default."""
        return dict(self.winner if self.winner is not None else self.default)

    @property
    def too_few_seeds(self) -> bool:
        """The validation interval's half-width exceeds the difference it would claim."""
        d = self.difference
        return d is not None and (d.ci is None or (d.ci[1] - d.ci[0]) / 2 > abs(d.mean))

    @property
    def test_agrees(self) -> bool | None:
        """The test split tells the same as validation: better beyond seed noise after a ``beats``, not better
        beyond it otherwise (None: no test scores)."""
        t = self.test_difference
        if t is None or self.status == "insufficient":
            return None
        return t.significant == (self.status == "beats")

    def sentence(self) -> str:
        default = format_params(
            {k: v for k, v in self.default.items() if k in ("pretrain.mask_ratio", "pretrain.num_masked")}
        )
        if self.status == "insufficient":
            return f"no confirmed recommendation: {self.reason}"
        d = self.difference
        assert d is not None
        if self.status == "beats":
            return (
                f"{format_params(self.winner or {})} beats the paper's {default} on validation by {d.mean:.3g} "
                f"{self.metric} ({_interval(d)}, {d.n} paired seeds; {self.noise_text()}); {self.test_text()}"
            )
        best = format_params(self.best_candidate or {})
        if self.too_few_seeds:
            return (
                f"too few seeds to tell whether {best} beats the paper's {default}: {_way(d, self.metric)} on "
                f"validation ({_interval(d)}, {d.n} paired seeds, wider than the difference; {self.noise_text()}); "
                f"{self.test_text()}: keep {default}, or add seeds (tune.confirm.seeds)"
            )
        return (
            f"nothing beats the paper's defaults beyond seed noise ({self.noise_text()}; best candidate {best}: "
            f"{_way(d, self.metric)} on validation, {_interval(d)}; {self.test_text()}): keep {default}"
        )

    def test_text(self) -> str:
        """The test-split difference of the confirmed pair, in words."""
        t, metric = self.test_difference, f"test {self.metric.removeprefix('val_')}"
        if t is None:
            return "the test split was not scored"
        if t.ci is None or not (t.significant or t.ci[1] < 0):
            return f"on the test split the difference is within seed noise ({_way(t, metric)}, {_interval(t)})"
        if self.status == "beats" and t.significant:
            return f"on the test split by {t.mean:.3g} {metric} ({_interval(t)})"
        return f"on the test split {_way(t, metric)} ({_interval(t)})"

    def noise_text(self) -> str:
        if self.spread.sd is None:
            return "seed spread not measured"
        return f"seed-to-seed spread {self.spread.sd:.3g} SD over {self.spread.n_runs} runs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sentence": self.sentence(),
            "metric": self.metric,
            "mode": self.mode,
            "recommended": self.recommended,
            "default": self.default,
            "winner": self.winner,
            "best_candidate": self.best_candidate,
            "seeds": self.seeds,
            "comparisons": self.comparisons,
            "seed_spread": asdict(self.spread),
            "reason": self.reason,
            "difference": asdict(self.difference) if self.difference is not None else None,
            "test_difference": asdict(self.test_difference) if self.test_difference is not None else None,
            "test_agrees": self.test_agrees,
            "too_few_seeds": self.too_few_seeds,
        }


def _pair(
    c: ConfirmedConfig, default: ConfirmedConfig, split: Literal["validation", "test"], *, mode: str, confidence: float
) -> PairedDifference | None:
    """The candidate minus the default on the seeds both finished (None below 2 such seeds)."""
    ours, theirs = c.finished(split), default.finished(split)
    common = sorted(set(ours) & set(theirs))
    if len(common) < 2:
        return None
    direction: Literal["min", "max"] = "max" if mode == "max" else "min"
    return paired_difference(
        [ours[s] for s in common], [theirs[s] for s in common], mode=direction, confidence=confidence
    )


def judge(
    configs: Sequence[ConfirmedConfig],
    *,
    metric: str,
    mode: str,
    confidence: float = 0.95,
    search: Mapping[Any, Sequence[float]] | None = None,
) -> Verdict:
    """Compare every candidate with the default on the seeds both finished; Bonferroni over the candidates.

    ``search``: the search's scores by configuration, pooled into the seed noise (``sweep_noise``).
    """
    defaults = [c for c in configs if c.is_default]
    if len(defaults) != 1:
        raise ValueError(f"the confirmation needs exactly one default configuration (got {len(defaults)})")
    default = defaults[0]
    candidates = [c for c in configs if not c.is_default]
    spread = sweep_noise(configs, search or {})
    seeds = sorted({s for c in configs for s in c.scores})
    base: dict[str, Any] = dict(metric=metric, mode=mode, default=dict(default.params), spread=spread, seeds=seeds)
    if not candidates:
        return Verdict(
            "insufficient",
            reason="no candidate besides the paper's default was confirmed "
            "(the search finished no other configuration)",
            **base,
        )
    family = 1 - (1 - confidence) / len(candidates)
    paired = [(c, _pair(c, default, "validation", mode=mode, confidence=family)) for c in candidates]
    diffs = [(c, d) for c, d in paired if d is not None]
    comparisons = [
        {"params": c.params, "n": 0, "mean": None, "ci": None}
        if d is None
        else {
            "params": c.params,
            "n": d.n,
            "mean": d.mean,
            "ci": list(d.ci) if d.ci else None,
            "significant": d.significant,
        }
        for c, d in paired
    ]
    if not diffs:
        return Verdict(
            "insufficient",
            comparisons=comparisons,
            reason="fewer than 2 seeds finished for both a candidate and the paper's default",
            **base,
        )
    winners = [(c, d) for c, d in diffs if d.significant]
    pick, pick_d = max(winners or diffs, key=lambda cd: cd[1].mean)
    return Verdict(
        "beats" if winners else "keep_default",
        winner=dict(pick.params) if winners else None,
        difference=pick_d,
        best_candidate=dict(pick.params),
        comparisons=comparisons,
        test_difference=_pair(pick, default, "test", mode=mode, confidence=family),
        **base,
    )
