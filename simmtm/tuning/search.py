"""The sweep's study, seen by Ray Tune: a searcher that asks it for trials and tells it how they ended, and a
scheduler that records every probe score in it and prunes on the rung values it holds.

Both are Tune's public extension points (``ray.tune.search.Searcher``, ``ray.tune.schedulers.FIFOScheduler``);
neither keeps state of its own that a resume needs. Tune's trial ids live only as long as one Tune run; a trial is
known by its Optuna number (``config["number"]``) everywhere else.

Pruning is asynchronous successive halving (ASHA, as Tune's ``ASHAScheduler`` decides it): at each rung (pre-training
epoch ``grace * rf**k``) a trial continues when its probe score is within the best ``1/rf`` of the scores that earlier
trials reported at that rung, else it stops and ends PRUNED. The rung values are rebuilt from the study's
intermediate values when a sweep (re)starts, so a resumed sweep compares against every trial reported before it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from simmtm.tuning.record import TrialStore, trial_name
from simmtm.tuning.study import SweepStudy

__all__ = ["SweepSearch", "StudyPruner", "Rungs"]

log = logging.getLogger(__name__)


class Rungs:
    """ASHA's rung values: milestone epoch -> {trial number: probe score at its first probe at or after it}."""

    def __init__(self, milestones: Sequence[int], *, reduction_factor: float, mode: str) -> None:
        self.rf = reduction_factor
        self.sign = 1.0 if mode == "max" else -1.0  # compared as "higher is better"
        self.values: dict[int, dict[int, float]] = {m: {} for m in sorted(set(milestones), reverse=True)}

    def decide(self, number: int, epoch: int, score: float) -> bool:
        """Record the score at the highest rung it reaches first; True when it falls below that rung's cutoff."""
        for milestone, recorded in self.values.items():  # highest first, as Tune's ASHA
            if epoch < milestone or number in recorded:
                continue
            others = [v for v in recorded.values() if math.isfinite(v)]
            cutoff = float(np.percentile(others, (1 - 1 / self.rf) * 100)) if others else None
            recorded[number] = self.sign * score
            return cutoff is not None and self.sign * score < cutoff
        return False

    def replay(self, study: SweepStudy) -> int:
        """Rebuild the rungs from the study's intermediate values (every trial reported so far); return how many."""
        count = 0
        for trial in study.trials():
            for epoch, value in sorted(trial.intermediate_values.items()):
                self.decide(trial.number, int(epoch), float(value))
                count += 1
        return count


class StudyPruner(FIFOScheduler):
    """Tune's scheduler for a sweep: each probe score goes to the study; ASHA (``rungs``) decides on it."""

    def __init__(self, study: SweepStudy, probe_metric: str, rungs: Rungs | None) -> None:
        super().__init__()
        self.study = study
        self.probe_metric = probe_metric
        self.rungs = rungs
        self.pruned: set[int] = set()
        if rungs is not None:
            log.debug("pruning: %d earlier probe scores in the rungs", rungs.replay(study))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        number, value = trial.config.get("number"), result.get(self.probe_metric)
        if number is None or value is None or "epoch" not in result:
            return TrialScheduler.CONTINUE
        self.study.report(int(number), int(result["epoch"]), float(value))
        if self.rungs is not None and math.isfinite(value) and self.rungs.decide(number, int(result["epoch"]), value):
            # Told now, not when Tune completes the trial: a driver killed in between would leave a trial whose
            # stop was decided RUNNING, and a resume (its value already in the rung) would let it go on.
            self.study.finish(int(number), TrialState.PRUNED, wall_s=result.get("time_total_s"))
            self.pruned.add(int(number))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class SweepSearch(Searcher):
    """Tune's searcher for a sweep: trials come from the study, their ends go back to it.

    A trial that ends without its final result and was not pruned (the sweep stopped: Ctrl-C, a time budget) stays
    RUNNING in the study: the next resume runs it again from its own folder's checkpoint.
    """

    def __init__(self, study: SweepStudy, pruner: StudyPruner, store: TrialStore, *, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.study = study
        self.pruner = pruner
        self.store = store
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna number, for this Tune run

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        asked = self.study.ask()
        self.numbers[trial_id] = asked.number
        return {**asked.params, "repeat": asked.repeat, "number": asked.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        result = result or {}
        value, wall = result.get(self.metric), result.get("time_total_s")
        if error:
            reason = self.store.read_error(trial_name(number)) or "the trial's process died (no error recorded)"
            self.study.finish(number, TrialState.FAIL, reason=reason, wall_s=wall)
        elif result.get("stage") == "final" and value is not None and math.isfinite(value):
            self.study.finish(number, TrialState.COMPLETE, float(value), wall_s=wall)
        elif number in self.pruner.pruned:
            self.study.finish(number, TrialState.PRUNED, wall_s=wall)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study is the record (Tune's own copy is never read back)."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from its Optuna study, not from Tune's searcher state")
