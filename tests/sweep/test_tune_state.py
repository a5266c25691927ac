"""Tune's saved state after a kill -9 mid-save: snapshots, the repair before a resume, and no silent start-over.

The files here are Tune's formats written by hand (an experiment state is JSON, the rest cloudpickle); the whole path
through a real sweep killed mid-save is in tests/sweep/test_resume.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import cloudpickle

from simmtm.errors import UserError
from simmtm.sweep.tune_state import StateSnapshot, refuse_fresh_start, repair_state

A, B = "2026-01-01_10-00-00", "2026-01-01_11-00-00"  # two driver sessions, B the later


def _experiment_state(iteration: int) -> bytes:
    return json.dumps({"trial_data": [], "runner_data": {"_iteration": iteration}, "stats": {}}).encode()


def _write_save(folder: Path, session: str, iteration: int) -> None:
    """One save of Tune's state: what TuneController.save_to_dir writes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{session}.json").write_bytes(_experiment_state(iteration))
    (folder / f"search_gen_state-{session}.json").write_bytes(cloudpickle.dumps({"counter": iteration}))
    (folder / f"searcher-state-{session}.pkl").write_bytes(cloudpickle.dumps({"asked": iteration}))


def _snapshot_of(folder: Path, snapshots: Path) -> None:
    staging = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(folder)))
    StateSnapshot(snapshots).on_step_end(iteration=0, trials=[staging])


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _iteration_in(folder: Path, session: str) -> int:
    return json.loads((folder / f"experiment_state-{session}.json").read_text())["runner_data"]["_iteration"]


def test_a_snapshot_holds_the_newest_save_whole_and_only_when_it_changed(tmp_path: Path) -> None:
    staging, snapshots = tmp_path / "staging", tmp_path / "snapshots"
    _write_save(staging, A, 3)
    _write_save(staging, B, 7)  # a resumed run's staging folder also holds the first run's files
    callback = StateSnapshot(snapshots)
    trials = [SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))]
    callback.on_step_end(iteration=1, trials=trials)
    assert sorted(p.name for p in snapshots.iterdir()) == ["snap-1"]
    assert sorted(p.name for p in (snapshots / "snap-1").iterdir()) == sorted(
        f"{kind}-{B}.{ext}" for kind, ext in (("experiment_state", "json"), ("search_gen_state", "json"),
                                              ("searcher-state", "pkl"))
    )
    callback.on_step_end(iteration=2, trials=trials)  # nothing saved since: no new snapshot
    assert sorted(p.name for p in snapshots.iterdir()) == ["snap-1"]
    _write_save(staging, B, 9)
    callback.on_experiment_end(trials=trials)
    assert sorted(p.name for p in snapshots.iterdir()) == ["snap-2"]  # the old one goes once the new one is whole
    assert _iteration_in(snapshots / "snap-2", B) == 9
    callback.on_step_end(iteration=3, trials=[])  # no trial yet: nothing to find the staging folder by
    assert sorted(p.name for p in snapshots.iterdir()) == ["snap-2"]


def test_a_state_file_cut_short_is_replaced_by_the_snapshot_of_the_same_save(tmp_path: Path) -> None:
    experiment, snapshots = tmp_path / "ray", tmp_path / "snapshots"
    _write_save(tmp_path / "staging", B, 7)
    _snapshot_of(tmp_path / "staging", snapshots)
    _write_save(experiment, B, 7)
    _cut_short(experiment / f"searcher-state-{B}.pkl")  # the background copy was writing it when the driver died
    notes = repair_state(str(experiment), snapshots)
    assert len(notes) == 1 and "cut short" in notes[0] and f"searcher-state-{B}.pkl" in notes[0]
    assert cloudpickle.loads((experiment / f"searcher-state-{B}.pkl").read_bytes()) == {"asked": 7}


def test_files_from_two_saves_are_replaced_by_the_later_snapshot_and_a_newer_state_is_kept(tmp_path: Path) -> None:
    experiment, snapshots = tmp_path / "ray", tmp_path / "snapshots"
    _write_save(experiment, B, 5)
    _write_save(tmp_path / "staging", B, 7)
    _snapshot_of(tmp_path / "staging", snapshots)
    # the copy of save 7 reached the experiment state only: it and the searcher's files disagree
    (experiment / f"experiment_state-{B}.json").write_bytes(_experiment_state(7))
    notes = repair_state(str(experiment), snapshots)
    assert len(notes) == 1 and "two different saves" in notes[0]
    assert cloudpickle.loads((experiment / f"search_gen_state-{B}.json").read_bytes()) == {"counter": 7}
    assert repair_state(str(experiment), snapshots) == []  # the same bytes now: nothing to do

    _write_save(experiment, B, 11)  # Tune's own final save came after the last snapshot: Tune's state stands
    assert repair_state(str(experiment), snapshots) == []
    assert _iteration_in(experiment, B) == 11


