"""Classification data: .ts parsing, .pt/.npz layouts, stratified splits, scaling and the dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from simmtm.data.classification import LabelledDataset, load_classification, read_ts, stratified_split
from simmtm.errors import DataError


def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


@pytest.fixture(scope="module")
def gunpoint() -> Path:
    return shared_data() / "UCR" / "GunPoint"


@pytest.fixture(scope="module")
def basic_motions() -> Path:
    return shared_data() / "UCR" / "BasicMotions"


TS_HEADER = (
    "# a tiny file\n@problemName Toy\n@univariate false\n@dimensions 2\n@equalLength true\n"
    "@classLabel true a b\n@data\n"
)


def write_ts(path: Path, cases: list[str], header: str = TS_HEADER) -> Path:
    path.write_text(header + "\n".join(cases) + "\n")
    return path


def tagged_samples(n: int, channels: int = 2, length: int = 12, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Samples (N, C, L) whose first value is their own index, so a split can be traced back."""
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(n, channels, length)).astype(np.float32)
    samples[:, 0, 0] = np.arange(n)
    labels = np.arange(n) % classes
    return samples, labels


# --- .ts files ------------------------------------------------------------------------------------------------


def test_read_ts_univariate(gunpoint: Path) -> None:
    samples, labels = read_ts(gunpoint / "GunPoint_TRAIN.ts")
    assert samples.shape == (50, 1, 150)
    assert samples.dtype == np.float32
    assert sorted(set(labels)) == ["1", "2"]


