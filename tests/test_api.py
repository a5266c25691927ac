"""The Python API: the commands as functions with typed results, and an `import simmtm` without torch or Ray."""

from __future__ import annotations

import dataclasses
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


def test_the_api_names_share_their_submodules(tmp_path: Path) -> None:
    from simmtm import pretrain as module

    assert module is simmtm.pretrain and callable(module) and hasattr(module, "run")  # still the module
    from simmtm.sweep import driver

    assert callable(simmtm.sweep) and simmtm.sweep.driver is driver
