"""From a run config to torch datasets: the one place that knows both the data module and the model's needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from simmtm.config.schema import RunConfig
from simmtm.data import ClassificationSplits, ForecastingSplits, LabelledDataset, WindowDataset, load_splits

__all__ = ["Inputs", "load_inputs", "split_batch"]


@dataclass
class Inputs:
    """Datasets for one stage plus the shapes the model is built from."""

    task: str  # "forecasting" or "classification"
    train: Dataset
    val: Dataset
    test: Dataset
    seq_len: int  # L
    channels: int  # C of a window
    channel_independent: bool  # every channel its own univariate series
    horizon: int = 0
    num_classes: int = 0
    columns: tuple[str, ...] = ()

    @property
    def series_channels(self) -> int:
        """c: channels of one series as the encoder sees it."""
        return 1 if self.channel_independent else self.channels


def load_inputs(config: RunConfig, *, horizon: int = 0, labelled: bool = False) -> Inputs:
    """Load and split the data of ``config``.

    ``horizon`` > 0 gives forecasting windows with targets; ``labelled`` gives classification labels (both for
    fine-tuning). Pre-training takes unlabelled windows of ``data.seq_len`` (classification: whole series).
    """
    splits = load_splits(config.data, horizon=horizon, seed=config.seed)
    if isinstance(splits, ForecastingSplits):
        seq_len = config.data.seq_len
        ci = True if config.model.channel_independent is None else config.model.channel_independent
        return Inputs(
            task="forecasting",
            train=WindowDataset(splits.train, seq_len, horizon, stride=config.data.stride),
            val=WindowDataset(splits.val, seq_len, horizon),
            test=WindowDataset(splits.test, seq_len, horizon),
            seq_len=seq_len,
            channels=splits.channels,
            channel_independent=ci,
            horizon=horizon,
            columns=tuple(splits.columns),
        )
    assert isinstance(splits, ClassificationSplits)
    ci = False if config.model.channel_independent is None else config.model.channel_independent

    observed = splits.observed or (None, None, None)  # padded series: (N, L) masks, True at real steps

    def dataset(part: tuple, real) -> Dataset:
        full = LabelledDataset(part[0], part[1], observed=real)
        return full if labelled else _Unlabelled(full)

    return Inputs(
        task="classification",
        train=dataset(splits.train, observed[0]),
        val=dataset(splits.val, observed[1]),
        test=dataset(splits.test, observed[2]),
        seq_len=splits.length,
        channels=splits.channels,
        channel_independent=ci,
        num_classes=splits.num_classes,
    )


def split_batch(batch: Any) -> tuple[Any, Any]:
    """A pre-training batch as (series (B, L, C), observed (B, L) or None): padded sets yield (x, observed) pairs."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


class _Unlabelled(Dataset):
    """Series without their labels, for pre-training: x, or (x, observed) for padded series."""

    def __init__(self, labelled: LabelledDataset) -> None:
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int):
        item = self.labelled[index]
        return item[0] if len(item) == 2 else (item[0], item[2])
