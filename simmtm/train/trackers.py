"""Experiment trackers for sweeps: ``tune.loggers: [tensorboard, wandb, mlflow]``.

TensorBoard is what a sweep always writes (``DIR/tb``). ``wandb`` and ``mlflow`` add Ray's ``WandbLoggerCallback``
and ``MLflowLoggerCallback`` (``ray.air.integrations``), one tracker run per trial, grouped by the Optuna study:

- W&B: project ``$WANDB_PROJECT`` (default ``simmtm``), group = the study name, files under ``DIR`` (``WANDB_MODE=
  offline`` keeps them there for a later ``wandb sync``);
- MLflow: experiment = the study name, tracking URI ``$MLFLOW_TRACKING_URI`` or the local store
  ``sqlite:///DIR/mlflow.db`` (MLflow 3 refuses a plain ``mlruns/`` file store unless ``MLFLOW_ALLOW_FILE_STORE``).
  Each trial's run is tagged ``simmtm.study`` and ``simmtm.trial_id``.

The callbacks log every result a trial reports, one step per report: at every probe (every ``tune.probe_every``
epochs, and the last epoch) the epoch's pre-training loss parts (``pretrain_train_loss``, ... and their
``pretrain_val_`` twins, epoch means) with the probe score, then the final fine-tune's scores.

Per-step losses come from inside the trial (``TrialSteps``), not through Tune: a Tune report per step would be a
round trip to the driver per step, and ASHA and the searcher read every report. The trial's main worker sends the
pre-training loop's per-optimiser-step scalars (``pretrain/loss``, ``pretrain/reconstruction``,
``pretrain/constraint``, ``pretrain/grad_norm``, ``pretrain/lr``: the TensorBoard tags of ``DIR/tb/<trial>/pretrain``)
every ``tune.log_every_n_steps`` steps, with the optimiser step as the step. How they relate to the callback's run:

- MLflow: into the callback's own run (one run per trial). An MLflow run may be written by several processes,
  and these keys have their own step axis, so the trial finds its run by the ``simmtm.trial_id`` tag and logs there.
- W&B: a companion run ``<trial id>-steps`` (name ``<trial> steps``, job type ``pretrain-steps``) in the same
  project and group, beside the callback's run (job type ``trial``). One W&B run takes one writer and a step that
  only grows; the callback's actor already writes the trial's run with Tune's iteration as the step, so writing
  there too would clash (Ray's ``setup_wandb`` defaults to exactly that: the trial id with ``resume=True``). The
  companion run is opened with ``setup_wandb`` under its own id, and takes the driver's ``WANDB_MODE``.

A trial resumed from its last checkpoint sends the steps after that checkpoint again: MLflow keeps both values of
such a step, W&B keeps the first (it drops a step not above the run's last).

Ray's ``setup_mlflow`` is not used: it always starts a new run (by default in an experiment named after the
trial), which would be a second run per trial. The trackers are written from a background thread that the
training loop only hands batches to (the loop reads its losses from the device every ``log_every`` steps), so a
slow store does not slow a step; the trial waits for it once, at the end of pre-training. Neither package is
imported unless configured. The packages are extras: ``pip install 'simmtm[wandb]'`` / ``'simmtm[mlflow]'``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from simmtm.errors import UserError

__all__ = ["LOGGERS", "TRIAL_TAG", "RunTrackers", "Trackers", "TrialSteps", "tracker_callbacks"]

log = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "wandb", "mlflow")
TRIAL_TAG = "simmtm.trial_id"  # the MLflow tag that names a trial's run
_STUDY_TAG = "simmtm.study"
STAGE_TAG = "simmtm.stage"  # search or confirm
_FIND_RUN_S = 60.0  # how long a trial looks for its MLflow run (the callback creates it as the trial starts)
_CLOSE_S = 120.0  # how long a trial waits for its trackers to take the last steps


class Trackers(BaseModel):
    """Where a sweep's W&B and MLflow runs go, resolved once on the driver (``tune.loggers`` and the environment).

    Plain data: it travels to the trials inside the ``TrialSpec``, so a trial's own logging uses the same
    targets as the driver's callbacks (a Ray worker's environment is not the driver's).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str  # W&B group, MLflow experiment
    out: str  # the sweep folder: W&B writes DIR/wandb
    wandb_project: str | None = None  # None: no W&B
    wandb_mode: str | None = None  # the driver's WANDB_MODE (offline, disabled), or None for W&B's default
    mlflow_uri: str | None = None  # None: no MLflow
    log_every_n_steps: int = Field(1, ge=1)

    @classmethod
    def resolve(
        cls,
        loggers: Sequence[str],
        *,
        study_name: str,
        out: str | Path,
        log_every_n_steps: int = 1,
        key: str = "tune.loggers",
    ) -> Trackers:
        """Check ``loggers`` (a name or a missing package fails here, with one line naming ``key``) and read the
        environment."""
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown:
            raise UserError(f"{key}: unknown logger {unknown[0]!r}; valid: {', '.join(LOGGERS)}")
        for name in ("wandb", "mlflow"):
            if name in loggers and importlib.util.find_spec(name) is None:
                raise UserError(f"{key}: {name} needs the {name} package; install it with pip install 'simmtm[{name}]'")
        out = Path(out).resolve()
        wandb, mlflow = "wandb" in loggers, "mlflow" in loggers
        return cls(
            study=study_name,
            out=str(out),
            wandb_project=os.environ.get("WANDB_PROJECT", "simmtm") if wandb else None,
            wandb_mode=(os.environ.get("WANDB_MODE") or None) if wandb else None,
            mlflow_uri=(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}") if mlflow else None,
            log_every_n_steps=log_every_n_steps,
        )

    @property
    def active(self) -> bool:
        """Whether any tracker besides TensorBoard is configured."""
        return self.wandb_project is not None or self.mlflow_uri is not None

    def callbacks(self, stage: str = "search", *, name: Callable[[Any], str] | None = None) -> list[Any]:
        """Ray Tune's logger callbacks (TensorBoard needs none: the sweep writes it itself).

        ``stage``: ``search`` or ``confirm`` (the confirmation runs): W&B's job type, and MLflow's ``simmtm.stage`` tag.
        ``name(trial)``: a trial's run name (the sweep's own, which outlives a Tune run); default Tune's trial id.
        """
        name = name or (lambda trial: str(trial.trial_id))
        wandb = [self._wandb(stage, name)] if self.wandb_project is not None else []
        return wandb + ([self._mlflow(stage, name)] if self.mlflow_uri is not None else [])

    def _wandb(self, stage: str, name: Callable[[Any], str]) -> Any:
        from ray.air.integrations.wandb import WandbLoggerCallback

        Path(self.out).mkdir(parents=True, exist_ok=True)
        # the logging actors run in Ray's worker processes, whose environment is the one Ray started with: pass the
        # driver's WANDB_MODE (offline, disabled) on explicitly
        mode = {"mode": self.wandb_mode} if self.wandb_mode else {}
        job_type = "trial" if stage == "search" else stage
        study = self.study

        class TrialNamedWandb(WandbLoggerCallback):
            """Ray's callback; a trial's run id is the study and the trial's name (a resume continues the run)."""

            def log_trial_start(self, trial: Any) -> None:
                self.kwargs["id"] = f"{study}-{name(trial)}"  # read when the trial's run is created
                super().log_trial_start(trial)

        return TrialNamedWandb(project=self.wandb_project, group=self.study, dir=self.out, job_type=job_type, **mode)

    def _mlflow(self, stage: str, name: Callable[[Any], str]) -> Any:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        study_tags = {_STUDY_TAG: self.study, STAGE_TAG: stage}

        class TrialTaggedMLflow(MLflowLoggerCallback):
            """Ray's callback; each trial's run also carries the trial id, by which the trial finds it."""

            def log_trial_start(self, trial: Any) -> None:
                self.tags = {**study_tags, TRIAL_TAG: name(trial)}  # read when the trial's run is created
                super().log_trial_start(trial)

        return TrialTaggedMLflow(tracking_uri=self.mlflow_uri, experiment_name=self.study, tags=study_tags)


