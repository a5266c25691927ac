"""tune.loggers: Ray's own W&B and MLflow callbacks, for real (W&B offline, a local MLflow store), grouped by study."""

from __future__ import annotations

from pathlib import Path

import pytest

from simmtm.errors import UserError
from simmtm.trackers import tracker_callbacks


def test_an_unknown_logger_is_named() -> None:
    with pytest.raises(UserError, match="unknown logger 'comet'; valid: tensorboard, wandb, mlflow"):
        tracker_callbacks(["comet"], study_name="s", out="/tmp/x")
    assert tracker_callbacks(["tensorboard"], study_name="s", out="/tmp/x") == []


def _steps(config: dict) -> None:
    from ray import tune

    for step in range(3):
        tune.report({"loss": config["r"] * (3 - step), "step": step})


@pytest.mark.slow
def test_wandb_offline_and_a_local_mlflow_store_get_every_step_of_every_trial(tmp_path: Path, monkeypatch, local_ray) -> None:
    wandb = pytest.importorskip("wandb")  # noqa: F841
    mlflow = pytest.importorskip("mlflow")
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
