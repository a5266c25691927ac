"""Data: forecasting CSVs and classification archives, split, standardised and cut into datasets.

``load_splits(cfg)`` is the entry point: it resolves ``data.name`` / ``data.path`` (see ``registry``) and calls
``load_forecasting`` or ``load_classification``. ``download(name)`` fetches a named data set.

May import: ``simmtm.config``, ``simmtm.errors``.
"""

from simmtm.data.classification import (
    ClassificationSplits,
    LabelledDataset,
    load_classification,
    read_ts,
    stratified_split,
)
from simmtm.data.download import download
from simmtm.data.forecasting import ForecastingSplits, WindowDataset, load_forecasting
from simmtm.data.registry import (
    DATASETS,
    DatasetSpec,
    ResolvedData,
    data_dir,
    dataset_names,
    get_dataset,
    load_splits,
    resolve,
)

__all__ = [
    "ClassificationSplits",
    "DATASETS",
    "DatasetSpec",
    "ForecastingSplits",
    "LabelledDataset",
    "ResolvedData",
    "WindowDataset",
    "data_dir",
    "dataset_names",
    "download",
    "get_dataset",
    "load_classification",
    "load_forecasting",
    "load_splits",
    "read_ts",
    "resolve",
    "stratified_split",
]
