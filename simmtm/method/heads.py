"""Downstream models: a (pre-trained or random) encoder plus a task head.

Inputs are normalised per series exactly as in pre-training (every point kept; ``instance_norm=False`` skips it, as
the official classification code does), so the encoder sees the same distribution it was pre-trained on; forecasts
are mapped back to the input's scale.
"""

from __future__ import annotations

import torch
from torch import nn

from simmtm.method.encoders import Encoder
from simmtm.method.model import from_series, masked_instance_norm, to_series

__all__ = ["Forecaster", "Classifier"]


class Forecaster(nn.Module):
    """Encoder -> flatten (T * D) -> Linear -> horizon -> Dropout(head_dropout), per series (channel-independent
    by default): the official Flatten_Head, whose dropout acts on the forecast itself (official 0.1)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        seq_len: int,
        horizon: int,
        channels: int,
        channel_independent: bool,
        head_dropout: float = 0.0,
        instance_norm: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.horizon = horizon
        self.channel_independent = channel_independent
        self.instance_norm = instance_norm
        self.series_channels = 1 if channel_independent else channels
        tokens = encoder.num_tokens(seq_len)
        self.head = nn.Sequential(
            nn.Flatten(1), nn.Linear(tokens * encoder.d_model, horizon * self.series_channels), nn.Dropout(head_dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) -> (B, H, C)``."""
        b = x.shape[0]
        series = to_series(x, self.channel_independent)  # (N, L, c)
        normed, mean, std = _normalise(series, self.instance_norm)
        z = self.encoder(normed)  # (N, T, D)
        y = self.head(z).view(-1, self.horizon, self.series_channels) * std + mean  # (N, H, c)
        return from_series(y, b, self.channel_independent)


class Classifier(nn.Module):
    """Encoder -> flatten -> Linear -> sigmoid -> Linear -> classes (the official classification head)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        seq_len: int,
        channels: int,
        num_classes: int,
        channel_independent: bool,
        hidden: int = 64,
        instance_norm: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.channel_independent = channel_independent
        self.instance_norm = instance_norm
        self.series_per_sample = channels if channel_independent else 1
        tokens = encoder.num_tokens(seq_len)
        self.head = nn.Sequential(
            nn.Linear(self.series_per_sample * tokens * encoder.d_model, hidden),
            nn.Sigmoid(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, C) -> (B, classes)`` logits; ``observed: (B, L)``, True at real steps of padded series."""
        b = x.shape[0]
        series = to_series(x, self.channel_independent)  # (N, L, c)
        if observed is None:
            normed, _, _ = _normalise(series, self.instance_norm)
            z = self.encoder(normed)  # (N, T, D)
        else:
            real = observed.repeat_interleave(self.series_per_sample, dim=0)  # (N, L): each channel-series of a sample
            keep = real[..., None].expand_as(series)
            series = torch.where(keep, series, 0.0)  # whatever the padding holds (NaN included) is not seen
            normed = masked_instance_norm(series, keep)[0] if self.instance_norm else series
            z = self.encoder(normed, real)  # (N, T, D)
            z = torch.where(self.encoder.token_mask(real)[..., None], z, 0.0)  # masked pooling: padding adds nothing
        return self.head(z.reshape(b, -1))  # (B, classes)


def _normalise(series: torch.Tensor, on: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-series standardisation over every point, or (``on=False``) the series unchanged with mean 0, std 1."""
    if not on:
        return series, torch.zeros_like(series[:, :1]), torch.ones_like(series[:, :1])
    return masked_instance_norm(series, torch.ones_like(series, dtype=torch.bool))
