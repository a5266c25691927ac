"""The UEA/UCR ``.ts`` text format: labelled cases, one per line after ``@data``, channels separated by ':'.

``parse_ts`` reads a file's cases as they are (lengths may differ); ``read_ts`` reads an equal-length file into one
array. Every problem is a ``DataError`` naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simmtm.errors import DataError

__all__ = ["Cases", "parse_ts", "read_ts", "stack_equal"]


@dataclass
class Cases:
    """A file's cases before they are brought to one length: series (C, L_i) and where each came from."""

    series: list[np.ndarray]  # (C, L_i) float64 each
    labels: np.ndarray  # (N,)
    origins: list[str]  # "<path>: line 12" (or "<path>: sample 3"), for errors

    @classmethod
    def of_array(cls, samples: np.ndarray, labels: np.ndarray, path: Path) -> Cases:
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


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such .ts file")
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        try:
            return list(handle)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file; expected a UEA/UCR .ts file") from None


def parse_ts(path: Path) -> Cases:
    """Read a labelled UEA/UCR ``.ts`` file, equal-length or not."""
    path = Path(path)
    lines = _read_lines(path)
    declared: list[str] | None = None
    dimensions: int | None = None
    in_data = False
    cases: list[np.ndarray] = []
    labels: list[str] = []
    origins: list[str] = []
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
    return Cases(cases, np.asarray(labels, dtype=str), origins)


def stack_equal(cases: Cases) -> np.ndarray:
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
    cases = parse_ts(path)
    return stack_equal(cases).astype(np.float32), cases.labels.tolist()
