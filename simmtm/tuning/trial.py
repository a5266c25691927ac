"""One sweep trial as a plain function: ``trial_loop(trial, report=...)``.

A trial pre-trains with the searched parameters and, every ``probe_every`` epochs, scores the in-memory encoder
with a cheap linear probe (``train.finetuning.run`` in probe mode) on the validation split. That probe score is what
ASHA prunes on; it is checkpointed into the trial's own folder (``simmtm.tuning.record``) before it is reported, so a
trial started again (a retry, a resumed sweep) continues from its own last probe.
A trial that survives ends with a full fine-tune whose validation score is its result. The test split is never
touched here (the driver scores it once, for the best configurations only).

``trial_loop`` takes any ``report`` callable, so it runs the same steps inside Tune (``simmtm.tuning.trainable``),
inside every Ray Train worker of a multi-worker trial (``simmtm.tuning.multiworker``) and outside Ray (tests).

A trial's Tune config holds ``sweep`` (the ``TrialSpec`` every trial shares, as plain data), ``repeat`` (the seed
index), ``number`` (its Optuna trial number) or ``name`` (a confirmation run), and one entry per searched dotted
key; ``Trial.from_config`` validates it once, where the trial starts.
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

from simmtm.config.keys import apply_params
from simmtm.config.schema import RunConfig, parse_config
from simmtm.train import finetuning, pretraining
from simmtm.train.runtime import LocalRuntime, Runtime, no_report
from simmtm.train.shared import TrainingDiverged
from simmtm.train.trackers import TrialSteps
from simmtm.tuning.record import TrialStore, trial_name, trials_root
from simmtm.tuning.spec import TrialSpec, probe_key

__all__ = ["Trial", "trial_loop", "probe_config", "probe_score", "TRIAL_RESERVED_KEYS"]

log = logging.getLogger(__name__)

TRIAL_RESERVED_KEYS = ("sweep", "repeat", "number", "name")

# What a trial reports to: probe, placeholder and final results (metrics, or a stage name); the second argument is
# always None here (the trial keeps its own checkpoint; ``train.reporting.tune_report`` and ``RayReport`` are two).
TrialReport: TypeAlias = Callable[[Mapping[str, Any], dict[str, Any] | None], None]


@dataclass(frozen=True)
class Trial:
    """One trial: the shared spec, its searched values (by dotted key), its repeat index (the seed offset) and its
    name: ``trial_name(number)`` for a search trial (its Optuna number), ``name`` for a confirmation run."""

    spec: TrialSpec
    params: dict[str, Any]
    repeat: int = 0
    number: int | None = None
    label: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Trial:
        """Validate a trial's Tune config (``sweep``, ``repeat``, ``number`` or ``name``, and the searched values)."""
        spec = config["sweep"]
        number = config.get("number")
        return cls(
            spec=spec if isinstance(spec, TrialSpec) else TrialSpec.model_validate(spec),
            params={k: v for k, v in config.items() if k not in TRIAL_RESERVED_KEYS},
            repeat=int(config.get("repeat", 0)),
            number=None if number is None else int(number),
            label=config.get("name"),
        )

    def to_config(self) -> dict[str, Any]:
        """The plain-data form Ray passes to a trial (or a Train worker)."""
        extra: dict[str, Any] = {"number": self.number} if self.number is not None else {}
        if self.label is not None:
            extra["name"] = self.label
        return {"sweep": self.spec.model_dump(mode="json"), "repeat": self.repeat, **self.params, **extra}

    @property
    def name(self) -> str:
        """The trial's folder, trials.csv row and tb/ run; ``local`` for a trial run by hand without one."""
        if self.number is not None:
            return trial_name(self.number)
        return self.label or "local"

    def store(self) -> TrialStore | None:
        """Where the trial keeps its checkpoint and result (``simmtm.tuning.record``); None: nowhere (by hand)."""
        if self.spec.storage_path is None or (self.number is None and self.label is None):
            return None
        return TrialStore(trials_root(self.spec.storage_path))

    def run_config(self, *, pin_threads: bool = True) -> RunConfig:
        return self.spec.run_config(self.params, self.repeat, pin_threads=pin_threads)


