"""The Python API: the commands as functions with typed results, and an `import simmtm` without torch or Ray."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import simmtm
from simmtm.api import FinetuneResult, PretrainResult


def test_import_simmtm_loads_neither_torch_nor_ray() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import simmtm"], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "simmtm" in imported
    assert not imported & {"torch", "ray", "optuna", "pandas", "matplotlib"}, imported & {"torch", "ray", "optuna", "pandas", "matplotlib"}


def test_pretrain_and_finetune_take_a_dict_with_overrides_and_return_frozen_results(tmp_path: Path, tiny_config) -> None:
    raw = tiny_config({"finetune": {"horizons": [4]}})
    pre = simmtm.pretrain(raw, out=tmp_path / "pre", overrides={"pretrain.mask_ratio": 0.25})
    assert isinstance(pre, PretrainResult) and pre.run_dir == tmp_path / "pre"
    assert pre.config.pretrain.mask_ratio == 0.25 and raw["pretrain"].get("mask_ratio") is None  # the dict is not changed
    assert (pre.run_dir / "checkpoints" / "last.pt").is_file() and pre.val_loss == pre.metrics["val_loss"] > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.run_dir = tmp_path  # type: ignore[misc]

    again = simmtm.pretrain(raw, out=tmp_path / "pre", overrides=["pretrain.mask_ratio=0.25", "pretrain.epochs=2", "pretrain.max_steps=6"])
    assert (again.metrics["epoch"], again.metrics["step"]) == (2, 6)  # the same run directory resumes, as on the command line

    ft = simmtm.finetune(raw, out=tmp_path / "ft", pretrained=pre.run_dir)
    assert isinstance(ft, FinetuneResult) and ft.pretrained == pre.run_dir and ft.metrics["pretrained"] is True
    assert set(ft.metrics["horizons"]) == {"4"} and ft.metrics["mse"] > 0
    with pytest.raises(simmtm.UserError, match="--out .*already exists"):
        simmtm.finetune(raw, out=tmp_path / "ft")


def test_a_config_path_and_the_cli_give_the_same_run(tmp_path: Path, tiny_config, write_config) -> None:
    from simmtm.cli import main

    path = write_config(tiny_config())
    api = simmtm.pretrain(path, out=tmp_path / "api")
    assert main(["pretrain", str(path), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert (tmp_path / "api" / "config.yaml").read_text() == (tmp_path / "cli" / "config.yaml").read_text()
    cli_metrics = yaml.safe_load((tmp_path / "cli" / "metrics.json").read_text())
    assert api.metrics["val_loss"] == pytest.approx(cli_metrics["val_loss"], rel=1e-6)


def test_a_bad_key_is_the_cli_error(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(simmtm.ConfigError, match="pretrain.mask_ratoi"):
        simmtm.pretrain(tiny_config(), out=tmp_path / "x", overrides={"pretrain.mask_ratoi": 0.3})
    assert not (tmp_path / "x").exists()


def test_the_api_names_are_plain_functions_that_no_import_rebinds() -> None:
    import inspect
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(simmtm.__path__)}
    api_names = ("pretrain", "finetune", "run", "export", "sweep", "analyze", "recommend")
    assert not submodules & set(api_names), "a submodule named like an API function would replace it on import"
    from simmtm.train import finetuning, pretraining  # noqa: F401  (imported: must not change simmtm.pretrain)
    from simmtm.tuning import driver  # noqa: F401
    from simmtm.weights import exporting  # noqa: F401

    for name in api_names:
        assert inspect.isfunction(getattr(simmtm, name)) and getattr(simmtm, name).__module__ == "simmtm.api"
    assert type(simmtm) is type(inspect)  # the package is an ordinary module


# --- docs/api.md: every block runs as written (on the tiny CSV: only its `config = ...` line is swapped) ------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
CONFIG_LINE = 'config = "sweeps/quick.yaml"'


def doc_blocks() -> list[tuple[bool, str]]:
    """The ```python blocks of docs/api.md in order, each with whether it needs Ray (```python ray)."""
    return [(tag == " ray", code) for tag, code in re.findall(r"```python( ray)?\n(.*?)```", DOCS.read_text(), re.S)]


def run_block(code: str, namespace: dict, tiny: dict) -> None:
    if CONFIG_LINE in code:
        code = code.replace(CONFIG_LINE, "config = TINY_CONFIG")
        namespace["TINY_CONFIG"] = tiny
    exec(compile(code, str(DOCS), "exec"), namespace)


@pytest.fixture
def tiny_sweep_config(tiny_config) -> dict:
    """The tiny run config plus the sweep sections of sweeps/quick.yaml, cut down to a tiny search."""
    raw = tiny_config({"finetune": {"horizons": [4]}})
    raw["search"] = {"method": "random", "params": {"pretrain.mask_ratio": {"type": "float", "low": 0.2, "high": 0.8}}}
    raw["tune"] = {"probe_steps": 5, "scheduler": {"type": "fifo"}}  # as quick.yaml: no pruning, every trial ends
    raw["resources"] = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    return raw


@pytest.mark.slow
def test_the_api_docs_run_as_written(tmp_path: Path, monkeypatch, tiny_sweep_config, capsys) -> None:
    blocks = doc_blocks()
    assert [ray for ray, _ in blocks] == [False, False, False, True, True]
    assert CONFIG_LINE in blocks[0][1]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for ray, code in blocks:
        if not ray:
            run_block(code, namespace, tiny_sweep_config)
    printed_config = capsys.readouterr().out.split("\n", 1)[0]
    runs = tmp_path / "runs"
    assert (runs / "api-pre" / "config.yaml").read_text().startswith(printed_config)  # config_text is what it saves
    assert namespace["again"].metrics["step"] == namespace["pre"].metrics["step"] == 5  # overwrite: afresh, not resumed
    both = namespace["both"]
    assert both.summary.is_file() and set(yaml.safe_load(both.summary.read_text())) == {"SimMTM", "random init"}
    assert both.finetune.pretrained == Path("runs/api-run/pretrain") and both.baseline.pretrained is None
    assert (runs / "api-encoder" / "encoder.safetensors").is_file() and tuple(namespace["z"].shape)[0] == 8


def run_ray_block(index: int, tiny: dict) -> dict:
    """Block 0 (simmtm, config, quick), then the ``index``-th Ray block, in the current folder; its namespace."""
    blocks = doc_blocks()
    namespace: dict = {}
    run_block(blocks[0][1], namespace, tiny)
    run_block([code for ray, code in blocks if ray][index], namespace, tiny)
    return namespace


@pytest.mark.slow
def test_the_api_docs_workers_block_runs_as_written(tmp_path: Path, monkeypatch, tiny_sweep_config, shared_ray) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracked = {**tiny_sweep_config, "loggers": ["mlflow"]}  # also: a --workers run's epochs reach its tracker
    two = run_ray_block(0, tracked)["two"]  # about 2 minutes here: Ray Train's start-up on 2 busy cores
    assert (two.metrics["epoch"], two.metrics["step"]) == (1, 5)
    out = tmp_path / "runs" / "api-pre-2w"
    assert (out / "checkpoints" / "last.pt").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("api-pre-2w").experiment_id])
    logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert logged == [(5, pytest.approx(two.val_loss))]


@pytest.mark.slow
def test_the_api_docs_sweep_block_runs_as_written(tmp_path: Path, monkeypatch, tiny_sweep_config, shared_ray) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_ray_block(1, tiny_sweep_config)
    sw = namespace["sw"]
    assert sw.finished and sw.counts["COMPLETE"] == 2 and namespace["report"].report.is_file()
    assert namespace["rec"].status in ("ok", "insufficient")  # two trials may be too few to recommend


def test_worker_options_without_workers_are_refused_before_anything_is_written(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(simmtm.UserError, match="--address applies to distributed runs only; add --workers N"):
        simmtm.pretrain(tiny_config(), out=tmp_path / "x", address="auto")
    with pytest.raises(simmtm.UserError, match="--workers must be at least 1"):
        simmtm.pretrain(tiny_config(), out=tmp_path / "x", workers=0)
    assert not (tmp_path / "x").exists()


def test_restart_is_the_deprecated_name_of_overwrite(tmp_path: Path, tiny_config) -> None:
    raw = tiny_config()
    simmtm.pretrain(raw, out=tmp_path / "pre")
    with pytest.warns(DeprecationWarning, match="use overwrite"):
        again = simmtm.pretrain(raw, out=tmp_path / "pre", overrides={"pretrain.mask_ratio": 0.3}, restart=True)
    assert (again.metrics["epoch"], again.metrics["step"]) == (1, 3)  # afresh: the changed config did not refuse it
