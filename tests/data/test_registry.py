"""Named data sets: resolution under the data directory and the entry point (downloads: test_download.py)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest

from simmtm.config.schema import DataConfig
from simmtm.data.classification import ClassificationSplits
from simmtm.data.forecasting import ForecastingSplits
from simmtm.data.registry import data_dir, get_dataset, load_splits, resolve
from simmtm.errors import DataError


def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


@pytest.fixture
def shared_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    root = shared_data().resolve()
    monkeypatch.setenv("SIMMTM_DATA_DIR", str(root))
    return root


# --- names and the data directory ------------------------------------------------------------------------------


def test_names_resolve_case_insensitively_under_the_data_dir(shared_dir: Path) -> None:
    ett = resolve(DataConfig(name="etth1"))
    assert (ett.task, ett.path, ett.name) == ("forecasting", shared_dir / "ETT-small" / "ETTh1.csv", "ETTh1")
    gun = resolve(DataConfig(name="GUNPOINT"))
    assert (gun.task, gun.path) == ("classification", shared_dir / "UCR" / "GunPoint" / "GunPoint_TRAIN.ts")
    assert get_dataset("electricity").name == "ECL"


def test_unknown_name_lists_the_known_ones(shared_dir: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data set 'ETTh9'; known names: ETTh1, ETTh2, .*GunPoint"):
        resolve(DataConfig(name="ETTh9"))


def test_data_dir_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMMTM_DATA_DIR", raising=False)
    assert data_dir() == Path(platformdirs.user_cache_dir("simmtm"))


# --- paths and task inference ----------------------------------------------------------------------------------


def test_task_is_inferred_from_the_path(shared_dir: Path, tmp_path: Path) -> None:
    csv = resolve(DataConfig(path=str(shared_dir / "ETT-small" / "ETTh2.csv")))
    assert (csv.task, csv.name) == ("forecasting", "ETTh2")
    ts = resolve(DataConfig(path=str(shared_dir / "UCR" / "BasicMotions" / "BasicMotions_TEST.ts")))
    assert (ts.task, ts.name) == ("classification", "BasicMotions")
    folder = resolve(DataConfig(path=str(shared_dir / "UCR" / "GunPoint")))
    assert (folder.task, folder.name) == ("classification", "GunPoint")
    (tmp_path / "x.npz").write_bytes(b"")
    assert resolve(DataConfig(path=str(tmp_path / "x.npz"))).task == "classification"
    (tmp_path / "x.dat").write_bytes(b"")
    assert resolve(DataConfig(path=str(tmp_path / "x.dat"), task="classification")).task == "classification"
    with pytest.raises(DataError, match=r"x\.dat: cannot tell the task from suffix '\.dat'"):
        resolve(DataConfig(path=str(tmp_path / "x.dat")))


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: .*absent\.csv does not exist"):
        resolve(DataConfig(path=str(tmp_path / "absent.csv")))
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"x\.npz: forecasting reads a \.csv file"):
        resolve(DataConfig(path=str(tmp_path / "x.npz"), task="forecasting"))


def test_load_splits_is_the_one_entry_point(shared_dir: Path) -> None:
    forecasting = load_splits(DataConfig(name="ETTh1", seq_len=96, features="S"), horizon=24)
    assert isinstance(forecasting, ForecastingSplits)
    assert forecasting.columns == ["OT"] and len(forecasting.val) == 2880 + 96
    classification = load_splits(DataConfig(name="GunPoint", val_fraction=0.1), seed=1)
    assert isinstance(classification, ClassificationSplits)
    assert len(classification.val[0]) == 5 and len(classification.test[0]) == 150
