"""Checks every loader runs on what it hands to training: finite values after each step that can overflow, and
class labels a classifier can learn from. Each failure is one ``DataError`` naming the file and where in it.

Values near the float limit (1e308) read fine but overflow once standardised or cast to float32; a check after the
step names the first value that became inf or NaN, so no run trains on it and no numpy warning reaches the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from simmtm.errors import DataError

__all__ = ["apply_scaler", "check_labels", "fit_scaler", "require_finite"]


Where = Callable[[tuple[int, ...]], str]  # an index into the array -> "<file>: column 'x', row 12"


def require_finite(values: np.ndarray, step: str, where: Where) -> None:
    """Refuse ``values`` holding inf or NaN after ``step``; ``where(index)`` names the file, column and row."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        raise DataError(
            f"{where(tuple(int(i) for i in bad[0]))}: a value overflows when {step} ({len(bad)} value(s) in all); "
            "rescale the data (values must stay well below 1e38)"
        )


def fit_scaler(
    train: np.ndarray, channel: int, floor: float, where: Where, *, skip_nan: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``train`` per ``channel`` (axis), a std below ``floor`` taken as 1; ``skip_nan``: NaN marks
    padding and is left out. A fit that overflows is refused naming the largest value of its channel."""
    axis = tuple(d for d in range(train.ndim) if d != channel)
    mean_of, std_of = (np.nanmean, np.nanstd) if skip_nan else (np.mean, np.std)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, instead of numpy's warnings
        mean, std = mean_of(train, axis=axis), std_of(train, axis=axis)
    for c in np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std))):
        size = np.abs(np.nan_to_num(np.take(train, c, axis=channel), nan=0.0))
        at = [int(i) for i in np.unravel_index(int(np.argmax(size)), size.shape)]
        at.insert(channel, int(c))
        raise DataError(
            f"{where(tuple(at))}: the training split's mean or standard deviation overflows float64 (this value is "
            f"{np.take(train, c, axis=channel).flat[int(np.argmax(size))]:.3g}); rescale the data"
        )
    return mean, np.where(std < floor, 1.0, std)


def apply_scaler(values: np.ndarray, mean: np.ndarray, std: np.ndarray, channel: int, where: Where) -> np.ndarray:
    """``(values - mean) / std`` as float32, refused where a value overflows (NaN, marking padding, stays NaN)."""
    shape = [1] * values.ndim
    shape[channel] = -1
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = ((values - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
    require_finite(np.where(np.isnan(values), 0.0, scaled), "standardised by the training split's mean and std", where)
    return scaled


def _names(labels: Sequence[str]) -> str:
    return ", ".join(f"'{label}'" for label in labels)


def check_labels(classes: list[str], codes: Sequence[np.ndarray], sources: Sequence[str]) -> None:
    """Refuse a training split of one class, and validation / test labels that never occur in training.

    ``codes``: the train, val and test labels as indices into ``classes``; ``sources``: the file each came from.
    """
    trained = set(np.unique(codes[0]).tolist())
    if len(trained) < 2:
        only = _names([classes[i] for i in sorted(trained)]) or "none"
        raise DataError(f"{sources[0]}: the training split holds one class ({only}); a classifier needs at least two")
    for split, part, source in zip(("validation", "test"), codes[1:], sources[1:]):
        unseen = sorted(set(np.unique(part).tolist()) - trained)
        if unseen:
            raise DataError(
                f"{source}: {split} label(s) {_names([classes[i] for i in unseen])} never occur in the training "
                f"split (it holds {_names([classes[i] for i in sorted(trained)])})"
            )
