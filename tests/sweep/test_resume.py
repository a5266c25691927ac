"""Nothing lost: a sweep interrupted by Ctrl-C or by kill -9 of its driver continues with --resume, re-running no
finished trial, and its Optuna study agrees with Tune's results.

The driver runs as `simmtm sweep` in its own process group (with its own local Ray). Ctrl-C reaches the whole
group, as from a terminal; kill -9 hits the driver alone, as a crash would, and the test then cleans up what is
left of that group before it resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState
from studies import study_of

from simmtm.sweep.outputs import read_trials_csv

pytestmark = pytest.mark.slow

SEARCH = {"method": "tpe", "params": {
    "pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
    "pretrain.num_masked": {"type": "int", "low": 1, "high": 4},
}}
TRIALS = 6


def _events(out: Path) -> list[dict]:
    path = out / "timing.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _sweep_cmd(path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simmtm", "sweep", str(path), "--out", str(out), "--quiet-table", *extra]


def _pretrain_epochs(out: Path, trial_id: str) -> list[int]:
    lines = (out / "tb" / trial_id / "pretrain" / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "pretrain_epoch"]


def _resumable_checkpoints(snapshot: Path) -> dict[str, Path]:
    """Trial -> the checkpoint Tune's state in ``snapshot`` records, for the trials a resume would continue."""
    from ray.tune.experiment.trial import Trial, _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    states = sorted(snapshot.glob("experiment_state-*.json"))
    found = {}
    for trial_json, metadata in _loads_with_cloudpickle(states[-1].read_bytes())["trial_data"] if states else []:
        trial = Trial.from_json_state(trial_json, stub=True)
        latest = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager.latest_checkpoint_result
        if trial.status not in (Trial.TERMINATED, Trial.ERROR) and latest is not None:
            found[trial.trial_id] = Path(latest.checkpoint.path)
    return found


def _newest_snapshot(out: Path) -> Path | None:
    snaps = sorted((out / ".tune-state" / "ray").glob("snap-*"), key=lambda p: int(p.name[5:]))
    return snaps[-1] if snaps else None


def _damage_as_a_kill_mid_save_would(out: Path) -> str | None:
    """What a driver killed while Tune copies its state leaves: state files cut short, and a trial whose recorded
    checkpoint was deleted for a newer one the state never saw. Returns that trial's id (None: no trial of the last
    snapshot has a checkpoint to resume from, or it had moved on already, its recorded checkpoint gone for real)."""
    for pattern in ("experiment_state-*.json", "searcher-state-*.pkl"):
        newest = sorted((out / "ray").glob(pattern))[-1]
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumable = _resumable_checkpoints(_newest_snapshot(out))  # the driver may have snapshotted once more
    if not resumable:
        return None
    trial_id, recorded = next(iter(resumable.items()))
    recorded = out / "ray" / trial_id / recorded.name
    newer = recorded.with_name(f"checkpoint_{int(recorded.name.split('_')[1]) + 1:06d}")
    if recorded.exists() and not newer.exists():
        recorded.rename(newer)
        return trial_id
    return None


