"""The Tune trainable of a sweep: ``run_trial(config)`` runs one trial in this process or on Ray Train workers.

Inside Tune it reports through ``simmtm.train.reporting.tune_report``; the trial resumes from its own folder
(``simmtm.tuning.record``), never from Tune's checkpoints. Called outside Tune (tests, debugging) it runs the same steps
and returns the final result. With ``resources.workers > 1``
the trial launches a TorchTrainer (``simmtm.tuning.multiworker``).
"""

from __future__ import annotations

import logging
from typing import Any

from simmtm.train.reporting import in_tune, tune_report
from simmtm.tuning.multiworker import run_multi_worker_trial
from simmtm.tuning.trial import Trial, trial_loop

__all__ = ["run_trial"]


def run_trial(config: dict[str, Any]) -> dict[str, Any] | None:
    """Run one trial. Inside Tune it reports and returns None; outside it returns the final result."""
    trial = Trial.from_config(config)  # validated once, where the trial starts
    inside = in_tune()
    if inside:  # one line per checkpoint from Ray's own loggers drowns the trial table
        for name in ("ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if trial.spec.resources.workers > 1:
        result = run_multi_worker_trial(trial)
    elif inside:
        result = trial_loop(trial, report=tune_report)
    else:
        result = trial_loop(trial)
    return None if inside else result
