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


# --- unequal lengths -------------------------------------------------------------------------------------------


def unequal_pair(tmp_path: Path) -> Path:
    """A 2-channel TRAIN file of lengths 2, 4, 3, 4 and a TEST file of lengths 5, 2 (like JapaneseVowels)."""
    write_ts(tmp_path / "Toy_TRAIN.ts", ["1,2:10,20:a", "1,2,3,4:10,20,30,40:b", "3,2,1:30,20,10:a", "4,3,2,1:4,3,2,1:b"])
    write_ts(tmp_path / "Toy_TEST.ts", ["1,2,3,4,5:1,2,3,4,5:a", "5,4,?,?:5,4,?,?:b"])  # trailing '?': length 2
    return tmp_path / "Toy_TRAIN.ts"


def test_unequal_lengths_are_refused_by_default_naming_the_line(tmp_path: Path) -> None:
    message = r"Toy_TRAIN\.ts: line 9: series length 4 differs from 2 \(unequal-length series: set data\.unequal_length"
    with pytest.raises(DataError, match=message):
        load_classification(unequal_pair(tmp_path))


def test_pad_to_the_longest_series_with_a_padding_mask(tmp_path: Path) -> None:
    splits = load_classification(unequal_pair(tmp_path), unequal_length="pad", val_fraction=0.5, seed=0)
    assert splits.length == 5 and splits.channels == 2  # the longest series anywhere, here in TEST
    assert splits.observed is not None
    test_x, test_observed = splits.test[0], splits.observed[2]
    np.testing.assert_array_equal(test_observed, [[True] * 5, [True, True, False, False, False]])
    assert (test_x[~test_observed] == 0).all()  # padding holds 0, the train mean
    # the scaling is fitted on the real train steps only: they have mean 0 and std 1 per channel
    train_x, train_observed = splits.train[0], splits.observed[0]
    real = np.concatenate([splits.train[0][train_observed], splits.val[0][splits.observed[1]]])
    assert real.shape == (2 + 4 + 3 + 4, 2) and train_x.shape[1] == 5
    np.testing.assert_allclose(train_x[train_observed].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(train_x[train_observed].std(axis=0), 1.0, atol=1e-5)
    # the real steps keep their values: test case 0 is 1..5 in the units the train mean and std define
    np.testing.assert_allclose(test_x[0, :, 0] * splits.std[0] + splits.mean[0], [1, 2, 3, 4, 5], atol=1e-5)


def test_pad_leaves_equal_length_data_as_it_was(basic_motions: Path) -> None:
    padded = load_classification(basic_motions, unequal_length="pad")
    plain = load_classification(basic_motions)
    assert padded.observed is None
    np.testing.assert_array_equal(padded.train[0], plain.train[0])


def test_truncate_cuts_every_series_to_seq_len(tmp_path: Path) -> None:
    splits = load_classification(unequal_pair(tmp_path), unequal_length="truncate", seq_len=2, val_fraction=0.5)
    assert (splits.length, splits.observed) == (2, None)
    np.testing.assert_allclose(splits.test[0][:, :, 1] * splits.std[1] + splits.mean[1], [[1, 2], [5, 4]], atol=1e-5)
    message = (
        r"Toy_TRAIN\.ts: line 8: series length 2 is shorter than data\.seq_len 3.*"
        r"set data\.seq_len to at most 2 or data\.unequal_length to pad"
    )
    with pytest.raises(DataError, match=message):
        load_classification(tmp_path / "Toy_TRAIN.ts", unequal_length="truncate", seq_len=3)


def test_truncate_real_data_to_seq_len(basic_motions: Path) -> None:
    splits = load_classification(basic_motions, unequal_length="truncate", seq_len=40)
    assert splits.train[0].shape[1:] == (40, 6) and splits.test[0].shape == (40, 40, 6)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("1,?,3:4,5,6:a", r"line 8: missing values \('\?'\) inside a series"),
        ("1,2,?:4,5,6:a", r"line 8: channels of unequal lengths \[2, 3\]"),  # '?' closing one channel only
        ("?,?,?:?,?,?:a", r"line 8: an empty series"),
        ("1,nan,3:4,5,6:a", r"line 8: non-finite values"),
    ],
)
def test_missing_values_that_cannot_mean_a_shorter_series(tmp_path: Path, case: str, message: str) -> None:
    with pytest.raises(DataError, match=r"bad\.ts: " + message):
        load_classification(write_ts(tmp_path / "bad.ts", [case, "1,2,3:4,5,6:b"]), unequal_length="pad")


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
