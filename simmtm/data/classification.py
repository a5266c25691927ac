"""Classification data: UEA/UCR ``.ts`` files and ``.pt`` / ``.npz`` tensors, split and standardised per channel.

Layouts read by :func:`load_classification`:

- a ``.ts`` TRAIN/TEST pair (the path names ``*_TRAIN.ts``, ``*_TEST.ts`` or a directory holding them): validation
  is a stratified, seeded ``val_fraction`` share of the train file; test is the TEST file;
- a directory with ``train.pt``, ``val.pt`` and ``test.pt`` (the official SimMTM layout; ``.npz`` works too);
- a single ``.pt``, ``.npz`` or ``.ts`` file: a stratified, seeded 60 / 20 / 20 split.

``.pt`` and ``.npz`` files hold ``samples`` of (N, C, L) (or (N, L) for one channel) and ``labels`` of (N,).
Labels become ints in sorted order of the unique labels (numeric labels sort as numbers, text as strings), and the
class names are kept. Samples come back time-major, (N, L, C) float32, as the encoders take them.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from simmtm.data.formats import FileFormat, get_format, register_format, suffixes
from simmtm.errors import DataError

__all__ = ["ClassificationSplits", "LabelledDataset", "load_classification", "read_ts", "stratified_split"]

logger = logging.getLogger(__name__)

SINGLE_FILE_FRACTIONS = (0.2, 0.2)  # val, test shares of a lone file; the rest trains
STD_FLOOR = 1e-8

Split = tuple[np.ndarray, np.ndarray]  # samples (N, L, C) float32, labels (N,) int64


@dataclass
class ClassificationSplits:
    """Standardised splits; samples are time-major (N, L, C) float32, labels int64 indices into ``classes``."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    path: Path
    mean: np.ndarray | None = None  # (C,) per-channel train mean, in the file's units
    std: np.ndarray | None = None  # (C,)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def length(self) -> int:
        return int(self.train[0].shape[1])

    @property
    def channels(self) -> int:
        return int(self.train[0].shape[2])


class LabelledDataset(Dataset):
    """Pairs of (x (L, C) float32, label int64 scalar)."""

    def __init__(self, samples: np.ndarray, labels: np.ndarray) -> None:
        if samples.ndim != 3 or labels.shape != (len(samples),):
            raise ValueError(f"expected samples (N, L, C) and labels (N,), got {samples.shape} and {labels.shape}")
        self.samples = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.samples[index], self.labels[index]


# --- the .ts format ------------------------------------------------------------------------------------------


def _parse_case(line: str, lineno: int, path: Path) -> tuple[list[str], str]:
    *channels, label = line.split(":")
    if not channels:
        raise DataError(f"{path}: line {lineno}: expected channels separated by ':' and a class label last")
    return channels, label.strip()


def read_ts(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read an equal-length, labelled UEA/UCR ``.ts`` file: samples (N, C, L) float32 and their string labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such .ts file")
    declared: list[str] | None = None
    dimensions: int | None = None
    in_data = False
    cases: list[np.ndarray] = []
    labels: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file; expected a UEA/UCR .ts file") from None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path}: line {lineno}: expected a '@' header or '#' comment before @data")
            key, _, value = line[1:].partition(" ")
            key, value = key.lower(), value.strip()
            if key == "data":
                if declared is None:
                    raise DataError(f"{path}: no '@classLabel true <labels...>' header; classification needs labels")
                in_data = True
            elif key == "classlabel":
                tokens = value.split()
                if not tokens or tokens[0].lower() != "true":
                    raise DataError(f"{path}: line {lineno}: '@classLabel {value}': the cases carry no class labels")
                declared = tokens[1:]
            elif key == "timestamps" and value.lower() == "true":
                raise DataError(f"{path}: line {lineno}: time-stamped .ts files are not supported (@timeStamps false)")
            elif key == "dimensions":
                try:
                    dimensions = int(value)
                except ValueError:
                    raise DataError(f"{path}: line {lineno}: @dimensions must be an integer, got {value!r}") from None
            continue
        if "?" in line:
            raise DataError(f"{path}: line {lineno}: missing values ('?') are not supported; impute them first")
        channels, label = _parse_case(line, lineno, path)
        if declared and label not in declared:
            raise DataError(f"{path}: line {lineno}: label {label!r} is not among the @classLabel labels {declared}")
        try:
            series = [np.array(ch.split(","), dtype=np.float64) for ch in channels]
        except ValueError:
            raise DataError(f"{path}: line {lineno}: a value is not a number (values are separated by ',')") from None
        lengths = {len(s) for s in series}
        if len(lengths) > 1:
            raise DataError(f"{path}: line {lineno}: channels of unequal lengths {sorted(lengths)}; need equal lengths")
        expected_channels = dimensions if dimensions is not None else (cases[0].shape[0] if cases else len(series))
        if len(series) != expected_channels:
            raise DataError(f"{path}: line {lineno}: {len(series)} channel(s), expected {expected_channels}")
        if cases and series[0].shape[0] != cases[0].shape[1]:
            raise DataError(
                f"{path}: line {lineno}: series length {series[0].shape[0]} differs from {cases[0].shape[1]} "
                "(unequal-length series are not supported)"
            )
        cases.append(np.stack(series))  # (C, L)
        labels.append(label)
    if not in_data:
        raise DataError(f"{path}: no @data line; expected a UEA/UCR .ts file")
    if not cases:
        raise DataError(f"{path}: no cases after @data")
    samples = np.stack(cases).astype(np.float32)  # (N, C, L)
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: non-finite values (NaN or inf) in the series")
    return samples, labels


