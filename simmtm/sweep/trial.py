"""One sweep trial as a plain function: ``trial_loop(trial, report=...)``.

A trial pre-trains with the searched parameters and, every ``probe_every`` epochs, scores the in-memory encoder
with a cheap linear probe (``simmtm.finetune.run`` in probe mode) on the validation split. That probe score is what
ASHA prunes on; it is reported with a checkpoint, so a restored or retried trial resumes from its own last probe.
A trial that survives ends with a full fine-tune whose validation score is its result. The test split is never
touched here (the driver scores it once, for the best configurations only).

``trial_loop`` takes any ``report`` callable, so it runs the same steps inside Tune (``simmtm.sweep.trainable``),
inside every Ray Train worker of a multi-worker trial (``simmtm.sweep.multiworker``) and outside Ray (tests).

A trial's Tune config holds ``sweep`` (the ``TrialSpec`` every trial shares, as plain data), ``repeat`` (the seed
index) and one entry per searched dotted key; ``Trial.from_config`` validates it once, where the trial starts.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from simmtm.config import RunConfig, parse_config
from simmtm.config_keys import apply_params
from simmtm.reporting import tune_trial_id
from simmtm.runtime import Runtime
from simmtm.sweep.spec import TrialSpec, probe_key
from simmtm.trackers import TrialSteps
from simmtm.training import TrainingDiverged

__all__ = ["Trial", "trial_loop", "probe_config", "probe_score", "TRIAL_RESERVED_KEYS"]

log = logging.getLogger(__name__)

TRIAL_RESERVED_KEYS = ("sweep", "repeat")

# What a trial reports to: probe, placeholder and final results (metrics, or a stage name), each with the state to
# checkpoint or None (``simmtm.reporting.tune_report`` and ``RayReport`` are two).
TrialReport: TypeAlias = Callable[[Mapping[str, Any], dict[str, Any] | None], None]


@dataclass(frozen=True)
class Trial:
    """One trial: the shared spec, its searched values (by dotted key) and its repeat index (the seed offset)."""

    spec: TrialSpec
    params: dict[str, Any]
    repeat: int = 0
    trial_id: str | None = None  # set by a multi-worker trial for its workers; None: ask Tune

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Trial:
        """Validate a trial's Tune config (``sweep``, ``repeat`` and the searched values)."""
        spec = config["sweep"]
        return cls(
            spec=spec if isinstance(spec, TrialSpec) else TrialSpec.model_validate(spec),
            params={k: v for k, v in config.items() if k not in TRIAL_RESERVED_KEYS and k != "trial_id"},
            repeat=int(config.get("repeat", 0)),
            trial_id=config.get("trial_id"),
        )

    def to_config(self) -> dict[str, Any]:
        """The plain-data form Ray passes to a trial (or a Train worker)."""
        extra = {"trial_id": self.trial_id} if self.trial_id is not None else {}
        return {"sweep": self.spec.model_dump(mode="json"), "repeat": self.repeat, **self.params, **extra}

    def run_config(self, *, pin_threads: bool = True) -> RunConfig:
        return self.spec.run_config(self.params, self.repeat, pin_threads=pin_threads)


