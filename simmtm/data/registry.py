"""Named data sets, the data directory, and the one entry point that turns a ``DataConfig`` into splits.

A name (case-insensitive) resolves to files under the data directory, laid out as in Time-Series-Library
(``ETT-small/ETTh1.csv``, ``weather/weather.csv``, ...) and, for the UEA/UCR archive, ``UCR/<Name>/<Name>_TRAIN.ts``.
The data directory is ``$SIMMTM_DATA_DIR`` when set, else the user cache directory (``platformdirs``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from simmtm.config.schema import DataConfig
from simmtm.data.classification import ClassificationSplits, load_classification
from simmtm.data.download import DatasetSpec, download
from simmtm.data.forecasting import ForecastingSplits, load_forecasting
from simmtm.data.formats import Task, get_format, suffixes
from simmtm.errors import DataError

__all__ = [
    "Task",
    "DatasetSpec",
    "DATASETS",
    "ResolvedData",
    "data_dir",
    "worker_env",
    "dataset_names",
    "get_dataset",
    "resolve",
    "load_splits",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SIMMTM_DATA_DIR"
ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{file}"
UCR_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"
TSLIB_MANUAL = (
    "it is not fetched automatically (no stable public raw URL): download the data archive linked from the "
    "README of github.com/thuml/Time-Series-Library (or Autoformer) and copy {file} from it"
)


def _ett(name: str, description: str) -> DatasetSpec:
    file = f"{name}.csv"
    return DatasetSpec(name, "forecasting", (f"ETT-small/{file}",), ETT_URL.format(file=file), description)


def _tslib(name: str, file: str, description: str, aliases: tuple[str, ...] = ()) -> DatasetSpec:
    return DatasetSpec(name, "forecasting", (file,), None, description, TSLIB_MANUAL.format(file=file), aliases)


def _ucr(name: str, description: str) -> DatasetSpec:
    files = (f"UCR/{name}/{name}_TRAIN.ts", f"UCR/{name}/{name}_TEST.ts")
    return DatasetSpec(name, "classification", files, UCR_URL.format(name=name), description)


_SPECS = [
    _ett("ETTh1", "electricity transformer temperature, hourly, 7 channels"),
    _ett("ETTh2", "electricity transformer temperature, hourly, 7 channels"),
    _ett("ETTm1", "electricity transformer temperature, 15 minutes, 7 channels"),
    _ett("ETTm2", "electricity transformer temperature, 15 minutes, 7 channels"),
    _tslib("Weather", "weather/weather.csv", "weather station, 10 minutes, 21 channels"),
    _tslib("ECL", "electricity/electricity.csv", "electricity consumption, hourly, 321 clients", ("electricity",)),
    _tslib("Traffic", "traffic/traffic.csv", "road occupancy, hourly, 862 sensors"),
    _ucr("GunPoint", "UCR, univariate, length 150, 2 classes"),
    _ucr("ECG200", "UCR, univariate, length 96, 2 classes"),
    _ucr("ECG5000", "UCR, univariate, length 140, 5 classes"),
    _ucr("FordA", "UCR, univariate, length 500, 2 classes"),
    _ucr("FordB", "UCR, univariate, length 500, 2 classes"),
    _ucr("Wafer", "UCR, univariate, length 152, 2 classes"),
    _ucr("TwoPatterns", "UCR, univariate, length 128, 4 classes"),
    _ucr("BasicMotions", "UEA, 6 channels, length 100, 4 classes"),
    # The UEA accelerometer set, not the single-channel EEG "Epilepsy" of the SimMTM paper (use its .pt files).
    _ucr("Epilepsy", "UEA, 3 channels, length 206, 4 classes (accelerometer, not the SimMTM EEG set)"),
    _ucr("NATOPS", "UEA, 24 channels, length 51, 6 classes"),
    _ucr("ArticularyWordRecognition", "UEA, 9 channels, length 144, 25 classes"),
    _ucr("UWaveGestureLibrary", "UEA, 3 channels, length 315, 8 classes"),
]

DATASETS: dict[str, DatasetSpec] = {spec.name.lower(): spec for spec in _SPECS}
_ALIASES: dict[str, str] = {alias.lower(): spec.name.lower() for spec in _SPECS for alias in spec.aliases}


def dataset_names() -> list[str]:
    """The registered names, as spelled in the registry."""
    return [spec.name for spec in DATASETS.values()]


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a named data set (case-insensitive), or DataError listing the known names."""
    key = name.lower()
    spec = DATASETS.get(_ALIASES.get(key, key))
    if spec is None:
        raise DataError(f"unknown data set '{name}'; known names: {', '.join(dataset_names())} (or set data.path)")
    return spec


