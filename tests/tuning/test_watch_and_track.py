"""Watching a sweep (15.4, 15.5): tune.loggers reaches W&B (offline) and MLflow (a local store) through `simmtm
sweep`, search trials and confirmation runs alike (told apart by stage), with every optimiser step's pre-training
losses from inside the trials; each trial's HParams run is written
as it ends; a trial's checkpoint is kept once (in its own folder), not in tb/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simmtm.cli import main
from simmtm.tuning.spec import TrialSpec

pytestmark = pytest.mark.slow

SEARCH = {"method": "grid", "grid": {"pretrain.mask_ratio": [0.3, 0.6]}}


@pytest.mark.timeout(900)  # a sweep with its confirmation, two trackers writing
def test_trackers_and_per_trial_outputs_through_simmtm_sweep(
    tiny_sweep, tmp_path: Path, shared_ray, monkeypatch, capsys
) -> None:
    import mlflow
    import wandb  # noqa: F401
    from wandb_offline import read_run  # here: Ray's workers import this module (for _ends) without tests/ on the path

    path = tiny_sweep(
        SEARCH,
        # confirmation: the better cell and the paper's r = 0.5, one fresh seed each: two more runs, tracked as such
        tune={"scheduler": {"type": "fifo"}, "test_top_k": 0, "loggers": ["tensorboard", "wandb", "mlflow"],
              "confirm": {"top_k": 1, "seeds": 1}},
        run={"pretrain": {"epochs": 2}},
    )
    out = tmp_path / "out"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The CLI in this process, on the suite's shared Ray (the trackers take the driver's WANDB_MODE explicitly)
    assert main(["sweep", str(path), "--out", str(out), "--quiet-table"]) == 0, capsys.readouterr().err[-3000:]

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("out").experiment_id])
    stage = {r.data.tags["simmtm.trial_id"]: r.data.tags["simmtm.stage"] for r in runs}
    assert sorted(stage.values()) == ["confirm", "confirm", "search", "search"]
    for run in runs:  # the pre-training loss parts of every probed epoch, then the final score
        for part in (
            "pretrain_train_loss",
            "pretrain_train_reconstruction",
            "pretrain_train_constraint",
            "pretrain_val_loss",
        ):
            assert len(client.get_metric_history(run.info.run_id, part)) == 2, part
        assert client.get_metric_history(run.info.run_id, "val_mse")
    # W&B: the callback's run per trial (job type trial, or confirm) and its companion with the per-step losses
    offline = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 8 and all(list(d.glob("*.wandb")) for d in offline)
    wandb_runs = {run.run_id: run for run in map(read_run, offline)}
    assert {run.group for run in wandb_runs.values()} == {"out"}

    trials = [p.name for p in (out / "tb").iterdir() if p.name != "hparams"]
    assert len(trials) == 4  # 2 search trials, 2 confirmation runs
    # run ids: the study and the sweep's trial name (a resumed sweep continues the run; two studies never share one)
    assert sorted(wandb_runs) == sorted([*(f"out-{t}" for t in trials), *(f"out-{t}-steps" for t in trials)])
    by_trial = {r.data.tags["simmtm.trial_id"]: r.info.run_id for r in runs}
    assert sorted(by_trial) == sorted(trials)  # one MLflow run per trial: the per-step losses go into the callback's
    for trial in trials:
        epochs = [json.loads(line) for line in (out / "tb" / trial / "pretrain" / "history.jsonl").read_text().splitlines()]
        epochs = [e for e in epochs if e["kind"] == "pretrain_epoch"]
        total = epochs[-1]["step"]  # every optimiser step of the trial, each once, with the optimiser step as step
        assert total >= 4
        history = sorted(client.get_metric_history(by_trial[trial], "pretrain/loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, total + 1))
        first = [m.value for m in history if m.step <= epochs[0]["step"]]  # the same numbers as the epoch mean
        assert sum(first) / len(first) == pytest.approx(epochs[0]["train_loss"], rel=1e-6)
        for key in ("pretrain/reconstruction", "pretrain/constraint", "pretrain/lr"):
            assert len(client.get_metric_history(by_trial[trial], key)) == total, key
        assert wandb_runs[f"out-{trial}"].job_type == {"search": "trial", "confirm": "confirm"}[stage[trial]]
        assert wandb_runs[f"out-{trial}-steps"].job_type == "pretrain-steps"
        steps = wandb_runs[f"out-{trial}-steps"].history
        assert sorted(steps) == list(range(1, total + 1))
        assert all({"pretrain/loss", "pretrain/reconstruction", "pretrain/constraint", "pretrain/lr"} <= set(row)
                   for row in steps.values())
        assert [steps[m.step]["pretrain/loss"] for m in history] == pytest.approx([m.value for m in history])
        assert (out / "tb" / trial / "pretrain" / "history.jsonl").is_file()
        assert not (out / "tb" / trial / "pretrain" / "checkpoints").exists()  # the trial folder's copy is the one
        assert (out / "tb" / "hparams" / trial).is_dir() or stage[trial] == "confirm"
    assert len(list((out / "trials").glob("trial-*/checkpoint.pt"))) == 2  # one per search trial
    assert not list((out / "ray").rglob("checkpoint.pt"))  # none in Tune's folder


def _ends(config: dict) -> None:
    from ray import tune

    tune.report({"stage": "probe", "epoch": 1, "probe_val_mse": config["pretrain.mask_ratio"]})
    if config["pretrain.mask_ratio"] < 0.5:
        tune.report({"stage": "final", "epoch": 1, "val_mse": config["pretrain.mask_ratio"]})
    else:
        raise RuntimeError("this trial fails")


def test_each_trials_hparams_run_is_written_when_it_ends(shared_ray, tmp_path: Path, make_config, tiny_csv) -> None:
    from ray import tune

    from simmtm.config.schema import parse_config
    from simmtm.tuning.live import TrialEndHParams
    from simmtm.tuning.record import name_of

    seen: dict[str, bool] = {}

    class Watch(tune.Callback):  # runs after TrialEndHParams, at the same moment
        def on_trial_complete(self, iteration, trials, trial, **info):
            seen[name_of(trial)] = (tmp_path / "tb" / "hparams" / name_of(trial)).is_dir()

        on_trial_error = on_trial_complete

    spec = TrialSpec(run=parse_config(make_config(tiny_csv)).run_dict(), metric="val_mse")
    keys = ["pretrain.mask_ratio"]
    tuner = tune.Tuner(
        _ends,
        param_space={"sweep": spec.model_dump(mode="json"), "pretrain.mask_ratio": tune.grid_search([0.25, 0.75]),
                     "number": tune.sample_from(lambda s: int(s.config["pretrain.mask_ratio"] > 0.5))},
        run_config=tune.RunConfig(
            name="h",
            storage_path=str(tmp_path / "ray"),
            verbose=0,
            callbacks=[TrialEndHParams(tmp_path / "tb", keys, metric="val_mse"), Watch()],
        ),
    )
    tuner.fit()
    assert len(seen) == 2 and all(seen.values())
    failed = {
        t: any(b"FAILED" in f.read_bytes() for f in (tmp_path / "tb" / "hparams" / t).rglob("events*")) for t in seen
    }
    assert sorted(failed.values()) == [False, True]  # the state is in the run: one trial completed, one failed
