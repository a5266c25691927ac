"""Forecasting data: one CSV (a date column plus numeric columns) cut into train / val / test and windows.

Split borders follow Time-Series-Library. Files whose stem starts with ``ETTh`` or ``ETTm`` use the ETT split of
12 / 4 / 4 months, with a month of 30 days counted in rows of the sampling step read from the date column (hourly:
borders 0 / 8640 / 11520 / 14400; 15 minutes: four times that). Any other file uses 70 / 10 / 20 per cent. The
validation and test arrays start ``seq_len`` rows before their border so that their first target lies inside
the split. A standard scaler is fitted on the train rows only.
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from simmtm.data.checks import apply_scaler, fit_scaler
from simmtm.data.formats import FORMATS, FileFormat, get_format, register_format
from simmtm.errors import DataError

__all__ = ["ForecastingSplits", "WindowDataset", "load_forecasting", "split_borders"]

logger = logging.getLogger(__name__)

ETT_PREFIXES = ("ETTh", "ETTm")
ETT_MONTHS = (12, 4, 4)  # train / val / test
DAYS_PER_MONTH = 30
STD_FLOOR = 1e-8  # a channel whose train std is below this is only centred (scaled by 1), as sklearn does


@dataclass
class ForecastingSplits:
    """Standardised splits of one CSV; ``val`` and ``test`` include their ``seq_len`` lead-in rows."""

    train: np.ndarray  # (T_train, C) float32
    val: np.ndarray  # (seq_len + T_val, C) float32
    test: np.ndarray  # (seq_len + T_test, C) float32
    columns: list[str]
    mean: np.ndarray  # (C,) of the train rows, in the file's units
    std: np.ndarray  # (C,)
    path: Path

    @property
    def channels(self) -> int:
        return len(self.columns)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Map standardised values (..., C) back to the file's units."""
        return x * self.std + self.mean


class WindowDataset(Dataset):
    """Sliding windows over one split: ``x`` of (seq_len, C), and ``y`` of (horizon, C) when horizon > 0."""

    def __init__(self, array: np.ndarray, seq_len: int, horizon: int = 0, stride: int = 1) -> None:
        if seq_len < 1 or horizon < 0 or stride < 1:
            raise ValueError(f"need seq_len >= 1, horizon >= 0, stride >= 1; got {seq_len}, {horizon}, {stride}")
        if array.ndim != 2:
            raise ValueError(f"expected an array of (T, C), got shape {array.shape}")
        span = seq_len + horizon
        if len(array) < span:
            raise DataError(
                f"a split of {len(array)} rows holds no window of seq_len {seq_len} + horizon {horizon} = {span} rows"
            )
        self.data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # (T, C)
        self.seq_len = seq_len
        self.horizon = horizon
        self.stride = stride
        self._count = (len(array) - span) // stride + 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"window {index} out of range for {self._count} windows")
        start = index * self.stride
        x = self.data[start : start + self.seq_len]  # (seq_len, C)
        if self.horizon == 0:
            return x
        y = self.data[start + self.seq_len : start + self.seq_len + self.horizon]  # (horizon, C)
        return x, y


# --- reading -------------------------------------------------------------------------------------------------


@register_format
class CsvFormat(FileFormat):
    """A CSV with a date column (named ``date``, or the first column) and numeric columns."""

    suffix = ".csv"
    task = "forecasting"

    def read(self, path: Path) -> pd.DataFrame:
        return _read_csv(path)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file (forecasting reads a CSV with a date column and numeric columns)")
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read as CSV: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise DataError(f"{path}: the CSV has no data rows")
    frame.attrs["repeated"] = _repeated_names(path, [str(c) for c in frame.columns])
    return frame