# --- .pt / .npz ------------------------------------------------------------------------------------------------


def _as_array(value: object) -> np.ndarray:
    return value.numpy() if torch.is_tensor(value) else np.asarray(value)


def _labelled_arrays(content: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` (N, C, L) float32 and ``labels`` (N,) out of a loaded mapping, checked."""
    if not isinstance(content, dict) or "samples" not in content or "labels" not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"{path}: expected a mapping with 'samples' [N, C, L] and 'labels' [N], got {keys}")
    samples, labels = (_as_array(content[key]) for key in ("samples", "labels"))
    if samples.ndim == 2:
        samples = samples[:, None, :]  # one channel: (N, L) -> (N, 1, L)
    if samples.ndim != 3 or not np.issubdtype(samples.dtype, np.number):
        raise DataError(f"{path}: 'samples' must be numeric of shape [N, C, L], got {samples.dtype} {samples.shape}")
    labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.shape != (len(samples),):
        raise DataError(f"{path}: 'labels' must have shape [{len(samples)}] to match 'samples', got {labels.shape}")
    samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: 'samples' holds NaN or inf values")
    return samples, labels


class _TensorFormat(FileFormat):
    """A file holding ``samples`` [N, C, L] (or [N, L]) and ``labels`` [N]."""

    task = "classification"
    split_files = True

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            content = self.load(path)
        except Exception as exc:  # torch and numpy raise many types for a corrupt or unsafe file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot load: {reason}") from None
        return _labelled_arrays(content, path)

    @abstractmethod
    def load(self, path: Path) -> object: ...


@register_format
class PtFormat(_TensorFormat):
    """``torch.save`` of a dict (the official SimMTM files), loaded with ``weights_only=True``."""

    suffix = ".pt"

    def load(self, path: Path) -> object:
        return torch.load(path, map_location="cpu", weights_only=True)


@register_format
class NpzFormat(_TensorFormat):
    """``numpy.savez`` of ``samples`` and ``labels`` (no pickles)."""

    suffix = ".npz"

    def load(self, path: Path) -> object:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}


@register_format
class TsFormat(FileFormat):
    """A UEA/UCR ``.ts`` file (``read_ts``); ``*_TRAIN.ts``/``*_TEST.ts`` files form a train/test pair."""

    suffix = ".ts"
    task = "classification"
    pairs = True

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        samples, labels = read_ts(path)
        return samples, np.asarray(labels, dtype=str)


def _read_labelled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fmt = get_format(path)
    if fmt is None or fmt.task != "classification":
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; classification reads "
            f"{', '.join(suffixes('classification'))} or a directory"
        )
    return fmt.read(path)


def _encode_labels(parts: Sequence[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """Map labels to ints by the sorted unique labels of all parts; numbers sort as numbers."""
    numeric = all(np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.bool_) for p in parts)
    if not numeric:
        parts = [p.astype(str) for p in parts]
    unique = np.unique(np.concatenate(parts))
    codes = [np.searchsorted(unique, p).astype(np.int64) for p in parts]
    names = [str(int(v)) if numeric and float(v).is_integer() else str(v) for v in unique.tolist()]
    return names, codes


# --- splitting -------------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, fractions: Sequence[float], *, seed: int) -> list[np.ndarray]:
    """Indices of train and one held-out part per fraction, stratified by class and seeded.

    Each class keeps at least one sample in train; each held-out part gets at least one sample overall when
    some class can spare it.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        counts = [int(np.floor(len(members) * f + 0.5)) for f in fractions]
        while sum(counts) > len(members) - 1:  # keep one for train
            counts[int(np.argmax(counts))] -= 1
        start = 0
        for part, count in enumerate(counts, start=1):
            parts[part].extend(members[start : start + count].tolist())
            start += count
        parts[0].extend(members[start:].tolist())
    for part in range(1, len(parts)):
        if not parts[part]:
            spare = [i for i in parts[0] if np.sum(labels[parts[0]] == labels[i]) > 1]
            if not spare:
                raise DataError(f"too few samples ({len(labels)}) to hold out a stratified part; need 2 of a class")
            donor = spare[int(rng.integers(len(spare)))]
            parts[0].remove(donor)
            parts[part].append(donor)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _pair_paths(path: Path) -> tuple[Path, Path] | None:
    """The (TRAIN, TEST) .ts pair a path names, or None when it is not part of one."""
    stem = path.stem
    for own, other in (("_TRAIN", "_TEST"), ("_TEST", "_TRAIN")):
        if stem.upper().endswith(own):
            partner = path.with_name(stem[: -len(own)] + other + path.suffix)
            if not partner.is_file():
                raise DataError(f"{path}: its partner file {partner.name} is missing beside it")
            return (path, partner) if own == "_TRAIN" else (partner, path)
    return None


def _official_layout(directory: Path) -> dict[str, Path] | None:
    for suffix in suffixes("classification", split_files=True):
        files = {split: directory / f"{split}{suffix}" for split in ("train", "val", "test")}
        if all(p.is_file() for p in files.values()):
            return files
    return None


def _layout(path: Path) -> tuple[str, dict[str, Path]]:
    """Which layout a path names: ('pair', train/test), ('official', train/val/test) or ('single', file)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        official = _official_layout(path)
        if official:
            return "official", official
        trains = sorted(p for s in suffixes("classification", pairs=True) for p in path.glob(f"*_TRAIN{s}"))
        if len(trains) == 1:
            pair = _pair_paths(trains[0])
            assert pair is not None  # a *_TRAIN file always names a pair
            return "pair", {"train": pair[0], "test": pair[1]}
        found = ", ".join(p.name for p in trains) if trains else "none"
        raise DataError(
            f"{path}: expected one *_TRAIN.ts/*_TEST.ts pair or train/val/test.pt (.npz) inside; "
            f"*_TRAIN.ts files found: {found}"
        )
    fmt = get_format(path)
    if fmt is not None and fmt.task == "classification":
        pair = _pair_paths(path) if fmt.pairs else None
        if pair:
            return "pair", {"train": pair[0], "test": pair[1]}
        if fmt.split_files and path.stem == "train":
            official = _official_layout(path.parent)
            if official and official["train"] == path:
                return "official", official
        return "single", {"all": path}
    raise DataError(
        f"{path}: unsupported file type '{path.suffix}'; classification reads "
        f"{', '.join(suffixes('classification'))} or a directory"
    )


def _standardise(parts: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-channel scaling fitted on parts[0]; (N, C, L) in, time-major (N, L, C) float32 out."""
    train = parts[0].astype(np.float64)
    mean = train.mean(axis=(0, 2))  # (C,)
    std = train.std(axis=(0, 2))
    std = np.where(std < STD_FLOOR, 1.0, std)
    scaled = [((p - mean[None, :, None]) / std[None, :, None]).transpose(0, 2, 1).astype(np.float32) for p in parts]
    return scaled, mean, std


def load_classification(path: Path, *, val_fraction: float = 0.2, seed: int = 0) -> ClassificationSplits:
    """Read a classification data set, split it (see the module doc) and standardise it per channel."""
    path = Path(path)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    kind, files = _layout(path)
    if kind == "official":
        read = {split: _read_labelled(p) for split, p in files.items()}
        samples = [read[s][0] for s in ("train", "val", "test")]
        raw_labels = [read[s][1] for s in ("train", "val", "test")]
    elif kind == "pair":
        train_x, train_y = _read_labelled(files["train"])
        test_x, test_y = _read_labelled(files["test"])
        train_idx, val_idx = stratified_split(train_y, (val_fraction,), seed=seed)
        samples = [train_x[train_idx], train_x[val_idx], test_x]
        raw_labels = [train_y[train_idx], train_y[val_idx], test_y]
    else:
        all_x, all_y = _read_labelled(files["all"])
        train_idx, val_idx, test_idx = stratified_split(all_y, SINGLE_FILE_FRACTIONS, seed=seed)
        samples = [all_x[i] for i in (train_idx, val_idx, test_idx)]
        raw_labels = [all_y[i] for i in (train_idx, val_idx, test_idx)]

    shape = samples[0].shape[1:]
    for name, part, source in zip(("val", "test"), samples[1:], (files.get("val"), files.get("test"))):
        if part.shape[1:] != shape:
            where = source or path
            raise DataError(
                f"{where}: {name} series have (channels, length) {part.shape[1:]}, train has {shape}; they must match"
            )
    classes, labels = _encode_labels(raw_labels)
    scaled, mean, std = _standardise(samples)
    logger.debug("%s: %s layout, %d classes, (C, L) = %s", path, kind, len(classes), shape)
    return ClassificationSplits(
        train=(scaled[0], labels[0]),
        val=(scaled[1], labels[1]),
        test=(scaled[2], labels[2]),
        classes=classes,
        path=path,
        mean=mean,
        std=std,
    )