@pytest.mark.parametrize("how", ["kill -9 of the driver", "kill -9 mid-save", "Ctrl-C"])
def test_an_interrupted_sweep_resumes_without_losing_or_rerunning_trials(tiny_sweep, tmp_path: Path, how: str) -> None:
    # fifo: every trial runs to the end, so the final count is known; 4 epochs make each trial last a few seconds.
    path = tiny_sweep(SEARCH, tune={"num_samples": TRIALS, "scheduler": {"type": "fifo"}}, run={"pretrain": {"epochs": 4}})
    out = tmp_path / "out"
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0"}
    driver = subprocess.Popen(_sweep_cmd(path, out), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while sum(e["event"] == "end" for e in _events(out)) < 2 or (  # two trials finished, others under way
            how == "kill -9 mid-save"  # and one of those with a checkpoint in the driver's last snapshot
            and not ((snap := _newest_snapshot(out)) and _resumable_checkpoints(snap))
        ):
            assert driver.poll() is None, f"the sweep ended before it could be interrupted: {driver.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.2)
        if how == "Ctrl-C":  # a terminal sends SIGINT to the whole foreground group: the driver and its Ray
            os.killpg(driver.pid, signal.SIGINT)
            assert driver.wait(timeout=120) == 130  # Tune saved its state; the CLI says how to resume
            rows = read_trials_csv(out / "trials.csv")
            assert {r["state"] for r in rows} - {"COMPLETE"}  # a partial table: some trials were not done
        else:  # the driver dies mid-sweep, without any chance to save
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
            assert not (out / "trials.csv").exists()
    finally:
        time.sleep(2)
        try:  # what the driver started (its local Ray) shares its process group: stop it, by that group's id
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished_before = {e["trial_id"] for e in _events(out) if e["event"] == "end"}
    assert len(finished_before) >= 2
    if how == "kill -9 mid-save":
        damaged = _damage_as_a_kill_mid_save_would(out)

    done = subprocess.run(_sweep_cmd(path, out, "--resume"), env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    if how == "kill -9 mid-save":  # Tune alone would start the sweep over, every trial failing for want of its config
        assert "put back the driver's last snapshot" in done.stderr, done.stderr[-3000:]
        assert damaged is None or f"trial {damaged}: its recorded checkpoint" in done.stderr, done.stderr[-3000:]
    assert "best r = " in done.stdout and "best M = " in done.stdout

    table = read_trials_csv(out / "trials.csv")
    rows = {r["trial_id"]: r for r in table if r["state"] == "COMPLETE"}
    assert len(rows) == TRIALS  # every trial Tune knew ran to the end, once
    orphans = {r["trial_id"] for r in table if r["state"] != "COMPLETE"}
    assert all(r["state"] == "FAILED" and "driver stopped" in r["error"] for r in table if r["trial_id"] in orphans)
    assert finished_before <= set(rows)  # nothing lost
    for trial_id in finished_before:  # and nothing finished re-run: one pre-training pass, epochs 1..4, once
        assert _pretrain_epochs(out, trial_id) == [1, 2, 3, 4], trial_id

    # The study agrees with Tune: every trial once, with its state and score; an Optuna trial that Tune never
    # recorded (asked in the instant before the kill) is marked FAIL with the reason.
    study = study_of(out)
    by_tune = {}
    for t in study.get_trials():
        tid = t.user_attrs.get("trial_id")
        assert tid not in by_tune
        by_tune[tid] = t
        if tid in orphans:
            assert t.state == TrialState.FAIL and "driver stopped" in t.user_attrs["reason"]
    assert set(by_tune) == set(rows) | orphans  # the study and trials.csv list the same trials
    by_tune = {tid: t for tid, t in by_tune.items() if tid in rows}
    for tid, t in by_tune.items():
        assert t.state == TrialState.COMPLETE and t.value == pytest.approx(float(rows[tid]["score"]))
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]


def test_resume_finds_tunes_state_under_a_storage_uri_outside_out(local_ray, tiny_sweep, tmp_path: Path) -> None:
    """With tune.storage_path a URI (file:// here, s3:// on a cluster), --resume restores from there: it must not
    look for DIR/ray, find nothing and start the sweep afresh."""
    from simmtm.sweep.driver import run_sweep

    store = tmp_path / "bucket"
    path = tiny_sweep(SEARCH, tune={"num_samples": 2, "scheduler": {"type": "fifo"}, "test_top_k": 0,
                                    "storage_path": f"file://{store}"})
    out = tmp_path / "out"
    first = run_sweep(path, out, verbose=0)
    assert first.finished and (store / "ray" / "tuner.pkl").is_file() and not (out / "ray").exists()
    started = [e["trial_id"] for e in _events(out) if e["event"] == "start"]

    again = run_sweep(path, out, resume=True, verbose=0)
    assert again.finished
    assert {r.trial_id: r.score for r in again.rows} == {r.trial_id: r.score for r in first.rows}
    assert [e["trial_id"] for e in _events(out) if e["event"] == "start"] == started  # nothing ran again
    study = study_of(out)
    assert sorted(t.user_attrs["trial_id"] for t in study.get_trials()) == sorted(r.trial_id for r in first.rows)


def test_a_sweep_resumed_with_a_new_time_budget_stops_by_that_budget(tiny_sweep, tmp_path: Path) -> None:
    """`--resume --set tune.time_budget_s=...` (one of the keys a resume may change): the continued run keeps the
    new budget (sweep.yaml records it) and Tune stops by it, counted from the resume, where the first run's hour would
    have let it run all its 200 trials."""
    many, budget = 200, 25.0  # a tiny trial takes 1-5 s, two at a time: 200 need minutes
    path = tiny_sweep(SEARCH, tune={"num_samples": many, "scheduler": {"type": "fifo"}, "time_budget_s": 3600,
                                    "test_top_k": 0}, run={"pretrain": {"epochs": 2}})
    out = tmp_path / "out"
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0"}
    driver = subprocess.Popen(_sweep_cmd(path, out), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while not any(e["event"] == "end" for e in _events(out)):  # one trial done: the sweep is under way
            assert driver.poll() is None, f"the sweep ended before it could be interrupted: {driver.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C
        assert driver.wait(timeout=120) == 130
    finally:
        time.sleep(2)
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = len(_events(out))
    assert yaml.safe_load((out / "sweep.yaml").read_text())["tune"]["time_budget_s"] == 3600

    resumed_at = time.time()
    done = subprocess.run([sys.executable, "-m", "simmtm", "sweep", "--resume", "--out", str(out), "--quiet-table",
                           "--set", f"tune.time_budget_s={budget:g}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming with tune.time_budget_s=25" in done.stderr
    assert yaml.safe_load((out / "sweep.yaml").read_text())["tune"]["time_budget_s"] == budget  # the saved spec
    after = _events(out)[before:]
    assert all(e["time"] >= resumed_at for e in after)
    ended = [e for e in after if e["event"] == "end"]
    assert ended, "the resumed sweep ran no trial to its end"  # it continued, on the new budget
    starts = [e["time"] for e in after if e["event"] == "start"]
    # Tune's clock starts with its first step after the restore: no trial starts once the budget is spent
    assert max(starts) - min(e["time"] for e in after) < budget + 10
    rows = read_trials_csv(out / "trials.csv")
    assert len(rows) < many and sum(r["state"] == "COMPLETE" for r in rows) < many  # the hour would have run them all
