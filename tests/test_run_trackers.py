"""``loggers: [wandb, mlflow]`` in a run config: `simmtm pretrain`, `finetune` and `run` send their epochs (and
pre-training's per-step scalars) to W&B (offline) and a local MLflow store, read back here from the real stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import simmtm
from simmtm.cli import main
from simmtm.train.trackers import STAGE_TAG


def _history(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def _mlflow_runs(out: Path) -> dict:
    """The runs of the experiment named after ``out`` in ``out/mlflow.db``, by stage."""
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(out.name)
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.data.tags[STAGE_TAG]: r for r in runs}


def _steps(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_simmtm_run_sends_each_stage_to_wandb_offline_and_a_local_mlflow_store(
    tmp_path: Path, monkeypatch, tiny_config, write_config, capsys
) -> None:
    from wandb_offline import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_config(tiny_config({"loggers": ["tensorboard", "wandb", "mlflow"]}))
    out = tmp_path / "compare"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0

    client, runs = _mlflow_runs(out)
    assert set(runs) == {"pretrain", "finetune", "baseline"}
    assert all(r.info.status == "FINISHED" and r.data.params["pretrain.num_masked"] == "2" for r in runs.values())
    pre_epochs = _history(out / "pretrain" / "history.jsonl", "pretrain_epoch")
    losses = _steps(client, runs["pretrain"], "pretrain/loss")
    assert [s for s, _ in losses] == [1, 2, 3]  # every optimiser step of pre-training (max_steps 3)
    assert _steps(client, runs["pretrain"], "val_loss") == [(3, pytest.approx(pre_epochs[0]["val_loss"]))]
    for stage in ("finetune", "baseline"):
        epochs = _history(out / stage / "history.jsonl", "finetune_epoch")  # two horizons, one epoch each
        logged = _steps(client, runs[stage], "val_mse")
        assert len(logged) == len(epochs) == 2 and logged[0][0] < logged[1][0]  # a later horizon does not overwrite
        assert [v for _, v in logged] == pytest.approx([e["val_mse"] for e in epochs])

    offline = {r.job_type: r for r in map(read_run, sorted((out / "wandb").glob("offline-run-*")))}
    assert set(offline) == {"pretrain", "finetune", "baseline"} and {r.group for r in offline.values()} == {"compare"}
    pre = offline["pretrain"].history
    assert [pre[s]["pretrain/loss"] for s in (1, 2, 3)] == pytest.approx([v for _, v in losses])
    assert pre[3]["val_loss"] == pytest.approx(pre_epochs[0]["val_loss"])
    assert len([s for s, row in offline["finetune"].history.items() if "val_mse" in row]) == 2
    assert "wandb: Run summary" not in capsys.readouterr().out  # the CLI owns the terminal


@pytest.mark.slow
def test_a_pretraining_with_mlflow_resumes_in_its_folder_and_logs_each_attempt(tmp_path: Path, monkeypatch, tiny_config) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_config({"loggers": ["mlflow"]})
    out = tmp_path / "pre"
    simmtm.pretrain(raw, out=out)
    again = simmtm.pretrain(raw, out=out, overrides={"pretrain.epochs": 2, "pretrain.max_steps": 6})
    assert (again.metrics["epoch"], again.metrics["step"]) == (2, 6)  # mlflow.db in --out did not stop the resume
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pre").experiment_id], order_by=["attributes.start_time"])
    assert [r.data.tags[STAGE_TAG] for r in runs] == ["pretrain", "pretrain"]
    assert [s for s, _ in _steps(client, runs[0], "pretrain/loss")] == [1, 2, 3]
    assert [s for s, _ in _steps(client, runs[1], "pretrain/loss")] == [4, 5, 6]  # the resumed steps only
    assert _steps(client, runs[1], "val_loss")[-1] == (6, pytest.approx(again.metrics["val_loss"]))
    assert yaml.safe_load((out / "config.yaml").read_text())["loggers"] == ["mlflow"]


def test_an_unknown_logger_is_refused_before_anything_is_written(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(simmtm.ConfigError, match=r"loggers.*'tensorboard', 'wandb' or 'mlflow'"):
        simmtm.pretrain(tiny_config({"loggers": ["comet"]}), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_run_with_tensorboard_only_imports_neither_tracker(tmp_path: Path, tiny_config, write_config) -> None:
    path = write_config(tiny_config())
    code = (  # also a sweep trial's module (tests/tuning/test_trackers.py runs a trial in-process, with both blocked)
        "import sys, simmtm, simmtm.tuning.trial; "
        f"simmtm.pretrain({str(path)!r}, out={str(tmp_path / 'pre')!r}); "
        "print(sorted(m for m in ('wandb', 'mlflow', 'ray.air.integrations.wandb') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
