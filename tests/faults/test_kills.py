"""The fault suite, kills: ``kill -9`` at a random point of a pre-training, of a sweep driver, of a trial's worker
process and of one Ray Train worker. Each run resumes (or recovers by itself) with nothing lost and nothing run
twice. Every driver a test kills runs as a real ``simmtm`` command in its own session; a test stops only what it
started. What no test kills (the resumes, the second of two drivers, the driver whose Ray Train worker is killed) runs
in this process, on the suite's shared Ray.

The kill points are drawn from ``$SIMMTM_FAULT_SEED`` (a fresh seed when unset); a failure message names the seed.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from tensorboard_view import scalars

from simmtm.cli import main
from simmtm.config.schema import parse_config

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SIMMTM_FAULT_SEED") or random.SystemRandom().randrange(2**31))
ENV = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(f"{SEED}/{request.node.name}")


# --- processes ------------------------------------------------------------------------------------------------


def simmtm(*args: str, log: Path) -> subprocess.Popen:
    """``python -m simmtm ARGS`` in its own session (a kill of it reaches nothing else), output to ``log``."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "simmtm", *args],
            env=ENV,
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def resume_in_process(argv: list[str]) -> int:
    """``simmtm ARGV --resume`` in this process, on the suite's shared Ray (the test's ``shared_ray``): a resume
    that no test kills needs no interpreter and no Ray of its own."""
    return main([*argv, "--resume"])


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for(what: str, ready: Callable[[], Any], proc: subprocess.Popen, log: Path, timeout: float = 180) -> Any:
    deadline = time.time() + timeout
    while True:
        value = ready()
        if value:
            return value
        assert proc.poll() is None, (
            f"seed {SEED}: ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        )
        assert time.time() < deadline, f"seed {SEED}: no {what} within {timeout} s"
        time.sleep(0.05)


def stop_session(proc: subprocess.Popen, known: list[psutil.Process]) -> None:
    """Kill what this test started and is still alive: the session's group and the processes seen in it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in known:
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def titled(pid: int, prefix: str) -> list[psutil.Process]:
    """The descendants of process ``pid`` (a driver) whose title starts with ``prefix`` (Ray names its workers
    ray::Class.method)."""
    found = []
    for p in descendants(pid):
        try:
            if " ".join(p.cmdline()).startswith(prefix):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


# --- reading a run --------------------------------------------------------------------------------------------


def history(run: Path, kind: str) -> list[dict[str, Any]]:
    path = run / "history.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows if r.get("kind") == kind]


def checkpoint(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def tiny_run(make_config, csv: Path, tmp_path: Path, **pretrain: Any) -> Path:
    """A tiny pre-training config with dropout (so the random-number state matters) and several epochs."""
    raw = make_config(csv, {"model": {"dropout": 0.1}, "pretrain": {"epochs": 6, "max_steps": None, **pretrain}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- pre-training ---------------------------------------------------------------------------------------------


def epoch_seconds(run: Path) -> float:
    """How long one pre-training epoch of ``run`` took (history.jsonl's times)."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if r.get("kind") == "pretrain_epoch"]
    return (times[-1] - times[0]) / (len(times) - 1)


def test_a_pretraining_killed_at_a_random_point_resumes_bit_identical(
    make_config, tiny_csv: Path, tmp_path: Path, rng: random.Random, record_property
) -> None:
    """kill -9 of `simmtm pretrain` after a random number of epochs (0: before the first checkpoint) plus a random
    fraction of one; the same command again ends with the uninterrupted run's history, weights and step count to the
    bit, and TensorBoard holds each step once."""
    config = tiny_run(make_config, tiny_csv, tmp_path, epochs=10)
    whole, split, log = tmp_path / "whole", tmp_path / "split", tmp_path / "split.log"
    assert main(["pretrain", str(config), "--out", str(whole), "--no-progress"]) == 0
    epochs, one_epoch = len(history(whole, "pretrain_epoch")), epoch_seconds(whole)

    after = rng.randrange(epochs - 2)  # the fraction of an epoch below never reaches the last one
    proc = simmtm("pretrain", str(config), "--out", str(split), "--no-progress", log=log)
    try:
        wait_for(
            f"epoch {after}",
            lambda: (split / "config.yaml").is_file() and len(history(split, "pretrain_epoch")) >= after,
            proc,
            log,
        )
        time.sleep(rng.uniform(0, 1) * one_epoch)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, f"seed {SEED}: the run ended before the kill"
    finally:
        stop_session(proc, [])
    killed_at = len(history(split, "pretrain_epoch"))
    assert killed_at < epochs, f"seed {SEED}: killed after the last epoch"

    # TensorBoard orders a folder's event files by name (events.out.tfevents.<second>.<host>.<pid>...): a resume in
    # the killed run's second, from this process's lower pid, would sort first and have its steps purged by the
    # killed file's restart. A resumed command is a later process; wait for the next second as one would.
    written = [int(f.name.split(".")[3]) for f in (split / "tb").glob("events.out.tfevents.*")]
    time.sleep(max(0.0, max(written, default=0) + 1.05 - time.time()))
    # The resume kills nothing: it runs in this process, as the uninterrupted run did.
    assert main(["pretrain", str(config), "--out", str(split), "--no-progress"]) == 0

    # Each epoch once, with the uninterrupted run's numbers, and the same weights and optimiser state to the bit.
    where = f"seed {SEED}, killed after {killed_at}"
    assert [r["epoch"] for r in history(split, "pretrain_epoch")] == list(range(1, epochs + 1)), where
    assert history(split, "pretrain_epoch") == history(whole, "pretrain_epoch"), where
    a, b = checkpoint(whole), checkpoint(split)
    for key, tensor in a["model"].items():
        assert torch.equal(b["model"][key], tensor), f"{where}: {key} differs"
    assert b["epoch"] == a["epoch"] and b["step"] == a["step"]
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a), f"{where}: optimiser state differs"
    assert [s for s, _ in scalars(split / "tb")["pretrain/loss"]] == list(range(1, a["step"] + 1)), where
    record_property("faults", 1)


# --- a sweep: one trial's worker, then the driver -------------------------------------------------------------

TRIALS, TRIAL_EPOCHS = 4, 3


def trial_epochs(out: Path) -> dict[str, list[int]]:
    """Per trial folder under tb/: the pre-training epochs its history holds, in order."""
    found = {}
    for path in sorted((out / "tb").glob("*/pretrain/history.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found[path.parents[1].name] = [r["epoch"] for r in rows if r.get("kind") == "pretrain_epoch"]
    return found


def events(out: Path) -> list[dict[str, Any]]:
    path = out / "timing.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.timeout(900)  # a sweep, its interruption and its resume, one after the other
def test_a_sweep_survives_a_killed_trial_worker_and_a_killed_driver(
    make_config, tiny_csv: Path, tmp_path: Path, rng: random.Random, record_property, shared_ray
) -> None:
    from optuna.trial import TrialState
    from studies import study_of

    from simmtm.tuning.outputs import read_trials_csv

    raw = make_config(tiny_csv, {"pretrain": {"epochs": TRIAL_EPOCHS, "max_steps": None}})
    raw["search"] = {
        "method": "tpe",
        "params": {
            "pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
            "pretrain.num_masked": {"type": "int", "low": 1, "high": 4},
        },
    }
    raw["tune"] = {
        "num_samples": TRIALS,
        "probe_steps": 5,
        "max_failures": 1,
        "scheduler": {"type": "fifo"},
        "test_top_k": 1,
        "confirm": {"seeds": 0},  # the search is what is killed here (the confirmation's kills: the next test)
    }
    raw["resources"] = {"workers": 1, "cpus_per_worker": 1}
    sweep_file, out, log = tmp_path / "sweep.yaml", tmp_path / "out", tmp_path / "sweep.log"
    sweep_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    argv = ["sweep", str(sweep_file), "--out", str(out), "--quiet-table"]

    driver = simmtm(*argv, log=log)
    seen: list[psutil.Process] = []
    try:
        # 1. kill -9 of a trial's worker process (the Tune function actor) after a random number of its epochs
        epochs_first = rng.randrange(TRIAL_EPOCHS)
        wait_for(
            "a trial's epoch",
            lambda: (
                any(len(e) >= max(epochs_first, 0) for e in trial_epochs(out).values())
                and titled(driver.pid, "ray::ImplicitFunc")
            ),
            driver,
            log,
        )
        time.sleep(rng.uniform(0, 0.5))
        victims = titled(driver.pid, "ray::ImplicitFunc")
        assert victims, f"seed {SEED}: no trial process to kill"
        victim = rng.choice(victims)
        victim.kill()
        seen += descendants(driver.pid)

        # 2. kill -9 of the driver once a random number of trials (1 or 2) has finished
        finished = rng.randint(1, 2)
        wait_for(
            f"{finished} finished trials",
            lambda: sum(e["event"] == "end" for e in events(out)) >= finished,
            driver,
            log,
        )
        time.sleep(rng.uniform(0, 1.0))
        seen += descendants(driver.pid)
        recorded = json.loads((out / "processes.json").read_text())["children"]
        assert {"raylet", "gcs_server"} <= {p["name"] for p in recorded}, recorded
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        # No process outlives its driver: the watchdog stops the whole local Ray (agents included) by itself.
        left = lambda: [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
        deadline = time.time() + 60
        while left() and time.time() < deadline:
            time.sleep(0.5)
        assert not left(), f"seed {SEED}: outlived the driver: {[(p.pid, p.name()) for p in left()]}"
    finally:
        stop_session(driver, seen)
    ended_before = {e["trial_id"] for e in events(out) if e["event"] == "end"}
    shutil.rmtree(out / "ray")  # Tune's folder is disposable: the sweep resumes from its study and trial folders

    assert resume_in_process(argv) == 0, f"seed {SEED}"
    record_property("faults", 2)

    rows = read_trials_csv(out / "trials.csv")
    complete = {r["trial_id"] for r in rows if r["state"] == "COMPLETE"}
    assert len(complete) == TRIALS, f"seed {SEED}: {rows}"
    assert ended_before <= complete and len(rows) == TRIALS  # nothing lost; a trial asked before the kill ran
    # Nothing ran twice: every trial's pre-training epochs once, in order (the killed one resumed from its checkpoint)
    per_trial = trial_epochs(out)
    assert set(per_trial) >= complete
    for trial_id in complete:
        assert per_trial[trial_id] == list(range(1, TRIAL_EPOCHS + 1)), (
            f"seed {SEED}: {trial_id}: {per_trial[trial_id]}"
        )
    study = study_of(out)
    tagged = [t.user_attrs.get("trial_id") for t in study.get_trials()]
    assert len(tagged) == len(set(tagged)) == TRIALS, f"seed {SEED}: {tagged}"  # one Optuna trial per trial
    assert {t.user_attrs["trial_id"] for t in study.get_trials() if t.state == TrialState.COMPLETE} == complete
    assert not [t.number for t in study.get_trials() if t.state == TrialState.RUNNING], f"seed {SEED}"


@pytest.mark.timeout(900)  # a sweep, two interruptions and two resumes, one after the other
def test_a_driver_killed_after_its_search_resumes_without_running_a_finished_trial_again(
    make_config, tiny_csv: Path, tmp_path: Path, rng: random.Random, record_property, shared_ray
) -> None:
    """kill -9 of the driver during the confirmation stage (a confirmation run under way), then of the resumed
    driver while it collects the results (scoring the test split of the best configuration); Tune's folders deleted
    after each; the second --resume ends the sweep with every output, re-running no finished trial and no finished
    confirmation run. (One sweep for both stages: the search and its two trials run once.)"""
    from simmtm.tuning.outputs import read_trials_csv

    raw = make_config(tiny_csv, {"pretrain": {"epochs": 2, "max_steps": None}})
    raw["search"] = {"method": "tpe", "params": {"pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}}}
    raw["tune"] = {"num_samples": 2, "probe_steps": 5, "scheduler": {"type": "fifo"}, "test_top_k": 1,
                   "confirm": {"top_k": 1, "seeds": 2}}
    raw["resources"] = {"workers": 1, "cpus_per_worker": 1}
    sweep_file, out, log = tmp_path / "sweep.yaml", tmp_path / "out", tmp_path / "sweep.log"
    sweep_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    argv = ["sweep", str(sweep_file), "--out", str(out), "--quiet-table"]

    def under_way(stage: str) -> bool:
        if stage == "confirmation":  # a confirmation run has a checkpoint (or a result): the stage is under way
            return any((out / "trials").glob("confirm-*/checkpoint.pt"))
        return (out / "best").is_dir()  # the test split of the best configuration is being scored

    done_before: dict[str, int] = {}
    for stage, extra in (("confirmation", ()), ("result collection", ("--resume",))):
        driver = simmtm(*argv, *extra, log=log)
        try:
            wait_for(stage, lambda stage=stage: under_way(stage), driver, log, timeout=400)
            time.sleep(rng.uniform(0, 0.5))
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            stop_session(driver, descendants(driver.pid))
        assert not (out / "trials.csv").exists(), stage
        done = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/result.json")}
        assert {name: done[name] for name in done_before} == done_before, stage  # the resume re-ran nothing
        done_before = done
        assert {"trial-0000", "trial-0001"} <= set(done_before)
        for folder in ("ray", "confirm"):
            shutil.rmtree(out / folder, ignore_errors=True)

    assert resume_in_process(argv) == 0, f"seed {SEED}"
    record_property("faults", 2)
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/result.json")}
    assert {name: after[name] for name in done_before} == done_before  # no finished run ran again
    assert len([n for n in after if n.startswith("confirm-")]) == 4  # 2 configurations x 2 paired seeds
    assert [r["state"] for r in read_trials_csv(out / "trials.csv")] == ["COMPLETE", "COMPLETE"]
    verdict = json.loads((out / "confirmation.json").read_text())["verdict"]
    assert verdict["sentence"] in (out / "best.yaml").read_text()
    assert [r["test_score"] != "" for r in read_trials_csv(out / "trials.csv")].count(True) >= 1


# --- data-parallel pre-training: one Ray Train worker ------------------------------------------------------------


def rank0_epochs(metrics: dict[str, Any], runtime: Any, *, log: str) -> None:
    """After-epoch hook in each Ray Train worker: rank 0 appends ``PID EPOCH`` to ``log``."""
    if runtime.rank == 0:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {metrics['epoch']}\n")


def kill_a_train_worker(out: Path, rng: random.Random, finished: threading.Event, record: dict[str, Any]) -> None:
    """In a thread beside the run: once the driver's history shows a random number of epochs (0-2) and both Ray
    Train workers are up, wait a random moment and kill -9 one of them; ``record`` receives what the kill saw."""
    after, pause, deadline = rng.randrange(3), rng.uniform(0, 0.5), time.time() + 180
    while len(history(out, "pretrain_epoch")) < after or len(titled(os.getpid(), "ray::RayTrainWorker")) != 2:
        if finished.is_set() or time.time() > deadline:
            record["missed"] = f"the run ended or stalled before epoch {after} with two workers"
            return
        time.sleep(0.05)
    time.sleep(pause)
    victims = titled(os.getpid(), "ray::RayTrainWorker")
    record["collected"] = len(history(out, "pretrain_epoch"))  # checkpointed epochs the driver holds at the kill
    rng.choice(victims).kill()
    record["victim_group"] = {v.pid for v in victims}


def test_a_killed_ray_train_worker_is_replaced_and_resumes_from_the_last_checkpoint(
    make_config, tiny_csv: Path, tmp_path: Path, rng: random.Random, ray_by_value, record_property
) -> None:
    """kill -9 of one of two Ray Train workers at a random point: a new worker group takes over from the last
    checkpoint the driver collected (not from scratch), and the run ends as planned with every epoch once. The
    driver runs in this process on the shared Ray (what is killed is a Ray worker, not the driver)."""
    from simmtm.cluster.distributed import Scaling, pretrain_distributed

    config = parse_config(yaml.safe_load(tiny_run(make_config, tiny_csv, tmp_path, epochs=4).read_text()))
    out, log, record, finished = tmp_path / "dp", tmp_path / "epochs.log", {}, threading.Event()
    killer = threading.Thread(target=kill_a_train_worker, args=(out, rng, finished, record), daemon=True)
    try:
        killer.start()
        hook = functools.partial(rank0_epochs, log=str(log))
        metrics = pretrain_distributed(config, out=out, scaling=Scaling(workers=2), max_failures=2, after_epoch=hook)
    finally:
        finished.set()
        killer.join(timeout=30)
    assert "victim_group" in record, f"seed {SEED}: no kill: {record}"
    record_property("faults", 1)

    assert metrics["epoch"] == 4 and checkpoint(out)["epoch"] == 4
    assert [r["epoch"] for r in history(out, "pretrain_epoch")] == [1, 2, 3, 4], f"seed {SEED}"  # each epoch once
    reports = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    replacement = [(pid, epoch) for pid, epoch in reports if pid not in record["victim_group"]]
    assert len({pid for pid, _ in replacement}) == 1, f"seed {SEED}: {reports}, {record}"  # one new group took over
    resumed_at = replacement[0][1]
    assert resumed_at >= record["collected"] + 1, f"seed {SEED}: {reports}, {record}"  # from a checkpoint, not afresh


# --- several drivers, one study (tune.shared_study) --------------------------------------------------------------


@pytest.mark.timeout(900)  # a sweep, its interruption and its resume, one after the other
def test_two_drivers_feed_one_shared_study_and_each_reports_only_its_own_trials(
    make_config, tiny_csv: Path, tmp_path: Path, shared_ray
) -> None:
    from optuna.trial import TrialState

    from simmtm.tuning.outputs import read_trials_csv

    raw = make_config(tiny_csv, {"pretrain": {"epochs": 2, "max_steps": None}})
    raw["search"] = {"method": "tpe", "params": {"pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}}}
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    raw["tune"] = {
        "num_samples": 2,
        "probe_steps": 5,
        "scheduler": {"type": "fifo"},
        "test_top_k": 0,
        "confirm": {"seeds": 0},  # a driver's own trials are the point; its confirmation is the search's top k rerun
        "storage": url,
        "study_name": "team",
        "shared_study": True,
    }
    raw["resources"] = {"workers": 1, "cpus_per_worker": 1}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    def argv(name: str) -> list[str]:
        return ["sweep", str(sweep_file), "--out", str(tmp_path / name), "--quiet-table"]

    # Driver b in its own process, driver a meanwhile in this one (on the shared Ray): two drivers at once.
    other = simmtm(*argv("b"), log=tmp_path / "b.log")
    try:
        assert main(argv("a")) == 0
        assert other.wait(timeout=500) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        stop_session(other, [])
    drivers = ("a", "b")
    rows = {name: read_trials_csv(tmp_path / name / "trials.csv") for name in drivers}
    for name, table in rows.items():  # each driver's table: its own two trials, finished; none of the other's
        assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE"], (name, table)
    import optuna

    study = optuna.load_study(study_name="team", storage=url)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    owners = {t.user_attrs["owner"] for t in trials}
    assert {o.rsplit(":", 1)[-1].rsplit("/", 1)[-1] for o in owners} == {"a", "b"}
    assert {t.user_attrs["trial_id"] for t in trials} == {r["trial_id"] for table in rows.values() for r in table}