def tracker_callbacks(loggers: Sequence[str], *, study_name: str, out: str | Path) -> list[Any]:
    """Ray Tune callbacks for ``loggers`` (``Trackers.resolve(...).callbacks()``)."""
    return Trackers.resolve(loggers, study_name=study_name, out=out).callbacks()


# --- inside a trial ----------------------------------------------------------------------------------------------

Steps = Sequence[tuple[int, Mapping[str, float]]]  # (optimiser step, scalars), as the training loop reads them
_Sink = Callable[[Steps], None]


class _Writer:
    """Batches of steps, written to W&B and MLflow from a background thread (the caller only hands them on).

    The thread opens the tracker runs on its first batch (``_wandb``/``_mlflow``: a sink, or None when that tracker
    is not configured) and writes each batch as one call per tracker; ``close`` waits for the rest. A tracker that
    fails is logged once and dropped: tracking never fails a run.
    """

    def __init__(self, trackers: Trackers, *, name: str) -> None:
        self.trackers = trackers
        self.name = name  # for log lines: "trial <id>", "run <dir>"
        self._queue: queue.SimpleQueue[Steps | None] = queue.SimpleQueue()
        self._closers: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._drain, name=f"trackers-{name}", daemon=True)
        self._thread.start()

    def put(self, steps: Steps) -> None:
        if steps:
            self._queue.put(steps)

    def close(self) -> None:
        """Send what is queued and end the tracker runs (waits up to a couple of minutes for a slow store)."""
        self._queue.put(None)
        self._thread.join(_CLOSE_S)
        if self._thread.is_alive():
            log.warning("%s: the trackers did not take the last steps within %.0f s", self.name, _CLOSE_S)

    def _drain(self) -> None:
        sinks: dict[str, _Sink] | None = None
        while (steps := self._queue.get()) is not None:
            if sinks is None:
                sinks = self._open()
            for name, sink in list(sinks.items()):
                try:
                    sink(steps)
                except Exception as exc:  # a tracker's own failure (network, store): keep training
                    log.warning("%s: %s stopped taking metrics: %s", self.name, name, exc)
                    del sinks[name]
        for closer in self._closers:
            try:
                closer()
            except Exception as exc:
                log.warning("%s: closing a tracker run failed: %s", self.name, exc)

    def _open(self) -> dict[str, _Sink]:
        sinks: dict[str, _Sink] = {}
        for name, opener in (("wandb", self._wandb), ("mlflow", self._mlflow)):
            try:
                sink = opener()
            except Exception as exc:
                log.warning("%s: cannot open the %s run: %s", self.name, name, exc)
                continue
            if sink is not None:
                sinks[name] = sink
        return sinks

    def _wandb(self) -> _Sink | None:
        raise NotImplementedError

    def _mlflow(self) -> _Sink | None:
        if self.trackers.mlflow_uri is None:
            return None
        from mlflow.tracking import MlflowClient  # lazy: MLflow is an extra

        client = MlflowClient(tracking_uri=self.trackers.mlflow_uri)
        return _mlflow_sink(client, self._mlflow_run(client))

    def _mlflow_run(self, client: Any) -> str:
        """The id of the MLflow run this writer logs its steps to."""
        raise NotImplementedError


