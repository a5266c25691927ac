"""Run-directory policy: what ``--out`` may already hold, and when a run resumes, restarts or refuses.

One place for the kinds of output directory the CLI writes: a pre-training run (resumed unless ``--overwrite``), a
fine-tuning run (replaced only with ``--overwrite``), the folder of ``simmtm run``, a sweep (continued only with
``--resume`` and the same resolved sweep file) and an analysis report. Every refusal is a ``UserError`` naming
``--out``.

Every folder has one owner at a time (``own``: the lock of ``simmtm.outdir.folder_lock``, taken after the target was
checked writable by ``simmtm.outdir.write_targets``). The owner's lock file and process record are never counted as
contents of the folder.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from simmtm.config.keys import diff_keys
from simmtm.config.schema import RunConfig
from simmtm.errors import UserError
from simmtm.outdir.folder_lock import LOCK_FILE, FolderLock
from simmtm.outdir.process_record import RECORD_FILE
from simmtm.outdir.write_targets import check_output_folder

__all__ = [
    "RESUMABLE_CHANGES",
    "RUN_FILES",
    "SWEEP_FILES",
    "prepare_pretrain_dir",
    "check_resumable_config",
    "guard_finetune_dir",
    "prepare_sweep_dir",
    "OWNER_FILES",
    "own",
    "check_run_all_dir",
    "check_report_dir",
    "check_export_dir",
    "REPORT_FILES",
]

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption (more epochs, a larger step cap).
RESUMABLE_CHANGES = {
    "pretrain.epochs",
    "pretrain.max_steps",
    "threads",
    "device",
    "data.num_workers",
    "precision",
    "compile",
    "log_every",
    "loggers",
}
# The local stores of a run's `loggers: [wandb, mlflow]` (simmtm.train.trackers): W&B's offline runs, MLflow's database.
TRACKER_FILES = {"wandb", "mlflow.db"}
# What a run directory may hold (`ray`: a distributed run's Ray Train storage); anything else means --out points at
# somebody else's folder.
RUN_FILES = {"config.yaml", "checkpoints", "tb", "history.jsonl", "metrics.json", "ray", *TRACKER_FILES}
# What a sweep directory may hold (`ray`: Tune's experiment folder).
SWEEP_FILES = {
    "sweep.yaml",
    "sweep.json",
    "optuna.db",
    "trials.csv",
    "best.yaml",
    "best",
    "tb",
    "ray",
    "timing.json",
    "timing.jsonl",
    # SQLite's rollback journal (or WAL) beside optuna.db: left by a driver killed mid-write, rolled back on open
    "optuna.db-journal",
    "optuna.db-wal",
    "optuna.db-shm",
    "trials",  # each trial's checkpoint, result and error (simmtm.tuning.record)
    "confirm",  # the confirmation stage's Ray experiment (disposable)
    ".tune-state",  # copies of Tune's state that sweeps before the trial folders kept (no longer written)
    "confirmation.json",
    "wandb",  # tune.loggers: wandb (offline runs)
    "mlflow.db",  # tune.loggers: mlflow (the local store)
}


# The owner's lock and its record of the processes it started: never contents of a folder.
OWNER_FILES = {LOCK_FILE, RECORD_FILE}
# What `simmtm run DIR` writes; what `simmtm analyze --out` writes.
RUN_ALL_FILES = {"pretrain", "finetune", "baseline", "summary.yaml", *TRACKER_FILES}
REPORT_FILES = {"report.html", "figures", "recommendation.json"}


def _entries(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} - OWNER_FILES if out.is_dir() else set()


def own(out: Path, *, option: str = "--out") -> FolderLock:
    """Check ``out`` writable and take it for this process: ``with own(out): ...`` (FolderBusy: somebody has it)."""
    check_output_folder(out, option=option)
    return FolderLock(out)


def check_run_all_dir(out: Path) -> None:
    """``simmtm run DIR`` writes DIR/pretrain, DIR/finetune, DIR/baseline and DIR/summary.yaml, and nothing else."""
    foreign = _entries(out) - RUN_ALL_FILES
    if foreign:
        held = ", ".join(sorted(foreign))
        raise UserError(f"--out {out}: not a `simmtm run` folder (holds {held}); choose another --out")


def check_report_dir(out: Path) -> None:
    """``simmtm analyze --out`` replaces an earlier report only: refuse a run, a sweep or anybody else's folder."""
    foreign = _entries(out) - REPORT_FILES
    if foreign:
        raise UserError(
            f"--out {out}: not an analysis report folder (holds {', '.join(sorted(foreign))}); "
            "choose an empty or new folder"
        )


