"""Experiment trackers for sweeps: ``tune.loggers: [tensorboard, wandb, mlflow]`` as Ray's own logger callbacks.

TensorBoard is what a sweep always writes (``DIR/tb``). ``wandb`` and ``mlflow`` add Ray's ``WandbLoggerCallback``
and ``MLflowLoggerCallback`` (``ray.air.integrations``), one tracker run per trial, grouped by the Optuna study:

- W&B: project ``$WANDB_PROJECT`` (default ``simmtm``), group = the study name, files under ``DIR`` (``WANDB_MODE=
  offline`` keeps them there for a later ``wandb sync``);
- MLflow: experiment = the study name, tracking URI ``$MLFLOW_TRACKING_URI`` or the local store
  ``sqlite:///DIR/mlflow.db`` (MLflow 3 refuses a plain ``mlruns/`` file store unless ``MLFLOW_ALLOW_FILE_STORE``).

Every result a trial reports reaches them as one step: at every probe (every ``tune.probe_every`` epochs, and the
last epoch) the epoch's pre-training loss parts (``pretrain_train_loss``, ``pretrain_train_reconstruction``,
``pretrain_train_constraint`` and their ``pretrain_val_`` twins, epoch means) with the probe score, then the final
fine-tune's scores. Per-optimiser-step losses stay in the trial's TensorBoard (``DIR/tb/<trial>/pretrain``): a Tune
report per step would be a round trip to the driver per step, and ASHA and the searcher read every report.
The packages are extras: ``pip install 'simmtm[wandb]'`` / ``'simmtm[mlflow]'``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simmtm.errors import UserError

__all__ = ["LOGGERS", "tracker_callbacks"]

LOGGERS = ("tensorboard", "wandb", "mlflow")


def tracker_callbacks(loggers: Sequence[str], *, study_name: str, out: str | Path) -> list[Any]:
    """Ray Tune callbacks for ``loggers`` (TensorBoard needs none: the sweep writes it itself)."""
    unknown = [name for name in loggers if name not in LOGGERS]
    if unknown:
        raise UserError(f"tune.loggers: unknown logger {unknown[0]!r}; valid: {', '.join(LOGGERS)}")
    out = Path(out).resolve()
    callbacks: list[Any] = []
    for name in dict.fromkeys(loggers):
        if name == "tensorboard":
            continue
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"tune.loggers: {name} needs the {name} package; install it with pip install 'simmtm[{name}]'"
            )
        callbacks.append(_wandb(study_name, out) if name == "wandb" else _mlflow(study_name, out))
    return callbacks


def _wandb(study_name: str, out: Path) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    out.mkdir(parents=True, exist_ok=True)
    # the logging actors run in Ray's worker processes, whose environment is the one Ray started with: pass the
    # driver's WANDB_MODE (offline, disabled) on explicitly
    mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
    return WandbLoggerCallback(
        project=os.environ.get("WANDB_PROJECT", "simmtm"), group=study_name, dir=str(out), **mode
    )


def _mlflow(study_name: str, out: Path) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=study_name, tags={"simmtm.study": study_name})
