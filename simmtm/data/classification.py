"""Classification data: UEA/UCR ``.ts`` files and ``.pt`` / ``.npz`` tensors, split and standardised per channel.

Layouts read by :func:`load_classification`:

- a ``.ts`` TRAIN/TEST pair (the path names ``*_TRAIN.ts``, ``*_TEST.ts`` or a directory holding them): validation
  is a stratified, seeded ``val_fraction`` share of the train file; test is the TEST file;
- a directory with ``train.pt``, ``val.pt`` and ``test.pt`` (the official SimMTM layout; ``.npz`` works too);
- a single ``.pt``, ``.npz`` or ``.ts`` file: a stratified, seeded 60 / 20 / 20 split.

``.pt`` and ``.npz`` files hold ``samples`` of (N, C, L) (or (N, L) for one channel) and ``labels`` of (N,).
Labels become ints in sorted order of the unique labels (numeric labels sort as numbers, text as strings), and the
class names are kept. Samples come back time-major, (N, L, C) float32, as the encoders take them.

Unequal-length ``.ts`` series (JapaneseVowels, ...) follow ``unequal_length`` (``data.unequal_length``): ``error``
refuses them naming the line; ``pad`` pads every series at its end to the longest one and returns ``observed``,
a (N, L) padding mask (True at real steps; the scaling is fitted on real steps only and padded steps hold 0);
``truncate`` cuts every series to ``seq_len`` and refuses one that is shorter. A ``?`` at the end of every channel
of a case marks a shorter series (some archives pad with it); a ``?`` anywhere else is refused naming the line.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from simmtm.data.formats import FileFormat, get_format, register_format, suffixes
from simmtm.errors import DataError
from simmtm.torch_files import UnreadableTorchFile, load_weights_only

__all__ = [
    "ClassificationSplits",
    "LabelledDataset",
    "UnequalLength",
    "load_classification",
    "read_ts",
    "stratified_split",
]

logger = logging.getLogger(__name__)

SINGLE_FILE_FRACTIONS = (0.2, 0.2)  # val, test shares of a lone file; the rest trains
STD_FLOOR = 1e-8

Split = tuple[np.ndarray, np.ndarray]  # samples (N, L, C) float32, labels (N,) int64
UnequalLength = Literal["pad", "truncate", "error"]


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
    # (N, L) bool per split (train, val, test): True at real time steps, False at padding; None when nothing is padded
    observed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

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
    """Pairs of (x (L, C) float32, label int64 scalar); padded series (``observed`` (N, L) bool given) come as
    triples (x, label, observed (L,) bool, True at real steps)."""

    def __init__(self, samples: np.ndarray, labels: np.ndarray, observed: np.ndarray | None = None) -> None:
        if samples.ndim != 3 or labels.shape != (len(samples),):
            raise ValueError(f"expected samples (N, L, C) and labels (N,), got {samples.shape} and {labels.shape}")
        if observed is not None and observed.shape != samples.shape[:2]:
            raise ValueError(f"expected observed (N, L) = {samples.shape[:2]}, got {observed.shape}")
        self.samples = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.observed = None if observed is None else torch.from_numpy(np.asarray(observed, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.observed is None:
            return self.samples[index], self.labels[index]
        return self.samples[index], self.labels[index], self.observed[index]


# --- the .ts format ------------------------------------------------------------------------------------------


@dataclass
class _Cases:
    """A file's cases before they are brought to one length: series (C, L_i) and where each came from."""

    series: list[np.ndarray]  # (C, L_i) float64 each
    labels: np.ndarray  # (N,)
    origins: list[str]  # "<path>: line 12" (or "<path>: sample 3"), for errors

    @classmethod
    def of_array(cls, samples: np.ndarray, labels: np.ndarray, path: Path) -> _Cases:
        return cls(list(samples.astype(np.float64)), labels, [f"{path}: sample {i}" for i in range(len(samples))])

    def lengths(self) -> list[int]:
        return [s.shape[1] for s in self.series]


def _parse_case(line: str, lineno: int, path: Path) -> tuple[list[str], str]:
    *channels, label = line.split(":")
    if not channels:
        raise DataError(f"{path}: line {lineno}: expected channels separated by ':' and a class label last")
    return channels, label.strip()


