"""One pre-training or fine-tuning into its run folder, in this process or on Ray Train workers, with the W&B and
MLflow runs of its ``loggers``: what ``simmtm.api.pretrain``, ``finetune`` and ``run`` do once the config is resolved.

The caller owns the folder (``rundir.own``) and has checked ``--out``; each function checks its inputs before it
writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simmtm.cluster.resources import Scaling
from simmtm.config.keys import flatten
from simmtm.config.schema import RunConfig
from simmtm.errors import UserError
from simmtm.outdir.rundir import check_resumable_config, own, prepare_pretrain_dir
from simmtm.train.history import read_history
from simmtm.train.trackers import RunTrackers, Trackers

__all__ = [
    "finetune_here",
    "headline",
    "no_distributed_options",
    "pretrain_here",
    "pretrain_workers",
    "tracker_targets",
]


def no_distributed_options(
    *,
    address: str | None,
    storage: str | None,
    gpus_per_worker: float,
    cpus_per_worker: float,
    max_failures: int,
    placement: str,
) -> None:
    """A run without workers takes no distributed option: each one set is a UserError naming its flag."""
    given = {
        "--address": address is not None,
        "--storage": storage is not None,
        "--gpus-per-worker": gpus_per_worker != 0.0,
        "--cpus-per-worker": cpus_per_worker != 1.0,
        "--max-failures": max_failures != 2,
        "--placement": placement != "PACK",
    }
    for flag, set_ in given.items():
        if set_:
            raise UserError(f"{flag} applies to distributed runs only; add --workers N")


def tracker_targets(cfg: RunConfig, *, store: Path) -> Trackers | None:
    """Where the W&B and MLflow runs of ``loggers`` go (their local stores in ``store``, grouped by its name); None:
    TensorBoard only. An unknown logger or a missing package is a UserError here, before anything is written."""
    trackers = Trackers.resolve(cfg.loggers, study_name=store.resolve().name, out=store, key="loggers")
    return trackers if trackers.active else None


def pretrain_here(
    cfg: RunConfig, out: Path, *, targets: Trackers | None, overwrite: bool, progress: bool
) -> dict[str, float]:
    """Pre-train in this process; its per-step scalars and epochs also go to ``targets`` (``tracker_targets``)."""
    from simmtm.train import pretraining  # torch: when a run starts (`simmtm --help` imports this module)
    from simmtm.train.runtime import no_report

    pretraining.check_inputs(cfg)  # bad input fails before anything is written
    with own(out):  # one process per run folder
        resume = prepare_pretrain_dir(out, cfg, restart=overwrite)
        trackers = _open(targets, cfg, run=out, stage="pretrain")
        report = trackers.report if trackers else no_report
        try:
            return pretraining.run(cfg, report, run_dir=out, resume=resume, progress=progress, step_log=trackers)
        finally:
            if trackers:
                trackers.close()


def pretrain_workers(
    cfg: RunConfig,
    out: Path,
    scaling: Scaling,
    *,
    targets: Trackers | None,
    overwrite: bool,
    address: str | None,
    storage: str | None,
    max_failures: int,
) -> dict[str, Any]:
    """Pre-train on Ray Train workers, with the run-folder semantics of a run in this process."""
    from simmtm.cluster import distributed  # torch and Ray: when a run starts
    from simmtm.train import pretraining

    scaling.check(cfg)  # a bad worker count fails before anything is touched
    if max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {max_failures}")
    pretraining.check_inputs(cfg, world_size=scaling.workers)
    with own(out):
        resume = prepare_pretrain_dir(out, cfg, restart=overwrite)  # overwrite empties out (and the storage in it)
        resolved = distributed.resolve_storage(out, storage)
        if overwrite and storage:
            distributed.clear_run(resolved, distributed.run_name(out, resolved))
        check_resumable_config(out, cfg, restart=overwrite)
        trackers = _open(targets, cfg, run=out, stage="pretrain")
        metrics = distributed.pretrain_distributed(
            cfg, out=out, scaling=scaling, address=address, storage=resolved, max_failures=max_failures, resume=resume
        )
        if trackers:  # the workers' epochs, as the driver recorded them in history.jsonl (no per-step scalars)
            for record in read_history(out / "history.jsonl", kind="pretrain_epoch"):
                trackers.report(record)
            trackers.close()
        return metrics


def finetune_here(
    cfg: RunConfig, out: Path, *, pretrained: str | Path | None, targets: Trackers | None, progress: bool
) -> dict[str, Any]:
    """Fine-tune in this process (the caller owns ``out`` and has emptied it); its epochs also go to ``targets``."""
    from simmtm.train import finetuning  # torch: when a run starts
    from simmtm.train.runtime import no_report

    trackers = _open(targets, cfg, run=out, stage="finetune" if pretrained is not None else "baseline")
    try:
        report = trackers.report if trackers else no_report
        return finetuning.run(cfg, report, run_dir=out, pretrained=pretrained, progress=progress)
    finally:
        if trackers:
            trackers.close()


def _open(targets: Trackers | None, cfg: RunConfig, *, run: Path, stage: str) -> RunTrackers | None:
    if targets is None:
        return None
    return RunTrackers(targets, run_name=run.resolve().name, stage=stage, params=flatten(cfg.run_dict()))


def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scores of a fine-tuning worth a line: mse/mae (and per horizon) or accuracy/f1, rounded."""
    keys = ("mse", "mae", "accuracy", "f1")
    out = {k: round(float(metrics[k]), 6) for k in keys if k in metrics}
    for h, m in metrics.get("horizons", {}).items():
        out[f"mse_{h}"] = round(float(m["mse"]), 6)
        out[f"mae_{h}"] = round(float(m["mae"]), 6)
    return out
