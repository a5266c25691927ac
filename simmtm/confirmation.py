"""The confirmation stage's plan and verdict: which configurations are re-run, and what their paired runs say.

After the search, the top ``k`` configurations and the paper's default (r = 0.5, M = 3, tau = 0.2) are re-run at full
budget with ``n`` fresh training seeds, the same seeds for every configuration. Each candidate is then compared to
the default seed by seed (``simmtm.stats.paired_difference``); the k comparisons share one family-wise error rate
(Bonferroni: each interval at 1 - 0.05 / k). The verdict is one of

- ``beats``: a candidate beats the default beyond seed noise (its whole interval lies on the better side);
- ``keep_default``: nothing does; keep the paper's r = 0.5, M = 3;
- ``insufficient``: too few finished paired runs to judge (the sentence says what is missing).

``Verdict.sentence()`` is the one sentence that the sweep's last line, ``simmtm recommend``, recommendation.json
and the report all print: nothing else words the recommendation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from simmtm.stats import PairedDifference, SeedSpread, paired_difference, seed_spread
from simmtm.sweep.spec import PAPER_DEFAULTS

__all__ = [
    "PAPER_DEFAULTS",
    "OFFICIAL_MAX_R",
    "CONFIRM_SEED_OFFSET",
    "ConfirmedConfig",
    "Verdict",
    "confirmation_candidates",
    "confirmation_seeds",
    "judge",
    "format_params",
    "same_params",
    "beyond_official_r",
]

# The official geometric masking caps the masked share at lm / (lm + 1) = 0.75 for lm = 3 (docs/fidelity.md, K1).
OFFICIAL_MAX_R = 0.75
# Confirmation seeds start this far above the sweep's seed, away from the seeds the search trained with.
CONFIRM_SEED_OFFSET = 1000
_SHORT = {
    "pretrain.mask_ratio": "r",
    "pretrain.num_masked": "M",
    "pretrain.temperature": "tau",
    "model.encoder": "encoder",
}


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
        parts.append(f"{_SHORT.get(key, key)} = {text}")
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

    def finished(self) -> dict[int, float]:
        return {s: v for s, v in self.scores.items() if v is not None and math.isfinite(v)}


@dataclass
class Verdict:
    """What the paired confirmation runs say; ``sentence()`` words it once for every output."""

    status: Literal["beats", "keep_default", "insufficient"]
    metric: str
    mode: str
    default: dict[str, Any]
    spread: SeedSpread
    winner: dict[str, Any] | None = None
    difference: PairedDifference | None = None  # winner (or best candidate) minus default, as an improvement
    best_candidate: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # one per candidate: params, mean, interval
    reason: str = ""  # why ``insufficient``

    @property
    def recommended(self) -> dict[str, Any]:
        """The parameters to run with: the winner, else the paper's default."""
        return dict(self.winner if self.winner is not None else self.default)

    def sentence(self) -> str:
        default = format_params(
            {k: v for k, v in self.default.items() if k in ("pretrain.mask_ratio", "pretrain.num_masked")}
        )
        if self.status == "insufficient":
            return f"no confirmed recommendation: {self.reason}"
        noise = self.noise_text()
        d = self.difference
        assert d is not None
        level = f"{d.confidence * 100:.3g} % interval"
        if self.status == "beats" and d.ci is not None:  # "beats" needs an interval above zero
            return (
                f"{format_params(self.winner or {})} beats the paper's {default} by {d.mean:.3g} {self.metric} "
                f"({level} {d.ci[0]:.3g} to {d.ci[1]:.3g}, {d.n} paired seeds; {noise})"
            )
        best = format_params(self.best_candidate or {})
        ci = f"{level} {d.ci[0]:.3g} to {d.ci[1]:.3g}" if d.ci else "one seed: no interval"
        return (
            f"nothing beats the paper's defaults beyond seed noise ({noise}; best candidate {best}: "
            f"{d.mean:+.3g} {self.metric}, {ci}): keep {default}"
        )

    def noise_text(self) -> str:
        if self.spread.sd is None:
            return "seed spread not measured"
        return f"seed-to-seed spread {self.spread.sd:.3g} SD over {self.spread.n_runs} runs"

    def to_dict(self) -> dict[str, Any]:
        out = {
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
        }
        return out


def judge(configs: Sequence[ConfirmedConfig], *, metric: str, mode: str, confidence: float = 0.95) -> Verdict:
    """Compare every candidate with the default on the seeds both finished; Bonferroni over the candidates."""
    defaults = [c for c in configs if c.is_default]
    if len(defaults) != 1:
        raise ValueError(f"the confirmation needs exactly one default configuration (got {len(defaults)})")
    default = defaults[0]
    candidates = [c for c in configs if not c.is_default]
    spread = seed_spread({i: list(c.finished().values()) for i, c in enumerate(configs)})
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
    direction: Literal["min", "max"] = "max" if mode == "max" else "min"
    comparisons, diffs = [], []
    for c in candidates:
        common = sorted(set(c.finished()) & set(default.finished()))
        if len(common) < 2:
            comparisons.append({"params": c.params, "n": len(common), "mean": None, "ci": None})
            continue
        ours, theirs = [c.finished()[s] for s in common], [default.finished()[s] for s in common]
        d = paired_difference(ours, theirs, mode=direction, confidence=family)
        diffs.append((c, d))
        comparisons.append(
            {
                "params": c.params,
                "n": d.n,
                "mean": d.mean,
                "ci": list(d.ci) if d.ci else None,
                "significant": d.significant,
            }
        )
    if not diffs:
        return Verdict(
            "insufficient",
            comparisons=comparisons,
            reason="fewer than 2 seeds finished for both a candidate and the paper's default",
            **base,
        )
    best, best_d = max(diffs, key=lambda cd: cd[1].mean)
    winners = [(c, d) for c, d in diffs if d.significant]
    if winners:
        win, win_d = max(winners, key=lambda cd: cd[1].mean)
        return Verdict(
            "beats",
            winner=dict(win.params),
            difference=win_d,
            best_candidate=dict(win.params),
            comparisons=comparisons,
            **base,
        )
    return Verdict("keep_default", difference=best_d, best_candidate=dict(best.params), comparisons=comparisons, **base)
