"""Does the probe that ASHA prunes on predict the final score? Measured on every sweep's finished runs.

ASHA ranks trials by the rung score (a linear probe, or a short fine-tune with ``tune.prune_on: finetune``) and
stops the worse ones; that is only sound when the rung score ranks trials as their final fine-tuned score does.
``check_probe`` takes the runs that have both scores (finished search trials and confirmation runs) and measures
Spearman's rank correlation with an interval; with pruning on, a correlation that is not shown to be positive is a
warning the sweep prints and the report shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from simmtm.verdict.stats import RankCorrelation, spearman

__all__ = ["ProbeCheck", "check_probe", "MIN_RHO"]

MIN_RHO = 0.5  # below this a rung score orders trials too loosely to prune on


@dataclass(frozen=True)
class ProbeCheck:
    correlation: RankCorrelation
    prunes: bool  # the sweep pruned on the rung score (ASHA)
    rung: str  # what the rung score is: probe or finetune
    warning: str | None

    def line(self) -> str:
        head = f"{self.rung} score vs final score: {self.correlation.describe()}"
        return f"{head}; WARNING: {self.warning}" if self.warning else head

    def to_dict(self) -> dict:
        return {
            "spearman": asdict(self.correlation),
            "prunes": self.prunes,
            "rung": self.rung,
            "warning": self.warning,
            "line": self.line(),
        }


def check_probe(
    rung_scores: Sequence[float],
    final_scores: Sequence[float],
    *,
    prunes: bool,
    rung: str = "probe",
    confidence: float = 0.95,
) -> ProbeCheck:
    """Rank-correlate the rung score with the final score (same metric, same direction: +1 is a perfect predictor)."""
    corr = spearman(rung_scores, final_scores, confidence=confidence)
    warning = None
    if prunes:
        if corr.rho is None:
            warning = (
                f"ASHA pruned on the {rung} score, which could not be checked ({corr.n} run(s) with both scores); "
                "its ranking is unverified"
            )
        elif corr.rho < MIN_RHO or corr.ci is None or corr.ci[0] <= 0:
            verdict = "ranks trials against" if corr.rho < 0 else "is not shown to predict"
            warning = (
                f"ASHA pruned on a {rung} score that {verdict} the final score (Spearman {corr.rho:+.2f}); "
                f"set tune.scheduler.type: fifo to prune nothing, or try tune.prune_on: {_other(rung)}"
            )
    return ProbeCheck(corr, prunes, rung, warning)


def _other(rung: str) -> str:
    return "finetune" if rung == "probe" else "probe"
