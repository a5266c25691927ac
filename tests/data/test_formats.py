"""The contract every data-file format passes: it reads a small file of its suffix into what its task expects,
and a missing or unreadable file is a DataError naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from simmtm.config.schema import DataConfig
from simmtm.data import load_splits
from simmtm.data.formats import FORMATS
from simmtm.errors import DataError

N, C, L, ROWS = 6, 2, 5, 40


def _csv(path: Path) -> None:
    dates = pd.date_range("2020-01-01", periods=ROWS, freq="h")
    pd.DataFrame({"date": dates, "a": np.arange(ROWS, dtype=float), "OT": np.ones(ROWS)}).to_csv(path, index=False)


def _samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, C, L)).astype(np.float32), np.array([0, 1] * (N // 2))


def _pt(path: Path) -> None:
    x, y = _samples()
    torch.save({"samples": torch.from_numpy(x), "labels": torch.from_numpy(y)}, path)


def _npz(path: Path) -> None:
    x, y = _samples()
    np.savez(path, samples=x, labels=y)


def _ts(path: Path) -> None:
    x, y = _samples()
    lines = ["@problemName demo", "@timeStamps false", "@univariate false", f"@dimensions {C}",
             "@equalLength true", f"@seriesLength {L}", "@classLabel true 0 1", "@data"]
    lines += [":".join(",".join(f"{v:g}" for v in channel) for channel in case) + f":{label}" for case, label in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


# One small example file per registered format: a new format without one fails test_every_format_has_an_example.
EXAMPLES: dict[str, Callable[[Path], None]] = {".csv": _csv, ".pt": _pt, ".npz": _npz, ".ts": _ts}


def test_every_format_has_an_example() -> None:
    assert set(EXAMPLES) == set(FORMATS)


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_a_format_reads_its_example_into_what_its_task_expects(suffix: str, tmp_path: Path) -> None:
    fmt, path = FORMATS[suffix], tmp_path / f"data{suffix}"
    EXAMPLES[suffix](path)
    content = fmt.read(path)
    if fmt.task == "forecasting":
        assert isinstance(content, pd.DataFrame) and len(content) == ROWS
    else:
        samples, labels = content
        assert samples.shape == (N, C, L) and samples.dtype == np.float32 and labels.shape == (N,)
        np.testing.assert_allclose(samples, _samples()[0], rtol=1e-5)
    # the config names the file: its suffix decides the task, and the splits load
    assert load_splits(DataConfig(path=str(path), seq_len=4), horizon=2 if fmt.task == "forecasting" else 0)


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_a_missing_or_unreadable_file_is_a_data_error_naming_it(suffix: str, tmp_path: Path) -> None:
    fmt, path = FORMATS[suffix], tmp_path / f"broken{suffix}"
    with pytest.raises(DataError, match=f"broken\\{suffix}"):
        fmt.read(path)
    path.write_bytes(b"\x00\x01 not a data file \xff")
    with pytest.raises(DataError, match=f"broken\\{suffix}"):
        fmt.read(path)
