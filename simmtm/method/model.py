"""The SimMTM objective (Dong et al., NeurIPS 2023), top to bottom.

A batch of N series is masked M times. The originals and their masked copies, (M + 1) * N series, are
normalised (statistics over kept points only), encoded into point-wise representations z, and pooled by the
projector into series-wise vectors s. The cosine similarities R between all series vectors drive two things:

* the constraint loss, a multi-positive contrastive loss in which the other M views of the same original are the
  positives and every other series a negative;
* the neighbourhood aggregation, which rebuilds each original from the softmax(R / tau)-weighted sum of the
  point-wise representations of all *other* series, then decodes it back to the time domain for the
  reconstruction loss (``pretrain.reconstruction: every_view``, the official classification objective, rebuilds
  every row, masked copies included, and scores each against its own input).

With ``model.projector: official``, ``model.head_dropout: 0.1`` and ``model.embedding_init: official`` the forward
equals the official forecasting model's (tests/test_official.py); docs/fidelity.md lists what remains different.

Names follow the paper: r (``mask_ratio``), M (``num_masked``), tau (``temperature``).
Shapes: N series, V = M + 1 views, L time points, c channels per series, T tokens, D model width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from simmtm.config.schema import ModelConfig, PretrainConfig
from simmtm.method.encoders import Encoder

__all__ = [
    "SimMTM",
    "SimMTMOutput",
    "SeriesProjector",
    "AutomaticWeightedLoss",
    "FixedWeightedLoss",
    "masked_instance_norm",
    "series_similarity",
    "constraint_loss",
    "aggregation_weights",
    "to_series",
    "from_series",
]

EPS = 1e-5
Gather = Callable[[torch.Tensor], torch.Tensor]


# --- channel independence ------------------------------------------------------------------------------------


def to_series(x: torch.Tensor, channel_independent: bool) -> torch.Tensor:
    """``(B, L, C)`` windows -> series: ``(B * C, L, 1)`` when every channel is its own series, else unchanged."""
    if not channel_independent:
        return x
    b, length, c = x.shape
    return x.permute(0, 2, 1).reshape(b * c, length, 1)  # (B*C, L, 1)


def from_series(y: torch.Tensor, batch: int, channel_independent: bool) -> torch.Tensor:
    """Inverse of ``to_series`` for an output ``(B * C, H, 1)`` -> ``(B, H, C)``."""
    if not channel_independent:
        return y
    n, h, _ = y.shape
    return y.reshape(batch, n // batch, h).permute(0, 2, 1)  # (B, H, C)


# --- the pieces of the objective -----------------------------------------------------------------------------


def masked_instance_norm(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-series, per-channel standardisation using only kept points; masked points become 0.

    ``x, keep: (N, L, c)`` -> normalised ``(N, L, c)``, mean and std ``(N, 1, c)``.
    """
    keep = keep.bool()
    count = keep.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)  # (N, 1, c)
    # where, not multiply by keep: a masked NaN or inf times 0 would still be NaN
    mean = torch.where(keep, x, 0.0).sum(dim=1, keepdim=True) / count
    centred = torch.where(keep, x - mean, 0.0)
    std = torch.sqrt((centred * centred).sum(dim=1, keepdim=True) / count + EPS)
    return centred / std, mean, std


