"""Tune's saved state, made safe to resume after a ``kill -9`` of the driver.

Tune writes its state (trials, search generator, searcher) into a staging folder on the driver and copies it to the
experiment folder in a background thread; a trial's old checkpoint is deleted as soon as a newer one is registered.
A driver killed at the wrong instant therefore leaves an experiment folder that Tune cannot resume from:

- a state file cut short mid-copy (Tune then logs "Failed to restore the run state" and *starts the experiment
  over*, with none of the sweep's config: every trial fails, and the Optuna study gets a second set of trials);
- files from two different saves (the copy had reached some of them);
- a trial whose recorded checkpoint was already deleted in favour of a newer one that the state never saw (Tune
  fails that trial: "Could not recover from checkpoint as it does not exist on storage anymore").

Three pieces close those gaps:

- ``StateSnapshot``, a Tune callback, copies the staging folder's newest state files after every save, in the
  driver's own loop (so never mid-write), into ``DIR/.tune-state/<experiment>/snap-<n>`` (renamed into place: a
  snapshot is whole or absent);
- ``repair_state``, run before ``Tuner.restore``, puts the snapshot back when the experiment folder's state is cut
  short, mixed or older, and renames a trial's newest checkpoint to the path its state recorded when that one is gone;
- ``refuse_fresh_start`` turns Tune's silent start-over into an error that names the cause.

A remote experiment folder (``tune.storage_path`` a URI) is left to Tune; the guard still applies.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from simmtm.errors import UserError

__all__ = ["StateSnapshot", "repair_state", "refuse_fresh_start", "snapshot_dir", "STATE_PATTERNS"]

log = logging.getLogger(__name__)

# What Tune reads when it resumes: the newest file of each kind (TuneController, SearchGenerator, Searcher,
# BasicVariantGenerator, CallbackList). ``tuner.pkl`` is written once, before any trial, and is not among them.
STATE_PATTERNS = (
    "experiment_state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
)
_EXPERIMENT_STATE = STATE_PATTERNS[0]
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")
# Tune's words when its resume fails, just before it starts the experiment again from nothing.
_RESTORE_FAILED = "Failed to restore the run state."


def snapshot_dir(out: Path, experiment: str) -> Path:
    """Where the snapshots of the experiment ``experiment`` of the sweep in ``out`` live."""
    return Path(out) / ".tune-state" / experiment


def _local(experiment_dir: str) -> Path | None:
    path = experiment_dir.removeprefix("file://")
    return None if "://" in path else Path(path)


def _newest(directory: Path) -> dict[str, Path]:
    """The newest file of each kind in ``directory`` (Tune reads the newest by name); one listing, every step."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    found = {}
    for pattern in STATE_PATTERNS:
        matching = fnmatch.filter(names, pattern)
        if matching:
            found[pattern] = directory / max(matching)
    return found


def _load(pattern: str, data: bytes) -> Any:
    """Decode a state file as Tune will; raises on a file cut short."""
    from ray import cloudpickle

    if pattern == _EXPERIMENT_STATE:
        from ray.tune.utils.serialization import _loads_with_cloudpickle

        return _loads_with_cloudpickle(data)
    return cloudpickle.loads(data)


def _decode(files: dict[str, Path]) -> tuple[dict[str, bytes], dict[str, Any], dict[str, str]]:
    """Each file's bytes, what it decodes to, and why the ones that do not decode fail (each file read once)."""
    raw, decoded, broken = {}, {}, {}
    for pattern, path in files.items():
        raw[pattern] = path.read_bytes()
        try:
            decoded[pattern] = _load(pattern, raw[pattern])
        except Exception as exc:  # a file cut short: EOF, bad JSON, a truncated pickle
            broken[pattern] = f"{path.name}: {type(exc).__name__}: {exc}"
    return raw, decoded, broken


def _iteration(decoded: dict[str, Any]) -> int:
    """The controller's step count at the save these files come from (-1: unknown)."""
    try:
        return int(decoded[_EXPERIMENT_STATE]["runner_data"].get("_iteration", -1))
    except (KeyError, TypeError, ValueError):
        return -1


