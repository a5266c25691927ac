"""tune.loggers: Ray's own W&B and MLflow callbacks, for real (W&B offline, a local MLflow store), grouped by study;
a trial's per-step losses (``TrialSteps``) in the same stores. The whole path through `simmtm sweep` is in
test_watch_and_track.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from simmtm.errors import UserError
from simmtm.train.trackers import TRIAL_TAG, Trackers, TrialSteps, tracker_callbacks
from simmtm.tuning.spec import TrialSpec


def test_an_unknown_logger_is_named() -> None:
    with pytest.raises(UserError, match="unknown logger 'comet'; valid: tensorboard, wandb, mlflow"):
        tracker_callbacks(["comet"], study_name="s", out="/tmp/x")
    assert tracker_callbacks(["tensorboard"], study_name="s", out="/tmp/x") == []


def _steps(config: dict) -> None:
    from ray import tune

    for step in range(3):
        tune.report({"loss": config["r"] * (3 - step), "step": step})


@pytest.mark.slow
def test_wandb_offline_and_a_local_mlflow_store_get_every_step_of_every_trial(tmp_path: Path, monkeypatch, shared_ray) -> None:
    import mlflow
    import wandb  # noqa: F401
    from ray import tune

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    callbacks = tracker_callbacks(["tensorboard", "wandb", "mlflow"], study_name="study-a", out=tmp_path / "sweep")
    tuner = tune.Tuner(_steps, param_space={"r": tune.grid_search([0.25, 0.5])},
                       run_config=tune.RunConfig(name="trackers", storage_path=str(tmp_path / "ray"), callbacks=callbacks))
    assert not tuner.fit().errors

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-a")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and all(r.data.tags["simmtm.study"] == "study-a" for r in runs)
    assert sorted(float(r.data.params["r"]) for r in runs) == [0.25, 0.5]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([float(run.data.params["r"]) * k for k in (3, 2, 1)])

    offline = sorted((tmp_path / "sweep" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(list(d.glob("*.wandb")) for d in offline)
    logged = b"".join(f.read_bytes() for d in offline for f in d.glob("*.wandb"))
    assert b"study-a" in logged  # the group


def test_trackers_are_resolved_once_on_the_driver_and_reach_the_trials_only_when_configured(
    tmp_path: Path, monkeypatch, make_config, tiny_csv
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    both = Trackers.resolve(["wandb", "mlflow"], study_name="s", out=tmp_path, log_every_n_steps=5)
    assert (both.wandb_project, both.wandb_mode, both.log_every_n_steps) == ("proj", "offline", 5)
    assert both.mlflow_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" and both.active
    plain = Trackers.resolve(["tensorboard"], study_name="s", out=tmp_path)
    assert not plain.active and plain.callbacks() == []
    run = make_config(tiny_csv)
    assert TrialSpec(run=run, metric="val_mse", trackers=both).model_dump(mode="json")["trackers"]["wandb_mode"] == "offline"
    with pytest.raises(ValueError, match="log_every_n_steps"):
        Trackers(study="s", out="o", log_every_n_steps=0)


def test_a_trial_without_trackers_imports_neither_package(tmp_path: Path, make_config, tiny_csv, monkeypatch) -> None:
    from simmtm.tuning.trial import trial_loop

    run = make_config(tiny_csv)
    spec = TrialSpec(run=run, metric="val_mse", probe_steps=2, tb_dir=str(tmp_path / "tb"))
    # In this process, not a fresh interpreter (10-30 s of imports): other tests may have imported the trackers
    # already, so each (with its submodules) is made unimportable instead; a trial that reached for one fails on the
    # ImportError.
    blocked = ("wandb", "mlflow", "ray.air.integrations.wandb")
    for name in [n for n in sys.modules if n.startswith(tuple(f"{b}." for b in blocked))] + list(blocked):
        monkeypatch.setitem(sys.modules, name, None)
    result = trial_loop({"sweep": spec.model_dump(mode="json"), "repeat": 0})
    assert result["val_mse"] is not None
    assert [n for n in blocked if sys.modules[n] is not None] == []


@pytest.mark.slow
def test_trial_steps_write_every_nth_step_into_the_trials_mlflow_run_and_a_wandb_companion(
    tmp_path: Path, monkeypatch
) -> None:
    import mlflow
    import wandb  # noqa: F401
    from wandb_offline import read_run  # here: Ray's workers import this module (for _steps) without tests/ on the path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # TrialSteps sets it from the driver's mode (restored after the test)
    trackers = Trackers(
        study="study-b", out=str(tmp_path), wandb_project="p", wandb_mode="offline",
        mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_every_n_steps=3,
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=trackers.mlflow_uri)
    experiment = client.create_experiment("study-b")
    other = client.create_run(experiment, tags={TRIAL_TAG: "t2"})  # another trial's run stays untouched
    mine = client.create_run(experiment, tags={TRIAL_TAG: "t1"})  # as the MLflow callback creates it

    steps = TrialSteps(trackers, trial_id="t1", trial_name="t1", params={"pretrain.mask_ratio": 0.4})
    for first in (1, 5, 9):  # batches of 4 steps, as the training loop reads them
        steps([(s, {"pretrain/loss": 1.0 / s, "pretrain/lr": 0.1}) for s in range(first, first + 4)])
    steps.close()

    history = client.get_metric_history(mine.info.run_id, "pretrain/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(1.0 / s)) for s in (3, 6, 9, 12)]
    assert not client.get_metric_history(other.info.run_id, "pretrain/loss")
    assert len(client.search_runs([experiment])) == 2  # no second run for the trial
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    companion = read_run(run_dir)
    assert (companion.run_id, companion.group, companion.job_type) == ("study-b-t1-steps", "study-b", "pretrain-steps")
    assert sorted(companion.history) == [3, 6, 9, 12]
    assert companion.history[6]["pretrain/loss"] == pytest.approx(1 / 6) and companion.history[6]["pretrain/lr"] == 0.1
