"""Every run/sweep YAML shipped under sweeps/ and benchmarks/ loads, and opens with a header comment that says how to
run it."""

from __future__ import annotations

import glob
import shlex
from pathlib import Path

import numpy as np
import pytest

from simmtm.cli import main
from simmtm.config.schema import DataConfig, load_config
from simmtm.data import ClassificationSplits, load_splits

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
SHIPPED = sorted(SWEEPS.rglob("*.yaml")) + sorted((ROOT / "benchmarks").rglob("*.yaml"))
KNOWN = {"quick.yaml", "etth1.yaml", "gunpoint.yaml", "search_problem.yaml"}


def test_the_shipped_configs_are_all_found() -> None:
    assert len(SHIPPED) >= 4  # the four below when this test was last changed; sweep files are added over time
    assert KNOWN <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.data.name or config.data.path


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_config_has_a_header_with_its_command(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("#"), f"{path.name}: the first line must be a '#' header comment"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("simmtm " in line for line in header), f"{path.name}: the header must show the `simmtm ...` command"


# --- nothing valid today is refused (issue 25.3): the shipped configs with their data, the held-in data sets, and
# the README's tour of the commands


@pytest.mark.slow
def test_validate_data_accepts_every_shipped_config(shared_data, capsys) -> None:
    """The data checks (finite after scaling, labels, repeated columns, device) pass every shipped YAML's data."""
    assert main(["validate", *map(str, SHIPPED), "--data"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(SHIPPED) and all(line.startswith("ok ") for line in out), out


@pytest.mark.parametrize("name", ["ETTh1", "ETTh2", "GunPoint", "BasicMotions"])
def test_a_held_in_data_set_loads_as_before(name: str, shared_data) -> None:
    splits = load_splits(DataConfig(name=name, seq_len=96), horizon=24)
    if isinstance(splits, ClassificationSplits):
        arrays = [splits.train[0], splits.val[0], splits.test[0]]
        labels = [set(part[1].tolist()) for part in (splits.train, splits.val, splits.test)]
        assert len(labels[0]) == splits.num_classes >= 2 and labels[1] | labels[2] <= labels[0]
    else:
        arrays = [splits.train, splits.val, splits.test]
        assert splits.columns[-1] == "OT" and len(set(splits.columns)) == len(splits.columns) == 7
        target = load_splits(DataConfig(name=name, seq_len=96, features="S", target="OT"), horizon=24)
        assert target.columns == ["OT"]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays)
    assert abs(float(arrays[0].mean())) < 1e-3  # standardised on the train split


README = ROOT / "README.md"
# What makes each README command seconds long here; the commands themselves run as written. data.features=S (the
# target column of ETTh1's 7): scoring the whole validation and test splits, which no step limit shortens, was most
# of the test's time.
SMALL = {
    "run": ["data.features=S", "pretrain.epochs=1", "pretrain.max_steps=2", "finetune.epochs=1", "finetune.max_steps=2"],
    "sweep": ["data.features=S", "pretrain.epochs=1", "pretrain.max_steps=2", "finetune.epochs=1",
              "finetune.max_steps=2", "tune.num_samples=2", "tune.probe_steps=2", "tune.confirm.seeds=0",
              "tune.scheduler.grace_period=1"],
}


def readme_tour() -> list[list[str]]:
    """The `simmtm ...` commands of the README's "A tour of the commands" block, split at '&&', comments dropped."""
    section = README.read_text().split("## A tour of the commands", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        for part in line.split("#", 1)[0].split("&&"):
            if part.strip():
                commands.append(shlex.split(part.strip()))
    return commands


@pytest.mark.slow
@pytest.mark.timeout(1200)  # six commands: 13 min at load average 30 on the shared 2 cores
def test_the_readme_tour_runs_as_written(tmp_path: Path, shared_data, shared_ray, monkeypatch, capsys) -> None:
    """Each command as a user types it (in the folder the README's paths are relative to), each shrunk by --set to a
    few steps (SMALL). Each calls the CLI's main() in this process (no interpreter start each); the sweep joins the
    suite's shared Ray."""
    commands = readme_tour()
    assert [c[:2] for c in commands] == [["simmtm", v] for v in
                                         ("validate", "run", "sweep", "analyze", "recommend", "export")], commands
    (tmp_path / "sweeps").symlink_to(SWEEPS)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = [arg for word in command[1:] for arg in (sorted(glob.glob(str(tmp_path / word))) if "*" in word else [word])]
        for key in SMALL.get(argv[0], []):
            argv += ["--set", key]
        assert main(argv) == 0, (argv, capsys.readouterr().err[-3000:])
    assert (tmp_path / "best.yaml").is_file() and (tmp_path / "runs" / "encoder" / "encoder.safetensors").is_file()