def _parse_channels(channels: list[str], lineno: int, path: Path) -> np.ndarray:
    """One case's channels as (C, L); a run of '?' closing every channel shortens the series."""
    values = [ch.split(",") for ch in channels]
    for ch in values:
        while ch and ch[-1].strip() == "?":
            ch.pop()
    if any("?" in v for ch in values for v in ch):
        raise DataError(
            f"{path}: line {lineno}: missing values ('?') inside a series are not supported; impute them first"
        )
    try:
        series = [np.array(ch, dtype=np.float64) for ch in values]
    except ValueError:
        raise DataError(f"{path}: line {lineno}: a value is not a number (values are separated by ',')") from None
    lengths = {len(s) for s in series}
    if len(lengths) > 1:
        raise DataError(f"{path}: line {lineno}: channels of unequal lengths {sorted(lengths)}; need equal lengths")
    if not all(np.isfinite(s).all() for s in series):
        raise DataError(f"{path}: line {lineno}: non-finite values (NaN or inf) in the series")
    if not series[0].size:
        raise DataError(f"{path}: line {lineno}: an empty series")
    return np.stack(series)  # (C, L)


def _parse_ts(path: Path) -> _Cases:
    """Read a labelled UEA/UCR ``.ts`` file, equal-length or not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such .ts file")
    declared: list[str] | None = None
    dimensions: int | None = None
    in_data = False
    cases: list[np.ndarray] = []
    labels: list[str] = []
    origins: list[str] = []
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
        channels, label = _parse_case(line, lineno, path)
        if declared and label not in declared:
            raise DataError(f"{path}: line {lineno}: label {label!r} is not among the @classLabel labels {declared}")
        series = _parse_channels(channels, lineno, path)
        expected_channels = dimensions if dimensions is not None else (cases[0].shape[0] if cases else len(series))
        if len(series) != expected_channels:
            raise DataError(f"{path}: line {lineno}: {len(series)} channel(s), expected {expected_channels}")
        cases.append(series)
        labels.append(label)
        origins.append(f"{path}: line {lineno}")
    if not in_data:
        raise DataError(f"{path}: no @data line; expected a UEA/UCR .ts file")
    if not cases:
        raise DataError(f"{path}: no cases after @data")
    return _Cases(cases, np.asarray(labels, dtype=str), origins)


def _stack_equal(cases: _Cases) -> np.ndarray:
    """(N, C, L) float64 of equal-length cases, or DataError naming the first case of another length."""
    first = cases.series[0].shape[1]
    for series, origin in zip(cases.series, cases.origins):
        if series.shape[1] != first:
            raise DataError(
                f"{origin}: series length {series.shape[1]} differs from {first} (unequal-length series: "
                "set data.unequal_length to pad or truncate)"
            )
    return np.stack(cases.series)


def read_ts(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read an equal-length, labelled UEA/UCR ``.ts`` file: samples (N, C, L) float32 and their string labels."""
    cases = _parse_ts(path)
    return _stack_equal(cases).astype(np.float32), cases.labels.tolist()


def _fit_length(files: list[_Cases], policy: UnequalLength, seq_len: int | None) -> list[np.ndarray]:
    """Every file's cases as one (N, C, L) float64 array under ``policy``; padded steps hold NaN."""
    if policy == "error":  # each file must be equal-length; train and test shapes are compared later
        return [_stack_equal(f) for f in files]
    if policy == "truncate":
        if seq_len is None:
            raise ValueError("unequal_length='truncate' needs seq_len")
        for f in files:
            for length, origin in zip(f.lengths(), f.origins):
                if length < seq_len:
                    shortest = min(min(g.lengths()) for g in files)
                    raise DataError(
                        f"{origin}: series length {length} is shorter than data.seq_len {seq_len}, so "
                        f"data.unequal_length truncate cannot cut to it; set data.seq_len to at most {shortest} "
                        "or data.unequal_length to pad"
                    )
        return [np.stack([s[:, :seq_len] for s in f.series]) for f in files]
    if policy != "pad":
        raise ValueError(f"unequal_length must be pad, truncate or error, got {policy!r}")
    longest = max(max(f.lengths()) for f in files)
    out = []
    for f in files:
        padded = np.full((len(f.series), f.series[0].shape[0], longest), np.nan)  # (N, C, L)
        for row, series in zip(padded, f.series):
            row[:, : series.shape[1]] = series
        out.append(padded)
    return out


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


