"""One sweep trial as a plain function of a config dict: ``run_trial(config)``.

A trial pre-trains with the searched parameters and, every ``probe_every`` epochs, scores the in-memory encoder
with a cheap linear probe (``simmtm.finetune.run`` in probe mode) on the validation split. That probe score is what
ASHA prunes on; it is reported with a checkpoint, so a restored or retried trial resumes from its own last probe.
A trial that survives ends with a full fine-tune whose validation score is its result. The test split is never
touched here (the driver scores it once, for the best configurations only).

Inside Tune the function reports through ``ray.tune.report``; called outside Tune (tests, debugging) it runs the
same steps and returns the final result (``trial_loop`` takes any ``report`` callable). With ``workers > 1`` the
trial launches a TorchTrainer named after the trial id (``simmtm.sweep.multiworker``, on ``simmtm.distributed``),
whose reports reach Tune through ``TuneReportCallback``.

The config dict holds ``sweep`` (the constant part written by the driver, see ``trial_config``), ``repeat`` (the
seed index) and one entry per searched dotted key.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from simmtm.checkpoint import CHECKPOINT_FILE
from simmtm.config import RunConfig, parse_config
from simmtm.sweep.spec import apply_params

__all__ = ["run_trial", "trial_loop", "trial_config", "trial_run_config", "probe_config", "probe_score", "probe_key",
           "TRIAL_RESERVED_KEYS"]

log = logging.getLogger(__name__)

TRIAL_RESERVED_KEYS = ("sweep", "repeat")


def probe_key(metric: str) -> str:
    """The name under which probe scores are reported (``probe_val_mse``): ASHA prunes on it."""
    return f"probe_{metric}"


def trial_config(
    run: dict[str, Any], *, metric: str, probe_every: int = 1, probe_steps: int = 50, probe_val_batches: int = 1,
    probe_overrides: dict[str, Any] | None = None, tb_dir: str | None = None, workers: int = 1,
    cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, storage_path: str | None = None, max_failures: int = 0,
) -> dict[str, Any]:
    """The constant ``sweep`` entry of every trial's config (everything but the searched values and repeat)."""
    return {
        "run": run, "metric": metric, "probe_every": probe_every, "probe_steps": probe_steps,
        "probe_val_batches": probe_val_batches, "probe_overrides": dict(probe_overrides or {}), "tb_dir": tb_dir, "workers": workers,
        "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker, "storage_path": storage_path,
        "max_failures": max_failures,
    }


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of a trial config (its dotted keys)."""
    return {k: v for k, v in config.items() if k not in TRIAL_RESERVED_KEYS}


def trial_run_config(config: Mapping[str, Any], *, pin_threads: bool = True) -> RunConfig:
    """The run config one trial trains with: base run + searched values, seed shifted by the repeat index.

    ``pin_threads``: each worker uses as many torch threads as it holds CPUs (no oversubscription when several
    trials share a machine).
    """
    sweep = config["sweep"]
    raw = apply_params(sweep["run"], trial_params(config))
    raw["seed"] = int(raw.get("seed", 0)) + int(config.get("repeat", 0))
    if pin_threads:
        raw["threads"] = max(1, int(sweep.get("cpus_per_worker", 1)))
    return parse_config(raw, source="trial config")


# --- the Tune trainable ----------------------------------------------------------------------------------------


def run_trial(config: dict[str, Any]) -> dict[str, Any] | None:
    """Run one trial. Inside Tune it reports and returns None; outside it returns the final result."""
    in_tune = _in_tune()
    if in_tune:  # one line per checkpoint from Ray's own loggers drowns the trial table
        for name in ("ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if config["sweep"].get("workers", 1) > 1:
        from simmtm.sweep.multiworker import run_multi_worker_trial

        result = run_multi_worker_trial(config)
    else:
        result = trial_loop(config, report=_tune_report if in_tune else None)
    return None if in_tune else result


def trial_loop(
    config: Mapping[str, Any],
    *,
    report: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None,
    resume: dict[str, Any] | None = None,
    runtime: Any = None,
) -> dict[str, Any]:
    """Pre-train with probes, then fine-tune; ``report(metrics, state_or_None)`` receives every score.

    ``resume`` (or, inside Tune, the trial's latest checkpoint) continues an interrupted trial. With a data-parallel
    ``runtime`` (a Ray Train worker) every rank calls this: rank 0 probes and fine-tunes on its own device while
    the other ranks report placeholders, so every rank reports the same number of times.
    """
    from simmtm import finetune, pretrain
    from simmtm.runtime import LocalRuntime

    started = time.time()
    sweep = config["sweep"]
    metric = sweep["metric"]
    report = report or _no_report
    run_cfg = trial_run_config(config)
    if resume is None and report is _tune_report:
        resume = _tune_checkpoint_state()
    if resume is not None and "sweep_final" in resume:  # it had finished when the driver stopped: say so again
        result = dict(resume["sweep_final"])
        report(result, None)
        return result
    is_main = runtime is None or runtime.is_main
    local = None if runtime is None else LocalRuntime(runtime.device)  # probes and fine-tunes run on one process
    trial_id = sweep.get("trial_id") or _trial_id()
    run_dir = Path(sweep["tb_dir"]) / trial_id if sweep.get("tb_dir") and is_main else None
    recorder = _ProbeRecorder(run_cfg, sweep, report, run_dir=run_dir, resume=resume, is_main=is_main, runtime=local)
    try:
        pretrain.run(run_cfg, recorder, run_dir=run_dir / "pretrain" if run_dir else None, resume=resume, runtime=runtime)
        if recorder.last_epoch is None:
            raise RuntimeError("pre-training ended without a single epoch")
        if recorder.probed_epoch != recorder.last_epoch:
            recorder.probe_and_report(recorder.last_epoch)  # the last epoch always gets a probe (and a checkpoint)
        epoch = int(recorder.last_epoch)
        if not is_main:
            result = {"stage": "final", "epoch": epoch}
            report(result, None)
            return result
        final = finetune.run(run_cfg, pretrained=recorder.last_state, runtime=local, score_test=False)
        score = float(final[metric])
        if not math.isfinite(score):
            raise FloatingPointError(f"the fine-tuned {metric} is {score}")
        result = {
            metric: score, "stage": "final", "epoch": epoch,
            **{f"final_{k}": float(v) for k, v in final.items() if k.startswith("val_") and k != metric and isinstance(v, float)},
            f"last_{probe_key(metric)}": recorder.last_probe,
            "trial_wall_s": time.time() - started,
        }
        recorder.write_scalars(epoch, {metric: score}, prefix="final/")
    finally:
        recorder.close_writer()
    # The final report carries a checkpoint too: a trial restored after this point does not run again.
    report(result, {**recorder.last_state, "sweep_final": result})
    return result


class _ProbeRecorder:
    """The ``report`` given to ``pretrain.run``: keeps the latest state and probes every ``probe_every`` epochs."""

    def __init__(self, run_cfg: RunConfig, sweep: Mapping[str, Any], report, *, run_dir: Path | None,
                 resume: dict[str, Any] | None, is_main: bool = True, runtime: Any = None) -> None:
        self.run_cfg = run_cfg
        self.sweep = sweep
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
        if self.last_epoch % int(self.sweep.get("probe_every", 1)) == 0:
            self.probe_and_report(self.last_epoch, metrics)

    def probe_and_report(self, epoch: int, pretrain_metrics: Mapping[str, float] | None = None) -> None:
        self.probed_epoch = epoch
        if not self.is_main:
            self.report({"stage": "probe", "epoch": epoch}, None)
            return
        metric = self.sweep["metric"]
        started = time.time()
        state = self.last_state
        score = probe_score(self.run_cfg, state, metric=metric, steps=int(self.sweep.get("probe_steps", 50)),
                            val_batches=int(self.sweep.get("probe_val_batches", 1)), runtime=self.runtime,
                            overrides=self.sweep.get("probe_overrides"))
        pre = pretrain_metrics or state.get("metrics", {})
        result = {
            probe_key(metric): score, "stage": "probe", "epoch": epoch, "probe_s": time.time() - started,
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


def probe_config(run_cfg: RunConfig, *, steps: int, val_batches: int, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The config of a probe: frozen encoder, one short epoch, the first horizon, plus ``tune.probe_overrides``."""
    raw = apply_params(run_cfg.model_dump(mode="json"), dict(overrides or {}))
    cfg = parse_config(raw, source="tune.probe_overrides")
    cfg.finetune.mode = "probe"
    cfg.finetune.epochs = 1
    cfg.finetune.max_steps = steps
    cfg.finetune.val_batches = val_batches
    cfg.finetune.horizons = cfg.finetune.horizons[:1]  # the first horizon ranks encoders; all of them at the end
    return cfg


def probe_score(run_cfg: RunConfig, state: dict[str, Any], *, metric: str, steps: int, val_batches: int,
                runtime: Any = None, overrides: Mapping[str, Any] | None = None) -> float:
    """The validation score of a linear probe (frozen encoder, one short epoch) on the in-memory state."""
    from simmtm import finetune

    cfg = probe_config(run_cfg, steps=steps, val_batches=val_batches, overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = finetune.run(cfg, pretrained=state, runtime=runtime, score_test=False)
    score = float(out[metric])
    if not math.isfinite(score):
        raise FloatingPointError(f"the probe's {metric} is {score} at epoch {state['epoch']}")
    return score


# --- Tune plumbing ---------------------------------------------------------------------------------------------


def _no_report(metrics: Mapping[str, Any], state: dict[str, Any] | None = None) -> None:
    """Outside Tune: nothing to tell."""


def _in_tune() -> bool:
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


def _trial_id() -> str:
    if not _in_tune():
        return "local"
    import ray.tune

    return ray.tune.get_context().get_trial_id()


def _tune_report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    import ray.tune

    from simmtm.checkpoint import save_state

    if state is None:
        ray.tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="simmtm-ckpt-") as tmp:
        save_state(state, Path(tmp) / CHECKPOINT_FILE)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def _tune_checkpoint_state() -> dict[str, Any] | None:
    import ray.tune

    from simmtm.checkpoint import ray_checkpoint_state

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return None
    state = ray_checkpoint_state(checkpoint)
    log.info("trial %s resumes after pre-training epoch %d", _trial_id(), state["epoch"])
    return state
