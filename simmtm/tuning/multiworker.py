"""A multi-worker trial: the Tune trial launches a TorchTrainer named after its trial id.

Every Train worker runs the same trial loop as a one-worker trial (``simmtm.tuning.trial.trial_loop``) with the
data-parallel runtime of ``simmtm.cluster.distributed``; rank 0 probes and fine-tunes on its own device. Worker reports
reach Tune's scheduler and searcher through ``TuneReportCallback`` (Ray Train V2 cannot be nested in Tune any
other way). The Train run is stored under the sweep's storage as ``ray/train-<trial name>``; its checkpoints are not
used: every worker of a retried or resumed trial starts from the trial's own folder (``simmtm.tuning.record``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from simmtm.cluster.distributed import DistributedRuntime
from simmtm.data.registry import worker_env
from simmtm.train.reporting import RayReport, in_tune
from simmtm.tuning.trial import Trial, trial_loop

__all__ = ["run_multi_worker_trial", "train_run_name"]

log = logging.getLogger(__name__)


def train_run_name(trial_name: str) -> str:
    """The Ray Train run of a trial (no timestamp: one folder per trial, replaced when it runs again)."""
    return f"train-{trial_name}"


def run_multi_worker_trial(trial: Trial) -> dict[str, Any] | None:
    """Launch ``resources.workers`` Train workers for one trial; return rank 0's final result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if in_tune():
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    spec = trial.spec
    env = worker_env()
    storage = f"{spec.storage_path.rstrip('/')}/ray" if spec.storage_path else str(Path.cwd() / "ray")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"trial": trial.to_config()},
        scaling_config=spec.resources.scaling_config(),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial.name),
            storage_path=storage,
            callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    result = trainer.fit()
    return result.return_value


def _worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """One Train worker of a trial: the trial loop with the data-parallel runtime, reporting via ``ray.train``."""
    for name in ("ray.train", "simmtm"):  # the trial table is the progress display; keep worker logs to warnings
        logging.getLogger(name).setLevel(logging.WARNING)
    runtime = DistributedRuntime.from_context()
    trial = Trial.from_config(loop_config["trial"])
    return trial_loop(trial, report=RayReport(runtime), runtime=runtime)
