"""Parameter importance by two methods side by side: PED-ANOVA (Optuna's default) and fANOVA.

They answer different questions. PED-ANOVA asks which parameters set the *top* trials apart from the rest (how far
the distribution of a parameter among the best trials is from its distribution among all); fANOVA asks how much
of the *whole* score variance a random forest attributes to each parameter. When they disagree, a parameter
matters for getting to the very best scores but not across the space (or the other way round).

fANOVA's trees are capped at depth ``FANOVA_MAX_DEPTH`` (Optuna's default, 64, grows them until every leaf holds one
trial): the marginal variances cost about (leaves x split points) per tree, which grew as N^1.5 with the number of
finished trials (20 CPU-s at 1,000, a few minutes at 5,000); capped, the cost grows about linearly and the
importances move by less than 0.01 (docs/benchmarks.md, "Sweeps at scale").
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

from simmtm.analysis.load import SHORT_NAMES, Sweep, analysis_study

__all__ = ["FANOVA_MAX_DEPTH", "MIN_TRIALS", "Importance", "param_importances"]

logger = logging.getLogger(__name__)

MIN_TRIALS = 5  # fewer finished trials than this: no importances (both methods are noise below it)
METHODS = ("ped_anova", "fanova")
FANOVA_MAX_DEPTH = 10  # at most 1,024 leaves a tree


@dataclass
class Importance:
    """Normalised importances (each method's column sums to 1) per searched parameter, or a note why not."""

    table: pd.DataFrame  # index: parameter (dotted key); columns: ped_anova, fanova, rank_ped_anova, rank_fanova
    n_trials: int
    note: str | None = None  # set when the table is empty or to be read with care
    target_quantile: float | None = None  # the PED-ANOVA top quantile used

    @property
    def ok(self) -> bool:
        return not self.table.empty

    def disagreements(self) -> list[str]:
        """Parameters whose rank differs between the methods, as readable lines."""
        if not self.ok:
            return []
        lines = []
        for p, row in self.table.iterrows():
            if pd.notna(row["rank_fanova"]) and row["rank_ped_anova"] != row["rank_fanova"]:
                lines.append(
                    f"{SHORT_NAMES.get(p, p)}: rank {int(row['rank_ped_anova'])} by PED-ANOVA, "
                    f"{int(row['rank_fanova'])} by fANOVA"
                )
        return lines


def param_importances(sweep: Sweep, *, seed: int = 0) -> Importance:
    """Importance of every searched parameter that varied, by PED-ANOVA and fANOVA (seeded)."""
    study = analysis_study(sweep)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    n = len(trials)
    empty = pd.DataFrame(columns=[*METHODS, *(f"rank_{m}" for m in METHODS)])
    if n < MIN_TRIALS:
        return Importance(empty, n, note=f"{n} finished trial(s): importances need at least {MIN_TRIALS}")
    varied = [p for p in sweep.params if p in sweep.distributions and len({str(t.params.get(p)) for t in trials}) > 1]
    if not varied:
        return Importance(empty, n, note="no searched parameter took more than one value")
    # PED-ANOVA compares the top quantile with all trials; it needs a few trials in the top set to be stable.
    quantile = float(min(0.5, max(0.1, 5 / n)))
    evaluators = {
        "ped_anova": PedAnovaImportanceEvaluator(target_quantile=quantile),
        "fanova": FanovaImportanceEvaluator(seed=seed, max_depth=FANOVA_MAX_DEPTH),
    }
    # fANOVA needs every parameter in every trial: it leaves out conditional ones (searched only `when` ...).
    always = [p for p in varied if all(p in t.params for t in trials)]
    table = pd.DataFrame(index=pd.Index(varied, name="param"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and small-sample warnings: the note says it instead
        for name, evaluator in evaluators.items():
            assessed = varied if name == "ped_anova" else always
            values = get_param_importances(study, evaluator=evaluator, params=assessed) if assessed else {}
            table[name] = [float(values[p]) if p in values else np.nan for p in varied]
    for name in METHODS:
        table[f"rank_{name}"] = table[name].rank(ascending=False, method="min").astype("Int64")
    table = table.sort_values(["fanova", "ped_anova"], ascending=False)
    note = None
    if len(always) < len(varied):
        note = f"fANOVA leaves out conditional parameters: {', '.join(p for p in varied if p not in always)}"
    if n < 20:
        rough = f"only {n} finished trials: read the importances as rough"
        note = f"{note}; {rough}" if note else rough
    if np.allclose(table["ped_anova"], table["ped_anova"].iloc[0]):
        extra = "PED-ANOVA could not separate the parameters (all equal)"
        note = f"{note}; {extra}" if note else extra
    return Importance(table, n, note=note, target_quantile=quantile)