def trial_loop(
    trial: Trial | Mapping[str, Any],
    *,
    report: TrialReport | None = None,
    resume: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Pre-train with probes, then fine-tune; ``report(metrics, state_or_None)`` receives every score.

    ``resume`` (the trial's latest checkpoint) continues an interrupted trial. With a data-parallel
    ``runtime`` (a Ray Train worker) every rank calls this: rank 0 probes and fine-tunes on its own device while
    the other ranks report placeholders, so every rank reports the same number of times.
    """
    from simmtm import finetune, pretrain
    from simmtm.runtime import LocalRuntime, no_report

    started = time.time()
    if not isinstance(trial, Trial):
        trial = Trial.from_config(trial)
    spec = trial.spec
    metric = spec.metric
    report = report or no_report
    run_cfg = trial.run_config()
    trial_id = trial.trial_id or tune_trial_id()
    if resume is not None:
        log.info("trial %s resumes after pre-training epoch %s", trial_id, resume.get("epoch"))
    if resume is not None and "sweep_final" in resume:  # it had finished when the driver stopped: say so again
        result = dict(resume["sweep_final"])
        report(result, None)
        return result
    is_main = runtime is None or runtime.is_main
    local = None if runtime is None else LocalRuntime(runtime.device)  # probes and fine-tunes run on one process
    run_dir = Path(spec.tb_dir) / trial_id if spec.tb_dir and is_main else None
    recorder = _ProbeRecorder(run_cfg, spec, report, run_dir=run_dir, resume=resume, is_main=is_main, runtime=local)
    steps = _trial_steps(trial, trial_id) if is_main else None
    try:
        pretrain.run(
            run_cfg,
            recorder,
            run_dir=run_dir / "pretrain" if run_dir else None,
            resume=resume,
            runtime=runtime,
            checkpoints=False,  # Tune keeps the trial's checkpoint (from the reported state): one copy, not two
            step_log=steps,
        )
        if recorder.last_epoch is None:
            raise RuntimeError("pre-training ended without a single epoch")
        if recorder.probed_epoch != recorder.last_epoch:
            recorder.probe_and_report(recorder.last_epoch)  # the last epoch always gets a probe (and a checkpoint)
        epoch = int(recorder.last_epoch)
        if not is_main:
            result = {"stage": "final", "epoch": epoch}
            report(result, None)
            return result
        final = finetune.run(run_cfg, pretrained=recorder.last_state, runtime=local, score_test=spec.score_test)
        score, test = float(final[metric]), metric.removeprefix("val_")
        if not math.isfinite(score):
            raise TrainingDiverged(f"the fine-tuned {metric} is {score}; lower finetune.lr or the searched ranges")
        result = {
            metric: score,
            "stage": "final",
            "epoch": epoch,
            **{
                f"final_{k}": float(v)
                for k, v in final.items()
                if k.startswith("val_") and k != metric and isinstance(v, float)
            },
            **({f"test_{test}": float(final[test])} if spec.score_test else {}),  # test_mse: scored once
            f"last_{probe_key(metric)}": recorder.last_probe,
            "trial_wall_s": time.time() - started,
        }
        recorder.write_scalars(epoch, {metric: score}, prefix="final/")
    finally:
        recorder.close_writer()
        if steps is not None:  # after the fine-tune: the trackers take the last steps meanwhile
            steps.close()
    # The final report carries a checkpoint too: a trial restored after this point does not run again.
    assert recorder.last_state is not None  # pre-training reported at least one epoch
    report(result, {**recorder.last_state, "sweep_final": result})
    return result


def _trial_steps(trial: Trial, trial_id: str) -> TrialSteps | None:
    """The W&B/MLflow runs that take the trial's per-step pre-training losses (``tune.loggers``), or None."""
    trackers = trial.spec.trackers
    if trackers is None:
        return None
    params = {**trial.params, "repeat": trial.repeat}
    return TrialSteps(trackers, trial_id=trial_id, trial_name=trial_id, params=params)  # the sweep names trials by id


class _ProbeRecorder:
    """The ``report`` given to ``pretrain.run``: keeps the latest state and probes every ``probe_every`` epochs."""

    def __init__(
        self,
        run_cfg: RunConfig,
        spec: TrialSpec,
        report: TrialReport,
        *,
        run_dir: Path | None,
        resume: dict[str, Any] | None,
        is_main: bool = True,
        runtime: Runtime | None = None,
    ) -> None:
        self.run_cfg = run_cfg
        self.spec = spec
        self.report = report
        self.is_main = is_main
        self.runtime = runtime
        self.last_state = resume
        self.last_epoch = int(resume["epoch"]) if resume is not None else None
        self.probed_epoch = self.last_epoch  # a checkpoint is always written with a probe
        self.last_probe = (resume or {}).get("sweep_probe")
        self._writer = None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "scores"))

    def __call__(self, metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
        self.last_epoch = int(metrics["epoch"])
        if state is not None:
            self.last_state = state
        if self.last_epoch % self.spec.probe_every == 0:
            self.probe_and_report(self.last_epoch, metrics)

    def probe_and_report(self, epoch: int, pretrain_metrics: Mapping[str, float] | None = None) -> None:
        self.probed_epoch = epoch
        if not self.is_main:
            self.report({"stage": "probe", "epoch": epoch}, None)
            return
        metric = self.spec.metric
        started = time.time()
        state = self.last_state
        assert state is not None  # pre-training reports a state with every epoch
        score = probe_score(
            self.run_cfg,
            state,
            metric=metric,
            steps=self.spec.probe_steps,
            val_batches=self.spec.probe_val_batches,
            runtime=self.runtime,
            overrides=self.spec.probe_overrides,
            mode=self.spec.prune_on,
        )
        pre = pretrain_metrics or state.get("metrics", {})
        result = {
            probe_key(metric): score,
            "stage": "probe",
            "epoch": epoch,
            "probe_s": time.time() - started,
            **{f"pretrain_{k}": float(v) for k, v in pre.items() if k.startswith(("train_", "val_"))},
        }
        self.write_scalars(epoch, {k: v for k, v in result.items() if k != "epoch" and k != "stage"}, prefix="probe/")
        self.last_probe = score
        self.report(result, {**state, "sweep_probe": score})

    def write_scalars(self, step: int, values: Mapping[str, Any], *, prefix: str) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(prefix + key, value, step)
        self._writer.flush()

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def probe_config(
    run_cfg: RunConfig,
    *,
    steps: int,
    val_batches: int,
    overrides: Mapping[str, Any] | None = None,
    mode: str = "probe",
) -> RunConfig:
    """The config of a rung score: one short epoch on the first horizon, plus ``tune.probe_overrides``; ``mode``
    probe freezes the encoder (a linear probe), finetune trains it too (``tune.prune_on: finetune``)."""
    raw = apply_params(run_cfg.model_dump(mode="json"), dict(overrides or {}))
    cfg = parse_config(raw, source="tune.probe_overrides")
    cfg.finetune.mode = "probe" if mode == "probe" else "full"
    cfg.finetune.epochs = 1
    cfg.finetune.max_steps = steps
    cfg.finetune.val_batches = val_batches
    cfg.finetune.horizons = cfg.finetune.horizons[:1]  # the first horizon ranks encoders; all of them at the end
    return cfg


def probe_score(
    run_cfg: RunConfig,
    state: dict[str, Any],
    *,
    metric: str,
    steps: int,
    val_batches: int,
    runtime: Any = None,
    overrides: Mapping[str, Any] | None = None,
    mode: str = "probe",
) -> float:
    """The validation score of the rung (a linear probe, or with ``mode`` finetune a short fine-tune) on the
    in-memory state."""
    from simmtm import finetune

    cfg = probe_config(run_cfg, steps=steps, val_batches=val_batches, overrides=overrides, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = finetune.run(cfg, pretrained=state, runtime=runtime, score_test=False)
    score = float(out[metric])
    if not math.isfinite(score):
        raise TrainingDiverged(f"the probe's {metric} is {score} at epoch {state['epoch']}; lower finetune.lr")
    return score