class StateSnapshot(Callback):
    """Copies Tune's newest state files from the driver's staging folder after each save, whole or not at all."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self._seen: tuple | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._snapshot(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._snapshot(trials)  # after Tune's final save

    def _snapshot(self, trials: list) -> None:
        if not trials:
            return
        try:
            staging = Path(trials[0].storage.experiment_driver_staging_path)
            files = _newest(staging)
            key = tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files.values())
            if not files or key == self._seen:
                return
            directory = Path(self.directory)
            tmp = directory / f".tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for path in files.values():
                shutil.copy2(path, tmp / path.name)
            index = 1 + max((int(p.name[5:]) for p in directory.glob("snap-*") if p.name[5:].isdigit()), default=0)
            tmp.rename(directory / f"snap-{index}")  # whole or absent
            for old in directory.glob("snap-*"):
                if old.name != f"snap-{index}":
                    shutil.rmtree(old, ignore_errors=True)
            self._seen = key
        except OSError as exc:  # a snapshot is insurance: never stop the sweep for it
            log.warning("could not snapshot Tune's state into %s: %s", self.directory, exc)


def _latest_snapshot(directory: Path) -> Path | None:
    snaps = [p for p in directory.glob("snap-*") if p.name[5:].isdigit()]
    return max(snaps, key=lambda p: int(p.name[5:])) if snaps else None


def repair_state(experiment_dir: str, snapshots: Path) -> list[str]:
    """Make Tune's saved state in ``experiment_dir`` resumable; return what was changed, in words.

    Raises ``UserError`` when a state file is cut short and neither a snapshot nor an older file can stand in.
    """
    local = _local(experiment_dir)
    if local is None or not local.is_dir():
        return []
    notes = _repair_files(local, Path(snapshots))
    notes += _repair_checkpoints(local)
    for note in notes:
        log.warning("resume: %s", note)
    return notes


def _repair_files(local: Path, snapshots: Path) -> list[str]:
    stored = _newest(local)
    stored_raw, stored_state, broken = _decode(stored)
    snap = _latest_snapshot(snapshots)
    snap_files = _newest(snap) if snap is not None else {}
    snap_raw, snap_state, snap_broken = _decode(snap_files)
    snap_ok = bool(snap_files) and not snap_broken
    same = snap_ok and all(
        pattern in stored and stored[pattern].name == path.name and stored_raw[pattern] == snap_raw[pattern]
        for pattern, path in snap_files.items()
    )
    if snap_ok and not same and (broken or _iteration(snap_state) >= _iteration(stored_state)):
        for pattern, path in snap_files.items():
            for later in sorted(local.glob(pattern)):  # Tune reads the newest name: none may outrank the snapshot's
                if later.name > path.name:
                    os.replace(later, later.with_name(later.name + ".superseded"))
            tmp = local / f".{path.name}.tmp"
            tmp.write_bytes(snap_raw[pattern])
            os.replace(tmp, local / path.name)
        reason = f"cut short ({'; '.join(broken.values())})" if broken else "from two different saves, or older"
        return [f"Tune's saved state in {local} was {reason}; put back the driver's last snapshot ({snap})"]
    notes = []
    for pattern in broken:  # no snapshot to stand in: fall back to the previous run's file, if any
        path = stored[pattern]
        if len(list(local.glob(pattern))) < 2:
            raise UserError(
                f"--resume: Tune's saved state {path} is cut short (its driver was killed while saving it) and no "
                f"snapshot in {snapshots} can replace it; the sweep cannot continue from {local}. Start a new sweep "
                "(another --out), or --warm-start it from this folder's finished trials"
            )
        aside = path.with_name(path.name + ".cut-short")
        os.replace(path, aside)
        notes.append(f"{path.name} was cut short (moved to {aside.name}); Tune resumes from the previous run's state")
    return notes


def _repair_checkpoints(local: Path) -> list[str]:
    """A trial Tune will resume whose recorded checkpoint is gone: rename its newest checkpoint to that path."""
    from ray.tune.experiment.trial import Trial, _TrainingRunMetadata

    files = _newest(local)
    if _EXPERIMENT_STATE not in files:
        return []
    state = _load(_EXPERIMENT_STATE, files[_EXPERIMENT_STATE].read_bytes())
    notes = []
    for trial_json, metadata_json in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            continue  # not resumed
        latest = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager.latest_checkpoint_result
        if latest is None:
            continue
        # Where Tune will look: the folder may have moved since (Tune re-bases the path on the experiment folder).
        recorded = local / trial.storage.trial_dir_name / Path(latest.checkpoint.path).name
        if recorded.exists():
            continue
        newer = sorted(
            (int(m.group(1)), p)
            for p in recorded.parent.glob("checkpoint_*")
            if (m := _CHECKPOINT_DIR.search(p.name)) and p.is_dir()
        )
        match = _CHECKPOINT_DIR.search(recorded.name)
        if not newer or match is None or newer[-1][0] <= int(match.group(1)):
            log.warning("resume: trial %s's checkpoint %s is gone and no newer one exists", trial.trial_id, recorded)
            continue
        os.replace(newer[-1][1], recorded)
        notes.append(
            f"trial {trial.trial_id}: its recorded checkpoint {recorded.name} had been replaced by "
            f"{newer[-1][1].name} before Tune's state was saved; resuming from {newer[-1][1].name}"
        )
    return notes


class _RefuseFreshStart(logging.Filter):
    def __init__(self, experiment_dir: str) -> None:
        super().__init__()
        self.experiment_dir = experiment_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == _RESTORE_FAILED:
            cause = record.exc_info[1] if record.exc_info else None
            raise UserError(
                f"--resume: Tune could not read its saved state in {self.experiment_dir} "
                f"({type(cause).__name__}: {cause}); it would start the sweep over without its config, so simmtm "
                "stops here. Start a new sweep (another --out), or --warm-start it from this folder's finished trials"
            )
        return True


@contextlib.contextmanager
def refuse_fresh_start(experiment_dir: str) -> Iterator[None]:
    """While Tune restores ``experiment_dir``, make its "Failed to restore ... Restarting experiment." an error."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    guard = _RefuseFreshStart(experiment_dir)
    logger.addFilter(guard)
    try:
        yield
    finally:
        logger.removeFilter(guard)