def trial_loop(
    trial: Trial | Mapping[str, Any],
    *,
    report: TrialReport | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Pre-train with probes, then fine-tune; ``report(metrics, None)`` receives every score.

    A trial with a folder (``Trial.store``) checkpoints there after every probe and continues from there when it is
    started again; once finished it writes its result there, and a later start reports that result instead of
    training again. With a data-parallel ``runtime`` (a Ray Train worker) every rank calls this: rank 0 writes the
    folder, probes and fine-tunes on its own device while the other ranks report placeholders, so every rank
    reports the same number of times.
    """
    if not isinstance(trial, Trial):
        trial = Trial.from_config(trial)
    report = report or no_report
    store = trial.store()
    is_main = runtime is None or runtime.is_main
    done = store.read_result(trial.name) if store is not None else None
    if done is not None:  # it had finished when the driver stopped: say so again
        placeholder: dict[str, Any] = {"stage": "final", "epoch": done.get("epoch")}
        report(done if is_main else placeholder, None)
        return done
    try:
        return _run(trial, report, store, runtime)
    except Exception as exc:
        if store is not None and is_main:  # the record keeps why it failed
            store.write_error(trial.name, f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise


def _run(trial: Trial, report: TrialReport, store: TrialStore | None, runtime: Runtime | None) -> dict[str, Any]:
    started = time.time()
    spec = trial.spec
    run_cfg = trial.run_config()
    resume = store.load_checkpoint(trial.name) if store is not None else None
    if resume is not None:
        log.info("trial %s resumes after pre-training epoch %s", trial.name, resume.get("epoch"))
    is_main = runtime is None or runtime.is_main
    local = None if runtime is None else LocalRuntime(runtime.device)  # probes and fine-tunes run on one process
    run_dir = Path(spec.tb_dir) / trial.name if spec.tb_dir and is_main else None
    recorder = _ProbeRecorder(
        run_cfg,
        spec,
        report,
        run_dir=run_dir,
        resume=resume,
        is_main=is_main,
        runtime=local,
        store=store,
        name=trial.name,
    )
    recorder.report_resumed()
    steps = _trial_steps(trial) if is_main else None
    try:
        pretraining.run(
            run_cfg,
            recorder,
            run_dir=run_dir / "pretrain" if run_dir else None,
            resume=resume,
            runtime=runtime,
            checkpoints=False,  # the trial's folder keeps its checkpoint (one copy, written with each probe)
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
        result = _final(run_cfg, spec, recorder, epoch, runtime=local, started=started)
    finally:
        recorder.close_writer()
        if steps is not None:  # after the fine-tune: the trackers take the last steps meanwhile
            steps.close()
    if store is not None:  # a trial started again after this point does not run again
        store.write_result(trial.name, result)
    report(result, None)
    return result


def _final(
    run_cfg: RunConfig, spec: TrialSpec, recorder: _ProbeRecorder, epoch: int, *, runtime: Any, started: float
) -> dict[str, Any]:
    """The full fine-tune on the last pre-trained state: the trial's final result."""
    metric = spec.metric
    final = finetuning.run(run_cfg, pretrained=recorder.last_state, runtime=runtime, score_test=spec.score_test)
    score, test = float(final[metric]), metric.removeprefix("val_")
    if not math.isfinite(score):
        raise TrainingDiverged(f"the fine-tuned {metric} is {score}; lower finetune.lr or the searched ranges")
    recorder.write_scalars(epoch, {metric: score}, prefix="final/")
    return {
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
        "probes": {str(k): v for k, v in recorder.probes.items()},
        "resumed_from": recorder.resumed_from,  # the pre-training epoch a start after a stop continued from
        "trial_wall_s": time.time() - started,
    }


def _trial_steps(trial: Trial) -> TrialSteps | None:
    """The W&B/MLflow runs that take the trial's per-step pre-training losses (``tune.loggers``), or None."""
    trackers = trial.spec.trackers
    if trackers is None:
        return None
    params = {**trial.params, "repeat": trial.repeat}
    return TrialSteps(trackers, trial_id=trial.name, trial_name=trial.name, params=params)


class _ProbeRecorder:
    """The ``report`` given to ``pretraining.run``: keeps the latest state and probes every ``probe_every`` epochs."""

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
        store: TrialStore | None = None,
        name: str = "local",
    ) -> None:
        self.run_cfg = run_cfg
        self.spec = spec
        self.report = report
        self.is_main = is_main
        self.runtime = runtime
        self.last_state = resume
        self.last_epoch = int(resume["epoch"]) if resume is not None else None
        self.resumed_from = self.last_epoch
        self.probed_epoch = self.last_epoch  # a checkpoint is always written with a probe
        self.last_probe = (resume or {}).get("sweep_probe")
        self.probes: dict[int, float] = dict((resume or {}).get("sweep_probes", {}))  # epoch -> probe score
        self.store, self.name = store, name
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
        self.probes[epoch] = score
        if self.store is not None:  # the checkpoint first: a report the driver saw always has its checkpoint
            self.store.save_checkpoint(self.name, {**state, "sweep_probe": score, "sweep_probes": self.probes})
        self.report(result, None)

    def report_resumed(self) -> None:
        """A trial started again reports its checkpoint's probe once more: the study may not have recorded it."""
        if self.probed_epoch is None or self.last_probe is None:
            return
        probe = {probe_key(self.spec.metric): self.last_probe} if self.is_main else {}
        self.report({**probe, "stage": "probe", "epoch": self.probed_epoch}, None)

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
    cfg = probe_config(run_cfg, steps=steps, val_batches=val_batches, overrides=overrides, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = finetuning.run(cfg, pretrained=state, runtime=runtime, score_test=False)
    score = float(out[metric])
    if not math.isfinite(score):
        raise TrainingDiverged(f"the probe's {metric} is {score} at epoch {state['epoch']}; lower finetune.lr")
    return score
