"""A multi-worker trial: the Tune trial launches a TorchTrainer named after its trial id.

Every Train worker runs the same trial loop as a one-worker trial (``simmtm.sweep.trial.trial_loop``) with the
data-parallel runtime of ``simmtm.distributed``; rank 0 probes and fine-tunes on its own device. Worker reports
reach Tune's scheduler and searcher through ``TuneReportCallback`` (Ray Train V2 cannot be nested in Tune any
other way). The Train run is stored under the sweep's experiment folder as ``train-<trial id>``, so a retried or
restored trial resumes from its own Train checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from simmtm.checkpoint import ray_checkpoint_state
from simmtm.data.registry import worker_env
from simmtm.distributed import Scaling
from simmtm.sweep.trial import _in_tune, _trial_id, trial_loop

__all__ = ["run_multi_worker_trial", "train_run_name"]

log = logging.getLogger(__name__)


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial: no timestamp, so the same trial always finds its own checkpoints."""
    return f"train-{trial_id}"


def run_multi_worker_trial(config: dict[str, Any]) -> dict[str, Any] | None:
    """Launch ``workers`` Train workers for one trial; return rank 0's final result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    sweep = dict(config["sweep"])
    trial_id = _trial_id()
    sweep["trial_id"] = trial_id
    callbacks = []
    if _in_tune():
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    scaling = Scaling(workers=int(sweep["workers"]), gpus_per_worker=float(sweep.get("gpus_per_worker", 0)),
                      cpus_per_worker=float(sweep.get("cpus_per_worker", 1)))
    env = worker_env()
    storage = sweep.get("storage_path") or str(Path.cwd() / "ray")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"trial": {**config, "sweep": sweep}},
        scaling_config=scaling.scaling_config(),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id), storage_path=storage, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=int(sweep.get("max_failures", 0))),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    result = trainer.fit()
    return result.return_value


def _worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """One Train worker of a trial: the trial loop with the data-parallel runtime, reporting via ``ray.train``."""
    import ray.train

    from simmtm.distributed import DistributedRuntime, RayReport

    for name in ("ray.train", "simmtm"):  # the trial table is the progress display; keep worker logs to warnings
        logging.getLogger(name).setLevel(logging.WARNING)
    runtime = DistributedRuntime.from_context()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume = ray_checkpoint_state(checkpoint)
        log.info("rank %d resumes the trial after epoch %s", runtime.rank, resume.get("epoch"))
    report = RayReport(runtime)
    return trial_loop(loop_config["trial"], report=report, resume=resume, runtime=runtime)