def _mlflow_sink(client: Any, run_id: str) -> _Sink:
    from mlflow.entities import Metric

    def log_steps(steps: Steps) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(v), now, step) for step, values in steps for key, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch takes at most 1000 metrics per call
            client.log_batch(run_id, metrics=metrics[start : start + 1000])

    return log_steps


def _wandb_sink(run: Any) -> _Sink:
    def log_steps(steps: Steps) -> None:
        for step, values in steps:
            run.log(dict(values), step=step)

    return log_steps


class TrialSteps(_Writer):
    """A trial's per-step pre-training scalars, sent to W&B and MLflow (a ``simmtm.train.history.StepLog``).

    Created on the trial's main worker only; every ``log_every_n_steps``-th step goes on.
    """

    def __init__(self, trackers: Trackers, *, trial_id: str, trial_name: str, params: Mapping[str, Any]) -> None:
        self.trial_id = trial_id
        self.trial_name = trial_name
        self.params = dict(params)
        super().__init__(trackers, name=f"trial {trial_id}")

    def __call__(self, steps: Steps) -> None:
        every = self.trackers.log_every_n_steps
        self.put([(step, values) for step, values in steps if step % every == 0])

    def _wandb(self) -> _Sink | None:
        trackers = self.trackers
        if trackers.wandb_project is None:
            return None
        from ray.air.integrations.wandb import setup_wandb

        if trackers.wandb_mode:
            # setup_wandb asks for an API key unless WANDB_MODE says offline/disabled in this process's environment
            os.environ["WANDB_MODE"] = trackers.wandb_mode
            mode = {"mode": trackers.wandb_mode}
        else:
            mode = {}
        run = setup_wandb(
            config={**self.params, "trial_id": self.trial_id},
            rank_zero_only=False,  # only the main worker creates a TrialSteps
            trial_id=f"{trackers.study}-{self.trial_id}-steps",
            trial_name=f"{self.trial_name} steps",
            project=trackers.wandb_project,
            group=trackers.study,
            dir=trackers.out,
            job_type="pretrain-steps",
            resume="allow",  # a restored trial continues its companion run
            **mode,
        )
        self._closers.append(run.finish)
        return _wandb_sink(run)

    def _mlflow_run(self, client: Any) -> str:
        """The callback's run of this trial: the newest running run tagged with its trial id."""
        deadline = time.monotonic() + _FIND_RUN_S
        while True:
            experiment = client.get_experiment_by_name(self.trackers.study)
            if experiment is not None:
                runs = client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"tags.`{TRIAL_TAG}` = '{self.trial_id}' and attributes.status = 'RUNNING'",
                    order_by=["attributes.start_time DESC"],
                    max_results=1,
                )
                if runs:
                    return runs[0].info.run_id
            if time.monotonic() > deadline:
                raise LookupError(
                    f"no running MLflow run tagged {TRIAL_TAG}={self.trial_id} in experiment {self.trackers.study!r}"
                )
            time.sleep(0.5)