def check_export_dir(out: Path, files: set[str], is_export: Callable[[Path], bool]) -> None:
    """``simmtm export --out`` replaces an earlier export only (``files``, and ``is_export(out)`` says its
    description is simmtm's): a user's folder, even one holding a README.md, is refused."""
    check_output_folder(out)
    entries = _entries(out)
    if entries and (entries - files or not is_export(out)):
        raise UserError(
            f"--out {out}: not a simmtm export folder (holds {', '.join(sorted(entries))}); "
            "choose an empty or new folder"
        )


def _empty(out: Path, entries: set[str]) -> None:
    for name in entries:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


# --- pre-training -------------------------------------------------------------------------------------------


def prepare_pretrain_dir(out: Path, config: RunConfig, *, restart: bool) -> dict[str, Any] | None:
    """Decide between a fresh start and resumption; return the state to resume from, or None.

    Refuses (UserError) a directory that holds something other than a simmtm run, or a run whose config differs
    in more than the epoch budget, unless ``restart``.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    entries = _entries(out)
    if not entries:
        return None
    if not entries <= RUN_FILES:
        raise UserError(
            f"--out {out}: not empty and not a simmtm run directory (holds "
            f"{', '.join(sorted(entries - RUN_FILES))}); choose another --out"
        )
    if restart:
        _empty(out, entries)
        return None
    from simmtm.train.checkpoint import (  # torch: only for commands that train
        PRETRAIN_KIND,
        latest_checkpoint,
        load_state,
    )

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    state = load_state(ckpt)
    if state.get("kind") != PRETRAIN_KIND:
        raise UserError(f"--out {out}: holds a {state.get('kind', 'foreign')} checkpoint, not a pre-training run")
    _refuse_changed(out, state["config"], config)
    return state


def check_resumable_config(out: Path, config: RunConfig, *, restart: bool) -> None:
    """A distributed run writes config.yaml before its first checkpoint: refuse to resume it with another config."""
    path = out / "config.yaml"
    if restart or not path.is_file():
        return
    _refuse_changed(out, yaml.safe_load(path.read_text()) or {}, config)


def _refuse_changed(out: Path, saved: dict[str, Any], config: RunConfig) -> None:
    """Resuming may change only what does not alter the run (epochs, threads, device, ...)."""
    changed = sorted(k for k in diff_keys(saved, config.run_dict()) if k not in RESUMABLE_CHANGES)
    if changed:
        raise UserError(
            f"--out {out}: holds a run with a different config ({', '.join(changed)}); pass --overwrite to "
            "discard it or choose another --out"
        )


# --- fine-tuning --------------------------------------------------------------------------------------------


def guard_finetune_dir(out: Path, *, overwrite: bool) -> None:
    """Empty ``out`` for a fine-tuning run: only with ``overwrite``, and only when it is a simmtm run."""
    if out.exists() and (not out.is_dir() or _entries(out)):
        if not overwrite:
            raise UserError(
                f"--out {out}: already exists and is not empty; pass --overwrite to replace it or choose another --out"
            )
        if not (out / "metrics.json").exists() and not (out / "config.yaml").exists():
            raise UserError(f"--out {out}: not a simmtm run directory; refusing to overwrite it")
        _empty(out, _entries(out))  # its owner's lock stays


# --- sweeps -------------------------------------------------------------------------------------------------


def prepare_sweep_dir(
    out: Path,
    resolved: dict[str, Any],
    *,
    resume: bool,
    sweep_file: Path,
    earlier: Callable[[], dict[str, Any]],
    can_restore: Callable[[], bool],
) -> bool:
    """Check --out against --resume; return True when there is a sweep to continue.

    ``resolved``: the resolved sweep file, compared with ``earlier()`` (the sweep being resumed, as its
    ``sweep.yaml`` holds it). ``can_restore``: whether the sweep's study holds trials (its database may live outside
    ``out``).
    """
    entries = _entries(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not resume:
        if entries:
            what = "an earlier sweep; pass --resume to continue it" if "sweep.json" in entries else "other files"
            raise UserError(f"--out {out}: already holds {what}, or choose another --out")
        return False
    if not (out / "sweep.yaml").is_file():
        raise UserError(f"--resume: {out} holds no sweep (no sweep.yaml); run without --resume to start one")
    if not entries <= SWEEP_FILES:
        raise UserError(f"--out {out}: holds files a sweep does not write ({', '.join(sorted(entries - SWEEP_FILES))})")
    changed = diff_keys(earlier(), resolved)
    if changed:
        raise UserError(
            f"--resume: {sweep_file} differs from the sweep in {out} ({', '.join(changed[:5])}); resume with the same "
            "file and --set values, or start a new --out"
        )
    if can_restore():
        return True
    log.info("%s: the earlier sweep stopped before its first trial (its study is empty); starting it afresh", out)
    _empty(out, entries - {"sweep.yaml", "sweep.json"})
    return False
