"""Forecasting CSVs: split borders, scaling, feature selection, errors, and sliding windows."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from simmtm.data.forecasting import WindowDataset, load_forecasting
from simmtm.errors import DataError


def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


@pytest.fixture(scope="module")
def etth1() -> Path:
    return shared_data() / "ETT-small" / "ETTh1.csv"


def write_csv(path: Path, rows: int, *, freq: str = "h", columns: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(5.0, 2.0, size=(rows, columns)), columns=[f"c{i}" for i in range(columns)])
    frame.insert(0, "date", pd.date_range("2020-01-01", periods=rows, freq=freq))
    frame.to_csv(path, index=False)
    return path


# --- ETT borders and scaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [0, 96])
def test_etth1_uses_the_12_4_4_month_borders(etth1: Path, horizon: int) -> None:
    splits = load_forecasting(etth1, seq_len=96, horizon=horizon)
    assert splits.train.shape == (8640, 7)
    assert splits.val.shape == (2880 + 96, 7)
    assert splits.test.shape == (2880 + 96, 7)
    assert splits.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert splits.train.dtype == np.float32


def test_etth1_scaler_is_fitted_on_train_only(etth1: Path) -> None:
    splits = load_forecasting(etth1, seq_len=96)
    np.testing.assert_allclose(splits.train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(splits.train.std(axis=0), 1.0, atol=1e-4)
    assert np.abs(splits.test.mean(axis=0)).max() > 0.2  # the test months drift away from the train statistics

    raw = pd.read_csv(etth1).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(splits.mean, raw[:8640].mean(axis=0))
    # the first test target (row 11520) sits right after the seq_len lead-in
    np.testing.assert_allclose(splits.inverse_transform(splits.test[96]), raw[11520], rtol=1e-5)
    np.testing.assert_allclose(splits.inverse_transform(splits.val[0]), raw[8640 - 96], rtol=1e-5)


def test_s_mode_keeps_only_the_target(etth1: Path) -> None:
    every = load_forecasting(etth1, seq_len=96, features="M")
    single = load_forecasting(etth1, seq_len=96, features="S", target="OT")
    assert single.columns == ["OT"]
    assert single.train.shape == (8640, 1)
    np.testing.assert_allclose(single.test[:, 0], every.test[:, -1], atol=1e-6)


def test_quarter_hour_ett_file_scales_the_borders(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ETTm_toy.csv", 4 * 14400 + 10, freq="15min", columns=1)
    splits = load_forecasting(path, seq_len=16)
    assert len(splits.train) == 4 * 8640
    assert len(splits.val) == 4 * 2880 + 16
    assert len(splits.test) == 4 * 2880 + 16


def test_short_ett_file_is_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ETTh_short.csv", 1000)
    with pytest.raises(DataError, match=r"ETTh_short\.csv.*needs 14400 rows, the file has 1000"):
        load_forecasting(path, seq_len=16)


# --- any other CSV --------------------------------------------------------------------------------------------


def test_other_files_split_70_10_20(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "toy.csv", 1000)
    splits = load_forecasting(path, seq_len=24)
    assert len(splits.train) == 700
    assert len(splits.val) == 100 + 24
    assert len(splits.test) == 200 + 24
    raw = pd.read_csv(path).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(splits.inverse_transform(splits.val[24]), raw[700], rtol=1e-5)
    np.testing.assert_allclose(splits.inverse_transform(splits.test[-1]), raw[-1], rtol=1e-5)


def test_date_column_found_by_name_or_first_position(tmp_path: Path) -> None:
    frame = pd.DataFrame({"load": np.arange(100.0), "Date": pd.date_range("2021-01-01", periods=100, freq="D")})
    frame.to_csv(tmp_path / "named.csv", index=False)
    assert load_forecasting(tmp_path / "named.csv", seq_len=4).columns == ["load"]

    frame = frame.rename(columns={"Date": "timestamp"})[["timestamp", "load"]]
    frame.to_csv(tmp_path / "first.csv", index=False)
    assert load_forecasting(tmp_path / "first.csv", seq_len=4).columns == ["load"]


def test_constant_column_does_not_divide_by_zero(tmp_path: Path) -> None:
    frame = pd.DataFrame({"date": pd.date_range("2021-01-01", periods=50, freq="h"), "flat": 3.0})
    frame.to_csv(tmp_path / "flat.csv", index=False)
    splits = load_forecasting(tmp_path / "flat.csv", seq_len=4)
    assert np.isfinite(splits.test).all()
    assert splits.std[0] == 1.0


# --- errors ---------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_forecasting(tmp_path / "nope.csv", seq_len=8)


def test_no_date_column(tmp_path: Path) -> None:
    pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0)}).to_csv(tmp_path / "nodate.csv", index=False)
    with pytest.raises(DataError, match=r"nodate\.csv: no date column.*'a', 'b'"):
        load_forecasting(tmp_path / "nodate.csv", seq_len=8)


def test_non_numeric_column_is_named(tmp_path: Path) -> None:
    frame = pd.read_csv(write_csv(tmp_path / "text.csv", 50))
    frame["station"] = "north"
    frame.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(DataError, match=r"text\.csv: non-numeric column\(s\) \['station'\]"):
        load_forecasting(tmp_path / "text.csv", seq_len=8)


def test_nan_values_are_counted_per_column(tmp_path: Path) -> None:
    frame = pd.read_csv(write_csv(tmp_path / "holes.csv", 50))
    frame.loc[[3, 7, 9], "c1"] = np.nan
    frame.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(DataError, match=r"holes\.csv: missing values in column\(s\) 'c1' \(3 NaN\)"):
        load_forecasting(tmp_path / "holes.csv", seq_len=8)


def test_unknown_target_lists_the_columns(etth1: Path) -> None:
    with pytest.raises(DataError, match=r"ETTh1\.csv: target column 'TEMP' not found.*'HUFL'.*'OT'"):
        load_forecasting(etth1, seq_len=96, features="S", target="TEMP")


def test_seq_len_longer_than_train_names_the_limit(etth1: Path) -> None:
    message = r"ETTh1\.csv: seq_len 8600 \+ horizon 96 .*8640 rows.*maximum valid seq_len is 8544"
    with pytest.raises(DataError, match=message):
        load_forecasting(etth1, seq_len=8600, horizon=96)


def test_horizon_longer_than_validation(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "small.csv", 100)  # 70 / 10 / 20 rows
    with pytest.raises(DataError, match=r"small\.csv: horizon 12 is longer than the validation split \(10 rows\)"):
        load_forecasting(path, seq_len=8, horizon=12)
    splits = load_forecasting(path, seq_len=8, horizon=10)  # exactly one validation window
    assert len(WindowDataset(splits.val, 8, 10)) == 1


# --- windows --------------------------------------------------------------------------------------------------


def test_window_dataset_lengths_shapes_and_stride() -> None:
    array = np.arange(40, dtype=np.float32).reshape(20, 2)  # (T=20, C=2)
    plain = WindowDataset(array, seq_len=5)
    assert len(plain) == 16
    assert plain[0].shape == (5, 2) and plain[0].dtype == torch.float32
    assert plain[-1][-1, 0].item() == 38.0

    paired = WindowDataset(array, seq_len=5, horizon=3)
    assert len(paired) == 13
    x, y = paired[2]
    assert x.shape == (5, 2) and y.shape == (3, 2)
    assert y[0, 0].item() == x[-1, 0].item() + 2  # the target continues right after the input

    strided = WindowDataset(array, seq_len=5, horizon=3, stride=4)
    assert len(strided) == 4  # starts 0, 4, 8, 12
    assert strided[3][0][0, 0].item() == 24.0
    with pytest.raises(IndexError):
        strided[4]


def test_window_dataset_rejects_a_too_short_split() -> None:
    with pytest.raises(DataError, match=r"6 rows holds no window of seq_len 5 \+ horizon 2"):
        WindowDataset(np.zeros((6, 1), dtype=np.float32), seq_len=5, horizon=2)


def _dated(path: Path, header: str, rows: int = 200) -> Path:
    dates = pd.date_range("2021-01-01", periods=rows, freq="h").astype(str)
    body = "".join(f"{d},{i % 7}.5,{i % 5}.25,{i % 3}.0\n" for i, d in enumerate(dates))
    path.write_text(header + "\n" + body)
    return path


def test_a_repeated_target_is_refused_and_another_repeated_name_warned(tmp_path: Path, caplog) -> None:
    path = _dated(tmp_path / "dup.csv", "date,OT,x,OT")
    with pytest.raises(DataError, match=r"dup.csv: the target column 'OT' occurs 2 times in the header"):
        load_forecasting(path, seq_len=8, features="S", target="OT")
    assert load_forecasting(path, seq_len=8, features="S", target="x").columns == ["x"]  # the repeat is not read
    assert not caplog.records
    splits = load_forecasting(path, seq_len=8, features="M")
    assert splits.columns == ["OT", "x", "OT.1"]
    assert [r.getMessage() for r in caplog.records] == [f"{path}: column 'OT' occurs 2 times in the header; read as ['OT', 'OT.1']"]


@pytest.mark.parametrize(("row", "value", "where"), [(3, 1e308, "row 4 (line 5)"), (190, 1e308, "row 191 (line 192)"),
                                                     (150, -6e38, "row 151 (line 152)")])
def test_a_value_that_overflows_once_standardised_is_named(tmp_path: Path, row: int, value: float, where: str) -> None:
    path = _dated(tmp_path / "big.csv", "date,a,b,c")
    frame = pd.read_csv(path)
    frame.loc[row, "b"] = value
    frame.to_csv(path, index=False)
    with np.errstate(all="raise"):  # numpy's own overflow warning must not be what the user sees
        with pytest.raises(DataError, match=rf"big.csv: column 'b', {re.escape(where)}: .*overflows"):
            load_forecasting(path, seq_len=8)