def data_dir() -> Path:
    """``$SIMMTM_DATA_DIR`` when set, else the user cache directory for simmtm."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("simmtm"))


def worker_env() -> dict[str, str]:
    """What Ray workers must inherit from this process to find the same data: ``$SIMMTM_DATA_DIR``, when set."""
    return {DATA_DIR_ENV: os.environ[DATA_DIR_ENV]} if DATA_DIR_ENV in os.environ else {}


# --- resolving a config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedData:
    """What a DataConfig points at: the task, the path a loader reads, and a display name."""

    task: Task
    path: Path
    name: str


def _resolve_name(name: str) -> tuple[DatasetSpec, Path]:
    spec = get_dataset(name)
    root = data_dir()
    if not all((root / f).is_file() for f in spec.files):
        download(spec, root)  # first use: fetch it (DataError says which file to put where when that fails)
    return spec, root / spec.files[0]


def _display_name(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    for suffix in ("_TRAIN", "_TEST"):
        if stem.upper().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _require_openable(path: Path) -> None:
    """Refuse a data path that is missing, a broken or looping symbolic link, or cannot be looked at."""
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(
                f"data.path: {path} is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        raise DataError(f"data.path: {path} does not exist (give a .csv, .ts, .pt, .npz file or a directory)") from None
    except OSError as exc:  # a symbolic-link loop (ELOOP), a component that is a file, no permission
        raise DataError(f"data.path: {path}: cannot open ({exc.strerror or type(exc).__name__})") from None


def resolve(cfg: DataConfig) -> ResolvedData:
    """Find the file a config names and the task it serves (``cfg.task``, else the registry, else the suffix)."""
    spec: DatasetSpec | None = None
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        _require_openable(path)
        if cfg.name is not None:
            key = cfg.name.lower()
            spec = DATASETS.get(_ALIASES.get(key, key))  # a known name informs the task; any name labels the run
        name = cfg.name or _display_name(path)
    else:
        assert cfg.name is not None  # DataConfig requires name or path
        spec, path = _resolve_name(cfg.name)
        name = spec.name

    if path.is_dir() and get_format(path) is not None:
        raise DataError(f"data.path: {path}: is a folder; a {path.suffix} data path names a file")
    if cfg.task is not None:
        task: Task = cfg.task
    elif spec is not None:
        task = spec.task
    elif path.is_dir():
        task = "classification"
    elif (fmt := get_format(path)) is not None:
        task = fmt.task
    else:
        raise DataError(
            f"{path}: cannot tell the task from suffix '{path.suffix}'; use {'/'.join(suffixes('forecasting'))} "
            f"(forecasting), {'/'.join(suffixes('classification'))} or a directory (classification), or set data.task"
        )
    fmt = get_format(path)  # a directory's suffix counts too: a folder named x.csv is no classification set
    if task == "forecasting" and (path.is_dir() or fmt is None or fmt.task != "forecasting"):
        raise DataError(
            f"{path}: forecasting reads a {' or '.join(suffixes('forecasting'))} file (a date column plus "
            "numeric columns)"
        )
    if task == "classification" and fmt is not None and fmt.task != "classification":
        raise DataError(
            f"{path}: classification reads {', '.join(suffixes('classification'))} files or a directory "
            f"of them, not {path.suffix}"
        )
    logger.debug("data %s -> %s (%s)", name, path, task)
    return ResolvedData(task=task, path=path, name=name)


def load_splits(cfg: DataConfig, *, horizon: int = 0, seed: int = 0) -> ForecastingSplits | ClassificationSplits:
    """Resolve a config and load its splits: the one entry point for training code."""
    resolved = resolve(cfg)
    if resolved.task == "forecasting":
        return load_forecasting(
            resolved.path,
            seq_len=cfg.seq_len,
            horizon=horizon,
            features=cfg.features,
            target=cfg.target,
            pretrain_horizon_cut=cfg.pretrain_horizon_cut,
        )
    return load_classification(
        resolved.path, val_fraction=cfg.val_fraction, seed=seed, unequal_length=cfg.unequal_length, seq_len=cfg.seq_len
    )