class _LabelledFormat(FileFormat):
    """A classification format: ``read`` gives equal-length arrays, ``cases`` the cases as they are in the file."""

    task = "classification"

    def cases(self, path: Path) -> _Cases:
        samples, labels = self.read(path)
        return _Cases.of_array(samples, labels, path)


class _TensorFormat(_LabelledFormat):
    """A file holding ``samples`` [N, C, L] (or [N, L]) and ``labels`` [N]."""

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
        try:
            return load_weights_only(path)
        except UnreadableTorchFile as exc:  # torch's own message ends in advice to load untrusted pickles
            raise ValueError(str(exc)) from None


@register_format
class NpzFormat(_TensorFormat):
    """``numpy.savez`` of ``samples`` and ``labels`` (no pickles)."""

    suffix = ".npz"

    def load(self, path: Path) -> object:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}


@register_format
class TsFormat(_LabelledFormat):
    """A UEA/UCR ``.ts`` file (``read_ts``); ``*_TRAIN.ts``/``*_TEST.ts`` files form a train/test pair."""

    suffix = ".ts"
    task = "classification"
    pairs = True

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        samples, labels = read_ts(path)
        return samples, np.asarray(labels, dtype=str)

    def cases(self, path: Path) -> _Cases:
        return _parse_ts(path)  # the cases may differ in length; load_classification decides what to do


def _read_any(path: Path) -> _Cases:
    """A classification file's cases, through the reader registered for its suffix."""
    fmt = get_format(path)
    if not isinstance(fmt, _LabelledFormat):
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; classification reads "
            f"{', '.join(suffixes('classification'))} or a directory"
        )
    return fmt.cases(path)


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


def _standardise(parts: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-channel scaling fitted on the real steps of parts[0]; (N, C, L) in, time-major (N, L, C) float32 out.

    NaN marks padding: it is left out of the fit, comes back as 0 (the train mean), and the returned (N, L) masks
    are True at real steps.
    """
    train = parts[0]
    mean = np.nanmean(train, axis=(0, 2))  # (C,)
    std = np.nanstd(train, axis=(0, 2))
    std = np.where(std < STD_FLOOR, 1.0, std)
    observed = [~np.isnan(p[:, 0, :]) for p in parts]  # a step is padded in all channels or in none
    scaled = [
        np.nan_to_num((p - mean[None, :, None]) / std[None, :, None], nan=0.0).transpose(0, 2, 1).astype(np.float32)
        for p in parts
    ]
    return scaled, mean, std, observed


def load_classification(
    path: Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    unequal_length: UnequalLength = "error",
    seq_len: int | None = None,
) -> ClassificationSplits:
    """Read a classification data set, split it, bring its series to one length and standardise it per channel.

    See the module doc for the layouts and for ``unequal_length`` (``seq_len`` is the length ``truncate`` cuts to).
    """
    path = Path(path)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    kind, files = _layout(path)
    read = {split: _read_any(p) for split, p in files.items()}
    arrays = dict(zip(read, _fit_length(list(read.values()), unequal_length, seq_len)))
    if kind == "official":
        samples = [arrays[s] for s in ("train", "val", "test")]
        raw_labels = [read[s].labels for s in ("train", "val", "test")]
    elif kind == "pair":
        train_x, train_y = arrays["train"], read["train"].labels
        train_idx, val_idx = stratified_split(train_y, (val_fraction,), seed=seed)
        samples = [train_x[train_idx], train_x[val_idx], arrays["test"]]
        raw_labels = [train_y[train_idx], train_y[val_idx], read["test"].labels]
    else:
        all_x, all_y = arrays["all"], read["all"].labels
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
    scaled, mean, std, observed = _standardise(samples)
    padded = not all(m.all() for m in observed)
    logger.debug("%s: %s layout, %d classes, (C, L) = %s, padded: %s", path, kind, len(classes), shape, padded)
    return ClassificationSplits(
        train=(scaled[0], labels[0]),
        val=(scaled[1], labels[1]),
        test=(scaled[2], labels[2]),
        classes=classes,
        path=path,
        mean=mean,
        std=std,
        observed=(observed[0], observed[1], observed[2]) if padded else None,
    )