# --- one run, outside a sweep ----------------------------------------------------------------------------------


class RunTrackers(_Writer):
    """A ``simmtm pretrain``/``finetune``/``run`` run in W&B and MLflow (``tune.loggers`` of its config).

    One tracker run per run folder (``stage``: pretrain, finetune or baseline; W&B's job type and MLflow's
    ``simmtm.stage`` tag), in the W&B group and MLflow experiment ``trackers.study``, with the flat run config as
    its parameters. It is a ``StepLog`` (per-step pre-training scalars, with the optimiser step as the step) and a
    ``Report`` (each epoch's metrics, at the epoch's last optimiser step). The step axis never goes back, and each
    epoch has a step of its own: fine-tuning's later horizons, whose steps count from 0 again, continue after the
    last step logged (W&B drops a step below the run's last, and merges two reports at one step into one row).
    """

    def __init__(self, trackers: Trackers, *, run_name: str, stage: str, params: Mapping[str, Any]) -> None:
        self.run_name = run_name
        self.stage = stage
        self.params = dict(params)
        self._last_step = -1  # the last step logged
        self._last_epoch = -1  # the step of the last epoch reported
        super().__init__(trackers, name=f"run {run_name}")

    def __call__(self, steps: Steps) -> None:
        self.put(steps)
        if steps:
            self._last_step = max(self._last_step, steps[-1][0])

    def report(self, metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
        step = max(int(metrics.get("step", 0)), self._last_step)
        step = step if step > self._last_epoch else self._last_epoch + 1
        self._last_step = self._last_epoch = step
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.put([(step, values)])

    def _wandb(self) -> _Sink | None:
        if self.trackers.wandb_project is None:
            return None
        import wandb

        Path(self.trackers.out).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.trackers.wandb_project,
            group=self.trackers.study,
            job_type=self.stage,
            name=self.run_name,
            dir=self.trackers.out,
            config=self.params,
            mode=self.trackers.wandb_mode or None,  # type: ignore[arg-type]
            reinit="create_new",  # one run per run folder, also when a process makes several (`simmtm run`)
            settings=wandb.Settings(quiet=True),  # the CLI owns the terminal: no run summary after the run
        )
        self._closers.append(run.finish)
        return _wandb_sink(run)

    def _mlflow_run(self, client: Any) -> str:
        """A new run named for this run folder, with its parameters, ended when the writer closes."""
        from mlflow.entities import Param  # lazy: MLflow is an extra

        experiment = client.get_experiment_by_name(self.trackers.study)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.trackers.study)
        run = client.create_run(experiment_id, run_name=self.run_name, tags={STAGE_TAG: self.stage})
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in self.params.items()]
        for start in range(0, len(params), 100):  # log_batch takes at most 100 parameters per call
            client.log_batch(run_id, params=params[start : start + 100])
        self._closers.append(lambda: client.set_terminated(run_id))
        return run_id