def _repeated_names(path: Path, read_as: list[str]) -> dict[str, list[str]]:
    """Header names given more than once -> the names pandas read them under ('OT', 'OT.1', ...)."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        header = next(csv.reader(handle), [])
    if len(header) != len(read_as):
        return {}
    columns: dict[str, list[str]] = {}
    for raw, name in zip(header, read_as):
        columns.setdefault(raw, []).append(name)
    return {raw: names for raw, names in columns.items() if len(names) > 1}


def _parse_dates(column: pd.Series) -> pd.Series | None:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format" noise: a failure is reported below
        try:
            dates = pd.to_datetime(column)
        except (ValueError, TypeError, OverflowError):
            return None
    return None if dates.isna().any() else dates


def _date_column(frame: pd.DataFrame, path: Path) -> tuple[str, pd.Series]:
    named = [c for c in frame.columns if str(c).strip().lower() == "date"]
    if named:
        dates = _parse_dates(frame[named[0]])
        if dates is None:
            raise DataError(f"{path}: column '{named[0]}' does not parse as dates (expected e.g. 2016-07-01 00:00:00)")
        return named[0], dates
    first = frame.columns[0]
    dates = _parse_dates(frame[first])
    if dates is None:
        raise DataError(
            f"{path}: no date column: expected a column named 'date' or a first column of dates, "
            f"got columns {list(map(str, frame.columns))}"
        )
    return first, dates


def _select_columns(frame: pd.DataFrame, path: Path, date: str, features: str, target: str) -> list[str]:
    available = [str(c) for c in frame.columns if c != date]
    repeated: dict[str, list[str]] = frame.attrs.get("repeated", {})
    if features == "M":
        columns = available
    elif features == "S":
        if target in repeated:
            raise DataError(
                f"{path}: the target column '{target}' occurs {len(repeated[target])} times in the header; rename "
                "all but the one to forecast (data.target names one column)"
            )
        if target not in available:
            raise DataError(f"{path}: target column '{target}' not found (features S); available columns: {available}")
        columns = [target]
    else:
        raise DataError(f"{path}: features must be 'M' (all columns) or 'S' (the target column), got {features!r}")
    if not columns:
        raise DataError(f"{path}: no value columns besides the date column '{date}'")
    for raw, names in repeated.items():
        if set(names[1:]) & set(columns):
            logger.warning("%s: column '%s' occurs %d times in the header; read as %s", path, raw, len(names), names)
    text = [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
    if text:
        raise DataError(f"{path}: non-numeric column(s) {text}; every column besides the date must hold numbers")
    missing = {c: int(n) for c, n in frame[columns].isna().sum().items() if n}
    if missing:
        listed = ", ".join(f"'{c}' ({n} NaN)" for c, n in missing.items())
        raise DataError(f"{path}: missing values in column(s) {listed}; fill or drop them before training")
    infinite = [c for c in columns if not np.isfinite(frame[c].to_numpy(dtype=np.float64)).all()]
    if infinite:
        raise DataError(f"{path}: infinite values in column(s) {infinite}")
    return columns


# --- splitting -----------------------------------------------------------------------------------------------


def _rows_per_month(dates: pd.Series, path: Path) -> int:
    steps = dates.diff().dropna()
    if steps.empty:
        raise DataError(f"{path}: one row is too few to infer the sampling frequency from column dates")
    step = steps.mode().iloc[0]
    if step <= pd.Timedelta(0):
        raise DataError(f"{path}: dates must increase; the most common step is {step}")
    month = pd.Timedelta(days=DAYS_PER_MONTH)
    if month % step != pd.Timedelta(0):
        raise DataError(f"{path}: the ETT split needs a sampling step that divides 30 days, got {step}")
    return int(month // step)


def split_borders(path: Path, n_rows: int, dates: pd.Series) -> tuple[int, int, int]:
    """End rows of train, val and test: the ETT month split for ETTh*/ETTm* files, else 70 / 10 / 20."""
    if path.stem.startswith(ETT_PREFIXES):
        month = _rows_per_month(dates, path)
        train_end = ETT_MONTHS[0] * month
        val_end = train_end + ETT_MONTHS[1] * month
        test_end = val_end + ETT_MONTHS[2] * month
        if n_rows < test_end:
            raise DataError(
                f"{path}: the ETT split (12/4/4 months of {month} rows) needs {test_end} rows, the file has {n_rows}; "
                "rename the file (a stem not starting with ETTh/ETTm) to use the 70/10/20 split"
            )
        return train_end, val_end, test_end
    num_train = int(n_rows * 0.7)
    num_test = int(n_rows * 0.2)
    return num_train, n_rows - num_test, n_rows


def _check_lengths(path: Path, borders: tuple[int, int, int], seq_len: int, horizon: int) -> None:
    train_end, val_end, test_end = borders
    lengths = {"train": train_end, "validation": val_end - train_end, "test": test_end - val_end}
    if seq_len + horizon > lengths["train"]:
        raise DataError(
            f"{path}: seq_len {seq_len} + horizon {horizon} is longer than the train split ({lengths['train']} rows); "
            f"the maximum valid seq_len is {lengths['train'] - horizon}"
        )
    for split in ("validation", "test"):
        if horizon > lengths[split]:
            raise DataError(
                f"{path}: horizon {horizon} is longer than the {split} split ({lengths[split]} rows); "
                f"the maximum valid horizon is {min(lengths['validation'], lengths['test'])}"
            )


def load_forecasting(
    path: Path,
    *,
    seq_len: int,
    horizon: int = 0,
    features: str = "M",
    target: str = "OT",
    pretrain_horizon_cut: int = 0,
) -> ForecastingSplits:
    """Read a forecasting CSV, split it, and standardise it with the train rows' mean and std.

    ``pretrain_horizon_cut``: with ``horizon`` 0 (pre-training), every split ends that many rows early, so that the
    windows are the official pre-training's (its loaders cut windows as if a horizon of pred_len followed)."""
    path = Path(path)
    if seq_len < 1 or horizon < 0:
        raise ValueError(f"need seq_len >= 1 and horizon >= 0, got {seq_len} and {horizon}")
    fmt = get_format(path)
    if fmt is None or fmt.task != "forecasting":
        fmt = FORMATS[CsvFormat.suffix]  # any other file is read as CSV
    frame = fmt.read(path)
    date, dates = _date_column(frame, path)
    columns = _select_columns(frame, path, date, features, target)
    values = frame[columns].to_numpy(dtype=np.float64)  # (T, C)
    borders = split_borders(path, len(values), dates)
    cut = pretrain_horizon_cut if horizon == 0 else 0
    _check_lengths(path, borders, seq_len, horizon or cut)
    train_end, val_end, test_end = borders

    def where(at: tuple[int, ...]) -> str:
        return f"{path}: column '{columns[at[1]]}', row {at[0] + 1} (line {at[0] + 2})"

    mean, std = fit_scaler(values[:train_end], 1, STD_FLOOR, where)
    scaled = apply_scaler(values, mean, std, 1, where)
    logger.debug("%s: %d rows, %d channels, borders %s", path, len(values), len(columns), borders)
    return ForecastingSplits(
        train=scaled[: train_end - cut],
        val=scaled[train_end - seq_len : val_end - cut],
        test=scaled[val_end - seq_len : test_end - cut],
        columns=columns,
        mean=mean,
        std=std,
        path=path,
    )
