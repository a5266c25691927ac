"""Classification file formats: ``.pt`` / ``.npz`` tensors of ``samples`` and ``labels``, and UEA/UCR ``.ts`` files.

Each registers under its suffix (``simmtm.data.formats``); ``read_cases`` reads any of them as the cases of one file
(``.ts`` series may differ in length). Samples are checked finite in the file and once cast to float32.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch

from simmtm.data.checks import require_finite
from simmtm.data.formats import FileFormat, get_format, register_format, suffixes
from simmtm.data.torch_files import UnreadableTorchFile, load_weights_only
from simmtm.data.ts_file import Cases, parse_ts, read_ts
from simmtm.errors import DataError

__all__ = ["LabelledFormat", "NpzFormat", "PtFormat", "TsFormat", "read_cases"]


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
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: 'samples' holds NaN or inf values")
    with np.errstate(over="ignore"):  # checked below, instead of numpy's warning
        cast = samples.astype(np.float32)
    require_finite(cast, "cast to float32", lambda at: f"{path}: sample {at[0]}, channel {at[1] + 1}, step {at[2] + 1}")
    return cast, labels


class LabelledFormat(FileFormat):
    """A classification format: ``read`` gives equal-length arrays, ``cases`` the cases as they are in the file."""

    task = "classification"

    def cases(self, path: Path) -> Cases:
        samples, labels = self.read(path)
        return Cases.of_array(samples, labels, path)


class _TensorFormat(LabelledFormat):
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
class TsFormat(LabelledFormat):
    """A UEA/UCR ``.ts`` file (``read_ts``); ``*_TRAIN.ts``/``*_TEST.ts`` files form a train/test pair."""

    suffix = ".ts"
    task = "classification"
    pairs = True

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        samples, labels = read_ts(path)
        return samples, np.asarray(labels, dtype=str)

    def cases(self, path: Path) -> Cases:
        return parse_ts(path)  # the cases may differ in length; load_classification decides what to do


def read_cases(path: Path) -> Cases:
    """A classification file's cases, through the reader registered for its suffix."""
    fmt = get_format(path)
    if not isinstance(fmt, LabelledFormat):
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; classification reads "
            f"{', '.join(suffixes('classification'))} or a directory"
        )
    return fmt.cases(path)
