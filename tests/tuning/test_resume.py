"""Nothing lost: a sweep interrupted by Ctrl-C or by kill -9 of its driver continues with --resume from its own
record (the Optuna study and the trial folders), even with Ray Tune's folder deleted: finished trials are not run
again, the trial that was running continues from its own checkpoint, and the result equals an uninterrupted sweep's.

The driver that a test interrupts runs as `simmtm sweep` in its own process group (with its own local Ray). Ctrl-C
reaches the whole group, as from a terminal; kill -9 hits the driver alone, as a crash would, and the test then
cleans up what is left of that group before it resumes. What nothing interrupts (the uninterrupted sweep to compare
with, the resumes) runs the CLI in this process, on the suite's shared Ray.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from studies import study_of

from simmtm.cli import main
from simmtm.tuning.outputs import read_trials_csv

pytestmark = pytest.mark.slow

SEARCH = {"method": "tpe", "params": {
    "pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
    "pretrain.num_masked": {"type": "int", "low": 1, "high": 4},
}}
ENV = {**os.environ, "RAY_memory_monitor_refresh_ms": "0"}


def _events(out: Path) -> list[dict]:
    path = out / "timing.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _sweep_cmd(path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simmtm", "sweep", str(path), "--out", str(out), "--quiet-table", *extra]


def _start(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(_sweep_cmd(path, out), env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(driver: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert driver.poll() is None, f"the sweep ended before {what}: {driver.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"not in time: {what}"
        time.sleep(0.1)


def _sweep(path: Path | None, out: Path, *extra: str) -> int:
    """``simmtm sweep [PATH] --out OUT --quiet-table EXTRA`` in this process (the test's ``shared_ray``)."""
    return main(["sweep", *([str(path)] if path else []), "--out", str(out), "--quiet-table", *extra])


def _stop_group(driver: subprocess.Popen) -> None:
    """What the driver started (its local Ray) shares its process group: stop it, by that group's id."""
    time.sleep(1)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _study_record(out: Path) -> list[tuple]:
    return [(t.number, t.state.name, t.value, t.params, t.intermediate_values, t.user_attrs["trial_id"])
            for t in study_of(out).get_trials()]


def _table(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_trials_csv(out / "trials.csv")]


def _weights(out: Path, trial: str) -> dict[str, torch.Tensor]:
    return torch.load(out / "trials" / trial / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.timeout(900)  # three sweeps of five trials, one after the other
def test_a_driver_killed_mid_trial_resumes_without_tunes_folder_to_the_uninterrupted_result(
    tiny_sweep, tmp_path, shared_ray
):
    """kill -9 of the driver while trial 1 is between epochs, DIR/ray deleted, --resume: trials.csv, the study and
    the killed trial's final weights equal those of the same sweep run without interruption (exact). ASHA prunes
    on the way, so the rung values after the resume include the trials reported before the kill."""
    path = tiny_sweep(SEARCH, tune={"num_samples": 5, "max_concurrent_trials": 1, "probe_every": 1, "test_top_k": 1,
                                    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}},
                      run={"pretrain": {"epochs": 4}})
    whole = tmp_path / "whole"
    assert _sweep(path, whole) == 0
    states = {r["trial_id"]: r["state"] for r in read_trials_csv(whole / "trials.csv")}
    assert states["trial-0001"] == "COMPLETE" and "PRUNED" in states.values()  # ASHA pruned after the victim

    out, victim = tmp_path / "out", "trial-0001"  # the uninterrupted sweep ran it to the end
    driver = _start(path, out)
    try:  # the victim has a checkpoint (an epoch done) and no result: it is between epochs
        _wait_for(driver, lambda: (out / "trials" / victim / "checkpoint.pt").is_file(), "trial 1 checkpointed")
        assert not (out / "trials" / victim / "result.json").exists()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        _stop_group(driver)
    assert not (out / "trials.csv").exists()
    finished_before = {e["trial_id"] for e in _events(out) if e["event"] == "end"}
    assert "trial-0000" in finished_before and victim not in finished_before
    shutil.rmtree(out / "ray")  # Tune's folder is disposable

    assert _sweep(path, out, "--resume") == 0
    resumed = json.loads((out / "trials" / victim / "result.json").read_text())["resumed_from"]
    assert resumed >= 1  # the victim continued from its own checkpoint, not from scratch
    assert json.loads((whole / "trials" / victim / "result.json").read_text())["resumed_from"] is None
    assert _table(out) == _table(whole)
    assert _study_record(out) == _study_record(whole)
    mine, theirs = _weights(out, victim), _weights(whole, victim)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    for trial in finished_before:  # nothing finished ran again: one "start" event each
        assert sum(e["event"] == "start" and e["trial_id"] == trial for e in _events(out)) == 1, trial


def test_ctrl_c_leaves_a_partial_table_and_resume_finishes_every_trial_once(
    tiny_sweep, tmp_path: Path, shared_ray
) -> None:
    path = tiny_sweep(SEARCH, tune={"num_samples": 6, "scheduler": {"type": "fifo"}}, run={"pretrain": {"epochs": 4}})
    out = tmp_path / "out"
    driver = _start(path, out)
    try:
        _wait_for(driver, lambda: sum(e["event"] == "end" for e in _events(out)) >= 2, "two trials finished")
        os.killpg(driver.pid, signal.SIGINT)  # a terminal sends SIGINT to the whole foreground group
        assert driver.wait(timeout=120) == 130  # the CLI says how to resume
    finally:
        _stop_group(driver)
    rows = read_trials_csv(out / "trials.csv")
    assert {r["state"] for r in rows} - {"COMPLETE"}  # a partial table: some trials were not done
    finished_before = {r["trial_id"] for r in rows if r["state"] == "COMPLETE"}

    assert _sweep(path, out, "--resume") == 0
    table = read_trials_csv(out / "trials.csv")
    assert len(table) == 6 and {r["state"] for r in table} == {"COMPLETE"}
    assert finished_before <= {r["trial_id"] for r in table}
    for trial in finished_before:
        assert sum(e["event"] == "start" and e["trial_id"] == trial for e in _events(out)) == 1, trial
    study = study_of(out)
    assert sorted(t.user_attrs["trial_id"] for t in study.get_trials()) == sorted(r["trial_id"] for r in table)
    assert all(t.value == pytest.approx(float(r["score"])) for t, r in zip(study.get_trials(), table))


def test_resume_with_trial_folders_under_a_storage_uri_outside_out(shared_ray, tiny_sweep, tmp_path: Path) -> None:
    """tune.storage_path a URI (file:// here, s3:// on a cluster): trial folders and Tune's folder live there, and
    --resume reads them back from there (nothing runs again)."""
    from simmtm.tuning.driver import run_sweep

    store = tmp_path / "bucket"
    path = tiny_sweep(SEARCH, tune={"num_samples": 2, "scheduler": {"type": "fifo"}, "test_top_k": 1,
                                    "storage_path": f"file://{store}"})
    out = tmp_path / "out"
    first = run_sweep(path, out, verbose=0)
    assert first.finished and (store / "ray").is_dir() and not (out / "ray").exists()
    assert sorted(p.name for p in (store / "trials").iterdir()) == ["trial-0000", "trial-0001"]
    assert all(r.test_score is not None for r in first.best)  # scored from the trial's checkpoint at the URI
    started = [e["trial_id"] for e in _events(out) if e["event"] == "start"]

    again = run_sweep(path, out, resume=True, verbose=0)
    assert again.finished
    assert {r.trial_id: r.score for r in again.rows} == {r.trial_id: r.score for r in first.rows}
    assert [e["trial_id"] for e in _events(out) if e["event"] == "start"] == started  # nothing ran again


def _ctrl_c_when_the_first_trial_ends(monkeypatch) -> list[str]:
    """A real SIGINT to this process (Tune's own Ctrl-C handler takes it) when the sweep's first trial ends, sent by
    a Tune callback of the sweep; returns the list that gets the trial's name."""
    from simmtm.tuning import driver
    from simmtm.tuning.record import name_of

    sent: list[str] = []

    class CtrlCAfterFirstTrial(driver.TrialClock):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            super().on_trial_complete(iteration, trials, trial, **info)
            if not sent:
                sent.append(name_of(trial))
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(driver, "TrialClock", CtrlCAfterFirstTrial)
    return sent


def test_ctrl_c_between_two_trials_is_an_interrupted_sweep(tiny_sweep, tmp_path: Path, shared_ray, monkeypatch,
                                                           capsys) -> None:
    """Ctrl-C when a trial has just ended and the next has not started (one trial at a time): each trial so far is
    finished, the search is not; the sweep exits 130 and writes no best.yaml (it was taken for a finished sweep of
    one trial), and --resume runs the rest."""
    path = tiny_sweep(SEARCH, tune={"num_samples": 2, "max_concurrent_trials": 1, "scheduler": {"type": "fifo"},
                                    "test_top_k": 0}, run={"pretrain": {"epochs": 1}})
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        sent = _ctrl_c_when_the_first_trial_ends(patched)
        assert _sweep(path, out) == 130
    assert "continue it with: simmtm sweep --resume" in capsys.readouterr().err
    assert [e["trial_id"] for e in _events(out) if e["event"] == "end"] == sent == ["trial-0000"]
    assert not (out / "best.yaml").exists() and [r["state"] for r in read_trials_csv(out / "trials.csv")] == ["COMPLETE"]
    assert _sweep(None, out, "--resume") == 0
    assert [r["state"] for r in read_trials_csv(out / "trials.csv")] == ["COMPLETE"] * 2 and (out / "best.yaml").is_file()


def test_a_sweep_resumed_with_a_new_time_budget_stops_by_that_budget(tiny_sweep, tmp_path: Path, shared_ray,
                                                                    monkeypatch, caplog) -> None:
    """`--resume --set tune.time_budget_s=...` (one of the keys a resume may change): the continued run keeps the
    new budget (sweep.yaml records it) and stops by it, counted from the resume, where the first run's hour would
    have let it run all its 200 trials; the trials it cut short end PRUNED with the reason in the study. The first
    run is stopped by Ctrl-C once a trial has ended, in this process on the shared Ray."""
    # a tiny trial takes 0.2-5 s, two at a time (a trial is under way whenever the budget runs out, so one is cut):
    # 200 need minutes. 30 s: on the 2 shared cores, beside a second test process and a cold kernel build, a 15 s
    # budget once ran out before the resumed sweep's first trial ended.
    many, budget = 200, 30.0
    path = tiny_sweep(SEARCH, tune={"num_samples": many, "scheduler": {"type": "fifo"}, "time_budget_s": 3600,
                                    "test_top_k": 0}, run={"pretrain": {"epochs": 2}})
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        _ctrl_c_when_the_first_trial_ends(patched)
        assert _sweep(path, out) == 130
    assert yaml.safe_load((out / "sweep.yaml").read_text())["tune"]["time_budget_s"] == 3600
    before = len(_events(out))

    resumed_at = time.time()
    with caplog.at_level(logging.INFO):
        assert _sweep(None, out, "--resume", "--set", f"tune.time_budget_s={budget:g}") == 0
    assert f"resuming with tune.time_budget_s={budget:g}" in caplog.text
    assert yaml.safe_load((out / "sweep.yaml").read_text())["tune"]["time_budget_s"] == budget  # the saved spec
    after = _events(out)[before:]
    assert all(e["time"] >= resumed_at for e in after)
    assert [e for e in after if e["event"] == "end"], "the resumed sweep ran no trial to its end"
    starts = [e["time"] for e in after if e["event"] == "start"]
    assert max(starts) - min(e["time"] for e in after) < budget + 10  # no trial starts once the budget is spent
    rows = read_trials_csv(out / "trials.csv")
    assert len(rows) < many and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    cut = [t for t in study_of(out).get_trials() if "time_budget_s" in t.user_attrs.get("reason", "")]
    assert cut and all(t.state.name == "PRUNED" for t in cut)