def test_a_later_run_whose_state_is_cut_short_gives_way_to_the_snapshot(tmp_path: Path) -> None:
    experiment, snapshots = tmp_path / "ray", tmp_path / "snapshots"
    _write_save(tmp_path / "staging", A, 4)
    _snapshot_of(tmp_path / "staging", snapshots)
    _write_save(experiment, A, 4)
    _write_save(experiment, B, 6)  # a resumed run that kept no snapshot, killed while copying its state
    _cut_short(experiment / f"experiment_state-{B}.json")
    notes = repair_state(str(experiment), snapshots)
    assert notes and "cut short" in notes[0]
    assert sorted(p.name for p in experiment.glob("experiment_state-*")) == [
        f"experiment_state-{A}.json", f"experiment_state-{B}.json.superseded"
    ]  # Tune reads the newest name: the cut file may no longer outrank the snapshot's


def test_without_a_snapshot_an_older_run_stands_in_or_the_resume_stops_with_the_file_named(tmp_path: Path) -> None:
    experiment = tmp_path / "ray"
    _write_save(experiment, A, 4)
    _write_save(experiment, B, 6)
    _cut_short(experiment / f"experiment_state-{B}.json")
    notes = repair_state(str(experiment), tmp_path / "no-snapshots")
    assert len(notes) == 1 and "previous run" in notes[0]
    assert (experiment / f"experiment_state-{B}.json.cut-short").exists()
    assert sorted(p.name for p in experiment.glob("experiment_state-*.json")) == [f"experiment_state-{A}.json"]

    only = tmp_path / "only"
    _write_save(only, A, 4)
    _cut_short(only / f"search_gen_state-{A}.json")
    with pytest.raises(UserError, match=f"search_gen_state-{A}.json is cut short.*--warm-start"):
        repair_state(str(only), tmp_path / "no-snapshots")
    assert repair_state("s3://bucket/sweep/ray", tmp_path / "no-snapshots") == []  # remote: Tune's own business


def test_tunes_silent_start_over_becomes_an_error_only_while_restoring() -> None:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    with pytest.raises(UserError, match=r"could not read its saved state in DIR/ray \(JSONDecodeError: Expecting value"):
        with refuse_fresh_start("DIR/ray"):
            try:
                json.loads('{"trial_data": [')
            except json.JSONDecodeError:
                logger.exception("Failed to restore the run state.")  # Tune's words, then "Restarting experiment."
    try:
        raise ValueError("x")
    except ValueError:
        logger.exception("Failed to restore the run state.")  # outside the guard: only logged
    with refuse_fresh_start("DIR/ray"):
        logger.error("Trial task failed for trial 1234")  # any other error passes through


def _trial_state(root: Path, trial_id: str, checkpoint: int | None, status: str = "PENDING") -> list[str]:
    """A trial as Tune saves it in experiment_state: its state and run metadata, with its latest checkpoint."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment.trial import Trial

    storage = StorageContext(storage_path=str(root), experiment_dir_name="ray", trial_dir_name=trial_id)
    trial = Trial("__fake", stub=True, trial_id=trial_id, storage=storage, config={"sweep": {}})
    trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])  # a stub gets none from its trainable
    if checkpoint is not None:
        path = root / "ray" / trial_id / f"checkpoint_{checkpoint:06d}"
        result = _TrainingResult(checkpoint=Checkpoint(str(path)), metrics={"training_iteration": checkpoint})
        trial.run_metadata.checkpoint_manager.register_checkpoint(result)
    trial.status = status
    return list(trial.get_json_state())


def test_a_resumed_trial_whose_recorded_checkpoint_was_replaced_resumes_from_the_newer_one(tmp_path: Path) -> None:
    experiment = tmp_path / "ray"
    trials = {  # trial -> (recorded checkpoint, checkpoints on disk, status)
        "raced": (2, [3], "PENDING"),  # Tune deleted 2 for 3, then died before saving a state that names 3
        "intact": (2, [2], "RUNNING"),
        "gone": (2, [], "PENDING"),  # nothing newer: left for Tune to report
        "done": (2, [3], "TERMINATED"),  # not resumed: not touched
    }
    for trial_id, (_, on_disk, _) in trials.items():
        for index in on_disk:
            (experiment / trial_id / f"checkpoint_{index:06d}").mkdir(parents=True)
            (experiment / trial_id / f"checkpoint_{index:06d}" / "checkpoint.pt").write_text(f"{trial_id} {index}")
    data = [_trial_state(tmp_path, t, recorded, status) for t, (recorded, _, status) in trials.items()]
    (experiment / f"experiment_state-{A}.json").write_text(
        json.dumps({"trial_data": data, "runner_data": {"_iteration": 3}, "stats": {}})
    )
    notes = repair_state(str(experiment), tmp_path / "no-snapshots")
    assert notes == [
        "trial raced: its recorded checkpoint checkpoint_000002 had been replaced by checkpoint_000003 before Tune's "
        "state was saved; resuming from checkpoint_000003"
    ]
    assert (experiment / "raced" / "checkpoint_000002" / "checkpoint.pt").read_text() == "raced 3"  # the newer state
    assert not (experiment / "raced" / "checkpoint_000003").exists()  # Tune writes its next checkpoint there
    assert (experiment / "intact" / "checkpoint_000002").is_dir()
    assert (experiment / "done" / "checkpoint_000003").is_dir() and not (experiment / "done" / "checkpoint_000002").exists()
