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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from simmtm.data.checks import apply_scaler, check_labels, fit_scaler
from simmtm.data.formats import get_format, suffixes
from simmtm.data.labelled_formats import read_cases
from simmtm.data.ts_file import Cases, read_ts, stack_equal
from simmtm.errors import DataError

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


def _fit_length(files: list[Cases], policy: UnequalLength, seq_len: int | None) -> list[np.ndarray]:
    """Every file's cases as one (N, C, L) float64 array under ``policy``; padded steps hold NaN."""
    if policy == "error":  # each file must be equal-length; train and test shapes are compared later
        return [stack_equal(f) for f in files]
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


def _standardise(
    parts: list[np.ndarray], origins: list[list[str]]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-channel scaling fitted on the real steps of parts[0]; (N, C, L) in, time-major (N, L, C) float32 out.

    NaN marks padding (``data.unequal_length: pad``, the only source of NaN: every reader refuses NaN in a file):
    it is left out of the fit, comes back as 0 (the train mean), and the returned (N, L) masks are True at real
    steps. A value that overflows is refused naming its case (``origins``), channel and step.
    """

    def where(part: int) -> Callable[[tuple[int, ...]], str]:
        return lambda at: f"{origins[part][at[0]]}, channel {at[1] + 1}, step {at[2] + 1}"

    mean, std = fit_scaler(parts[0], 1, STD_FLOOR, where(0), skip_nan=True)  # (C,) each
    observed = [~np.isnan(p[:, 0, :]) for p in parts]  # a step is padded in all channels or in none
    scaled = [
        np.ascontiguousarray(np.nan_to_num(apply_scaler(p, mean, std, 1, where(k)), nan=0.0).transpose(0, 2, 1))
        for k, p in enumerate(parts)
    ]
    return scaled, mean, std, observed


def _split(
    kind: str, read: dict[str, Cases], arrays: dict[str, np.ndarray], val_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[list[str]]]:
    """Samples, raw labels and case origins of train, val and test."""
    if kind == "official":
        names = ("train", "val", "test")
        return [arrays[s] for s in names], [read[s].labels for s in names], [read[s].origins for s in names]
    whole = "train" if kind == "pair" else "all"
    labels, origins = read[whole].labels, np.asarray(read[whole].origins)
    parts = stratified_split(labels, (val_fraction,) if kind == "pair" else SINGLE_FILE_FRACTIONS, seed=seed)
    samples, raw, where = [arrays[whole][i] for i in parts], [labels[i] for i in parts], [origins[i] for i in parts]
    if kind == "pair":
        samples, raw, where = samples + [arrays["test"]], raw + [read["test"].labels], where + [read["test"].origins]
    return samples, raw, [list(w) for w in where]


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
    read = {split: read_cases(p) for split, p in files.items()}
    arrays = dict(zip(read, _fit_length(list(read.values()), unequal_length, seq_len)))
    samples, raw_labels, origins = _split(kind, read, arrays, val_fraction, seed)
    whole = files.get("train") or files.get("all") or path
    sources = [files.get(s, whole) for s in ("train", "val", "test")]

    shape = samples[0].shape[1:]
    for name, part, source in zip(("val", "test"), samples[1:], (files.get("val"), files.get("test"))):
        if part.shape[1:] != shape:
            where = source or path
            raise DataError(
                f"{where}: {name} series have (channels, length) {part.shape[1:]}, train has {shape}; they must match"
            )
    classes, labels = _encode_labels(raw_labels)
    check_labels(classes, labels, [str(p) for p in sources])
    scaled, mean, std, observed = _standardise(samples, origins)
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