def test_gunpoint_pair_splits(gunpoint: Path) -> None:
    splits = load_classification(gunpoint / "GunPoint_TRAIN.ts", val_fraction=0.2, seed=0)
    assert len(splits.train[0]) + len(splits.val[0]) == 50
    assert len(splits.val[0]) == 10
    assert splits.test[0].shape == (150, 150, 1)  # (N, L, C): time-major
    assert (splits.length, splits.channels, splits.num_classes) == (150, 1, 2)
    assert splits.classes == ["1", "2"]
    assert splits.train[1].dtype == np.int64
    np.testing.assert_allclose(splits.train[0].mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(splits.train[0].std(axis=(0, 1)), 1.0, atol=1e-4)


def test_multivariate_from_directory_or_test_file(basic_motions: Path) -> None:
    from_dir = load_classification(basic_motions)
    from_test = load_classification(basic_motions / "BasicMotions_TEST.ts")
    assert from_dir.train[0].shape[1:] == (100, 6)
    assert (from_dir.length, from_dir.channels, from_dir.num_classes) == (100, 6, 4)
    assert len(from_dir.test[0]) == 40
    assert from_dir.classes == ["Badminton", "Running", "Standing", "Walking"]
    np.testing.assert_array_equal(from_dir.test[0], from_test.test[0])


def test_unequal_lengths_name_file_and_line(tmp_path: Path) -> None:
    path = write_ts(tmp_path / "Toy_TRAIN.ts", ["1,2,3:4,5,6:a", "1,2,3:4,5:b"])
    with pytest.raises(DataError, match=r"Toy_TRAIN\.ts: line 9: channels of unequal lengths"):
        read_ts(path)
    path = write_ts(tmp_path / "Toy2_TRAIN.ts", ["1,2,3:4,5,6:a", "1,2:4,5:b"])
    with pytest.raises(DataError, match=r"Toy2_TRAIN\.ts: line 9: series length 2 differs from 3"):
        read_ts(path)


@pytest.mark.parametrize(
    ("cases", "header", "message"),
    [
        (["1,?,3:4,5,6:a"], TS_HEADER, r"line 8: missing values \('\?'\)"),
        (["1,2,3:4,5,6:c"], TS_HEADER, r"line 8: label 'c' is not among the @classLabel labels \['a', 'b'\]"),
        (["1,x,3:4,5,6:a"], TS_HEADER, r"line 8: a value is not a number"),
        (["1,2,3:a"], TS_HEADER, r"line 8: 1 channel\(s\), expected 2"),
        (["1,2,3:4,5,6:a"], TS_HEADER.replace("@classLabel true a b\n", ""), r"no '@classLabel true"),
        ([], TS_HEADER, r"no cases after @data"),
    ],
)
def test_bad_ts_files(tmp_path: Path, cases: list[str], header: str, message: str) -> None:
    path = write_ts(tmp_path / "bad.ts", cases, header)
    with pytest.raises(DataError, match=r"bad\.ts.*" + message):
        read_ts(path)


def test_missing_partner_file(tmp_path: Path) -> None:
    write_ts(tmp_path / "Toy_TRAIN.ts", ["1,2,3:4,5,6:a", "1,2,3:4,5,6:b"])
    with pytest.raises(DataError, match=r"Toy_TRAIN\.ts: its partner file Toy_TEST\.ts is missing"):
        load_classification(tmp_path / "Toy_TRAIN.ts")


def test_train_and_test_shapes_must_match(tmp_path: Path) -> None:
    write_ts(tmp_path / "Toy_TRAIN.ts", ["1,2,3:4,5,6:a", "1,2,3:4,5,6:b", "3,2,1:6,5,4:a", "3,2,1:6,5,4:b"])
    write_ts(tmp_path / "Toy_TEST.ts", ["1,2:4,5:a"])
    message = r"Toy_TEST\.ts: test series have \(channels, length\) \(2, 2\), train has \(2, 3\)"
    with pytest.raises(DataError, match=message):
        load_classification(tmp_path / "Toy_TRAIN.ts")


# --- .npz / .pt -----------------------------------------------------------------------------------------------


def test_npz_single_file_round_trip(tmp_path: Path) -> None:
    samples, labels = tagged_samples(50)
    np.savez(tmp_path / "toy.npz", samples=samples, labels=labels)
    splits = load_classification(tmp_path / "toy.npz", seed=3)
    sizes = [len(part[0]) for part in (splits.train, splits.val, splits.test)]
    assert sum(sizes) == 50 and sizes[1] >= 9 and sizes[2] >= 9
    assert splits.classes == ["0", "1", "2"]
    for x, y in (splits.train, splits.val, splits.test):
        raw = x * splits.std + splits.mean  # (N, L, C) back to the file's units
        index = np.rint(raw[:, 0, 0]).astype(int)
        np.testing.assert_allclose(raw.transpose(0, 2, 1), samples[index], atol=1e-4)
        np.testing.assert_array_equal(y, labels[index])


def test_pt_official_layout(tmp_path: Path) -> None:
    samples, labels = tagged_samples(30, channels=1, length=20)
    for name, part in (("train", slice(0, 18)), ("val", slice(18, 24)), ("test", slice(24, 30))):
        # the official files keep one channel as (N, L); labels as a tensor
        torch.save({"samples": torch.from_numpy(samples[part, 0]), "labels": torch.from_numpy(labels[part])},
                   tmp_path / f"{name}.pt")
    splits = load_classification(tmp_path)
    assert [len(p[0]) for p in (splits.train, splits.val, splits.test)] == [18, 6, 6]
    assert (splits.length, splits.channels) == (20, 1)
    np.testing.assert_array_equal(splits.val[1], labels[18:24])
    same = load_classification(tmp_path / "train.pt")  # naming train.pt picks the layout up too
    np.testing.assert_array_equal(same.test[0], splits.test[0])


def test_string_labels_in_npz_sort_as_strings(tmp_path: Path) -> None:
    samples, _ = tagged_samples(20)
    labels = np.array(["walk", "run"] * 10)
    np.savez(tmp_path / "words.npz", samples=samples, labels=labels)
    splits = load_classification(tmp_path / "words.npz")
    assert splits.classes == ["run", "walk"]


class _NotATensor:
    pass


def test_unsafe_or_malformed_tensor_files(tmp_path: Path) -> None:
    torch.save({"samples": _NotATensor(), "labels": torch.zeros(3)}, tmp_path / "unsafe.pt")
    with pytest.raises(DataError, match=r"unsafe\.pt: cannot load"):
        load_classification(tmp_path / "unsafe.pt")
    np.savez(tmp_path / "keys.npz", x=np.zeros((4, 1, 5)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"keys\.npz: expected a mapping with 'samples'.*\['x', 'y'\]"):
        load_classification(tmp_path / "keys.npz")
    np.savez(tmp_path / "short.npz", samples=np.zeros((4, 1, 5)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"short\.npz: 'labels' must have shape \[4\]"):
        load_classification(tmp_path / "short.npz")


def test_unsupported_path(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type '\.txt'"):
        load_classification(tmp_path / "data.txt")
    with pytest.raises(DataError, match=r"expected one \*_TRAIN\.ts/\*_TEST\.ts pair"):
        load_classification(tmp_path)
    with pytest.raises(DataError, match=r"missing\.ts: no such file or directory"):
        load_classification(tmp_path / "missing.ts")


# --- splitting and the dataset --------------------------------------------------------------------------------


def test_stratified_split_keeps_every_class_in_train_and_is_seeded() -> None:
    labels = np.array([0] * 30 + [1] * 6 + [2] * 2 + [3])  # imbalanced, one singleton
    train, val = stratified_split(labels, (0.2,), seed=1)
    assert set(labels[train]) == {0, 1, 2, 3}
    assert len(train) + len(val) == len(labels) and not set(train) & set(val)
    assert np.bincount(labels[val], minlength=4).tolist() == [6, 1, 0, 0]
    again, _ = stratified_split(labels, (0.2,), seed=1)
    other, _ = stratified_split(labels, (0.2,), seed=2)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_stratified_split_never_leaves_a_part_empty() -> None:
    labels = np.array([0, 0, 1, 1])
    train, val, test = stratified_split(labels, (0.2, 0.2), seed=0)
    assert len(val) == 1 and len(test) == 1 and set(labels[train]) == {0, 1}
    with pytest.raises(DataError, match="too few samples"):
        stratified_split(np.array([0, 1]), (0.2,), seed=0)


def test_labelled_dataset(gunpoint: Path) -> None:
    splits = load_classification(gunpoint)
    dataset = LabelledDataset(*splits.test)
    assert len(dataset) == 150
    x, y = dataset[0]
    assert x.shape == (150, 1) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