class SeriesProjector(nn.Module):
    """Pools a point-wise representation ``(N, T, D)`` into one series-wise vector ``(N, P)``.

    Flatten -> Linear(T*D -> hidden) -> norm -> ReLU -> Linear(hidden -> P) -> Dropout. The official Pooler_Head
    is hidden = T*D // 2, batch norm, P = 128, dropout = head_dropout; ``lean`` is hidden = P, no dropout.
    """

    def __init__(self, tokens: int, d_model: int, *, hidden: int, dim: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        norms = {"batch": lambda: nn.BatchNorm1d(hidden), "layer": lambda: nn.LayerNorm(hidden), "none": nn.Identity}
        self.net = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(tokens * d_model, hidden),
            norms[norm](),
            nn.ReLU(),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, tokens: int, d_model: int) -> SeriesProjector:
        if cfg.projector == "lean":
            return cls(tokens, d_model, hidden=cfg.projector_dim, dim=cfg.projector_dim, norm=cfg.projector_norm)
        hidden = cfg.projector_hidden or tokens * d_model // 2
        return cls(
            tokens, d_model, hidden=hidden, dim=cfg.projector_dim, norm=cfg.projector_norm, dropout=cfg.head_dropout
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def series_similarity(s: torch.Tensor) -> torch.Tensor:
    """R: cosine similarity between all series vectors, ``(S, P) -> (S, S)``."""
    s = F.normalize(s, dim=1)
    return s @ s.T


def _positives(num_views: int, num_series: int, device: torch.device) -> torch.Tensor:
    """``(V*N, V*N)`` bool: True where two rows are different views of the same original (diagonal excluded)."""
    series_id = torch.arange(num_series, device=device).repeat(num_views)  # row v*N + i belongs to series i
    same = series_id[:, None] == series_id[None, :]
    return same & ~torch.eye(num_views * num_series, dtype=torch.bool, device=device)


def _without_self(logits: torch.Tensor, first_row: int = 0) -> torch.Tensor:
    """Set each row's own column to -inf (row k of ``logits`` is series ``first_row + k``)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits.index_put(
        (rows, rows + first_row), torch.tensor(float("-inf"), device=logits.device, dtype=logits.dtype)
    )


def constraint_loss(similarity: torch.Tensor, num_views: int, temperature: float) -> torch.Tensor:
    """Multi-positive contrastive loss over ``(V*N, V*N)`` similarities, rows ordered view-major.

    loss = mean over rows of  - sum_{positives p} log softmax_p(R_row / tau), self excluded from the softmax.
    """
    n = similarity.shape[0] // num_views
    log_prob = F.log_softmax(_without_self(similarity / temperature), dim=1)  # (V*N, V*N)
    positives = _positives(num_views, n, similarity.device)
    return -log_prob.masked_fill(~positives, 0.0).sum(dim=1).mean()


def aggregation_weights(similarity_rows: torch.Tensor, temperature: float, first_row: int = 0) -> torch.Tensor:
    """softmax(R / tau) over all other series; ``similarity_rows`` are rows ``first_row...`` of R."""
    return F.softmax(_without_self(similarity_rows / temperature, first_row), dim=1)


class AutomaticWeightedLoss(nn.Module):
    """The official combination: sum_k 0.5 / sigma_k^2 * L_k + log(1 + sigma_k^2), sigma_k learnt (init 1)."""

    def __init__(self, num_losses: int = 2) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.ones(num_losses))

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        sigma2 = self.sigma**2
        total = sum(0.5 / sigma2[k] * loss + torch.log1p(sigma2[k]) for k, loss in enumerate(losses))
        # a sum of tensors is a tensor; typeshed's sum() adds the Literal[0] of an empty input
        return cast(torch.Tensor, total)


class FixedWeightedLoss(nn.Module):
    """The paper's combination: reconstruction + lambda * constraint."""

    def __init__(self, constraint_weight: float) -> None:
        super().__init__()
        self.constraint_weight = constraint_weight

    def forward(self, reconstruction: torch.Tensor, constraint: torch.Tensor) -> torch.Tensor:
        return reconstruction + self.constraint_weight * constraint


# --- the model -----------------------------------------------------------------------------------------------


@dataclass
class SimMTMOutput:
    loss: torch.Tensor  # the combined objective that is minimised
    reconstruction: torch.Tensor  # MSE between rebuilt and original series
    constraint: torch.Tensor  # the multi-positive contrastive loss
    rebuilt: torch.Tensor  # (N, L, c) the originals rebuilt from their neighbours, in the input's scale


class SimMTM(nn.Module):
    """Encoder plus the SimMTM heads; ``forward`` returns the pre-training losses for a batch of series."""

    def __init__(
        self, encoder: Encoder, *, seq_len: int, channels: int, model: ModelConfig, pretrain: PretrainConfig
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.seq_len, self.channels = seq_len, channels
        self.temperature = pretrain.temperature
        self.every_view = pretrain.reconstruction == "every_view"
        self.instance_norm = model.instance_norm
        tokens, d = encoder.num_tokens(seq_len), encoder.d_model
        self.projector = SeriesProjector.from_config(model, tokens=tokens, d_model=d)
        # the official Flatten_Head: flatten, Linear(T*D -> L), Dropout(head_dropout)
        self.decoder = nn.Sequential(
            nn.Flatten(1), nn.Linear(tokens * d, seq_len * channels), nn.Dropout(model.head_dropout)
        )
        self.combine: nn.Module = (
            AutomaticWeightedLoss(2)
            if pretrain.loss_weighting == "auto"
            else FixedWeightedLoss(pretrain.constraint_weight)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, gather: Gather | None = None, observed: torch.Tensor | None = None
    ) -> SimMTMOutput:
        """``x: (N, L, c)`` originals; ``mask: (M, N, L, c)``, True where a copy's point is hidden.

        ``gather`` (data-parallel runs) concatenates a tensor's first dimension across workers, with gradients
        flowing back to the local part, so that similarity, constraint and aggregation see the global batch.
        ``observed: (N, L)`` bool, True at real steps of padded series: padding is left out of the normalisation
        statistics, the encoder's attention, the pooled series vectors and the reconstruction loss. None (equal
        lengths) runs the unmasked computation unchanged.
        """
        m, n = mask.shape[:2]
        if observed is not None:
            x = torch.where(observed[..., None], x, 0.0)  # whatever the padding holds (NaN included) is not seen
        views = torch.cat([x.unsqueeze(0), x.unsqueeze(0).masked_fill(mask, 0.0)])  # (V, N, L, c)
        keep = torch.cat([torch.ones_like(mask[:1]), ~mask])  # (V, N, L, c)
        if observed is not None:
            keep = keep & observed[None, :, :, None]  # padding is never "kept"
        views, keep = views.flatten(0, 1), keep.flatten(0, 1)  # (V*N, L, c), row v*N + i: view v of series i
        real = None if observed is None else observed.repeat(m + 1, 1)  # (V*N, L)
        if self.instance_norm:
            normed, mean, std = masked_instance_norm(views, keep)  # (V*N, L, c), (V*N, 1, c) twice
        else:
            normed, mean, std = views, torch.zeros_like(views[:, :1]), torch.ones_like(views[:, :1])

        targets = views if self.every_view else x  # what the rebuilt rows are scored against: (V*N | N, L, c)

        if real is None:
            z = self.encoder(normed)  # (V*N, T, D)
        else:
            z = self.encoder(normed, real)  # (V*N, T, D)
            # masked pooling: tokens of padding add nothing to the series vectors or to a neighbour's rebuild
            z = torch.where(self.encoder.token_mask(real)[..., None], z, 0.0)
        if gather is not None:
            z, mean, std = (_gather_views(t, m + 1, gather) for t in (z, mean, std))
            targets = _gather_views(targets, m + 1, gather) if self.every_view else gather(targets)
            if real is not None:  # bool does not travel through the gather's gradient: as float and back
                real = _gather_views(real.float(), m + 1, gather) > 0.5
            n = z.shape[0] // (m + 1)

        s = self.projector(z)  # (V*N, P)
        similarity = series_similarity(s)  # (V*N, V*N)
        loss_constraint = constraint_loss(similarity, m + 1, self.temperature)

        rows = similarity.shape[0] if self.every_view else n  # which rows are rebuilt and scored
        weights = aggregation_weights(similarity[:rows], self.temperature)  # (rows, V*N): each row's neighbours
        rebuilt_z = (weights @ z.flatten(1)).view(rows, *z.shape[1:])  # (rows, T, D)
        rebuilt = self.decoder(rebuilt_z).view(rows, self.seq_len, self.channels)  # (rows, L, c), normalised
        rebuilt = rebuilt * std[:rows] + mean[:rows]  # back to each row's own scale
        if real is None:
            loss_reconstruction = F.mse_loss(rebuilt, targets)
        else:  # the mean over real steps only (where, not multiply: padding may hold anything)
            scored = real[:rows, :, None].expand_as(rebuilt)  # (rows, L, c)
            loss_reconstruction = torch.where(scored, (rebuilt - targets) ** 2, 0.0).sum() / scored.sum().clamp_min(1)

        loss = self.combine(loss_reconstruction, loss_constraint)
        return SimMTMOutput(loss, loss_reconstruction, loss_constraint, rebuilt[:n])


def _gather_views(t: torch.Tensor, num_views: int, gather: Gather) -> torch.Tensor:
    """Gather a view-major ``(V*N, ...)`` tensor across workers into view-major ``(V*N_global, ...)``: the same
    order one worker would have produced for the concatenation of all workers' batches."""
    grouped = t.view(num_views, t.shape[0] // num_views, *t.shape[1:]).transpose(0, 1)  # (N, V, ...)
    gathered = gather(grouped.contiguous())  # (N_global, V, ...)
    return gathered.transpose(0, 1).flatten(0, 1)  # (V*N_global, ...)
