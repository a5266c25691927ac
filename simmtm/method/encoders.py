"""Encoders: series in, point-wise representations out, chosen by name (``model.encoder``).

Every encoder maps ``x: (N, L, C)`` to ``z: (N, T, D)``: one D-dimensional vector per time point (T = L) or per
patch (T = number of patches). SimMTM's projector, aggregation and decoder work on any such ``z``.
Padded series (unequal lengths, ``data.unequal_length: pad``) come with ``observed: (N, L)``, True at real steps:
attention never looks at a padded key, and ``token_mask`` says which of the T outputs stand for real steps.
Without ``observed`` every encoder runs exactly as before.
New encoders register with ``@register_encoder("name")`` and pass the shared contract test.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from simmtm.config.schema import ModelConfig
from simmtm.method.attention import SMALL_HEAD_LIMIT, attention
from simmtm.method.memory import Dropout

__all__ = [
    "Encoder",
    "ENCODERS",
    "register_encoder",
    "build_encoder",
    "TransformerEncoder",
    "PatchEncoder",
    "ResNet1dEncoder",
    "TFCEncoder",
    "uses_small_heads",
]


class Encoder(nn.Module, ABC):
    """The interface every encoder implements."""

    d_model: int

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> Encoder:
        """Build from the model section of the config."""

    @abstractmethod
    def num_tokens(self, seq_len: int) -> int:
        """T: how many point-wise representations a series of length ``seq_len`` yields."""

    @abstractmethod
    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, L, C) -> (N, T, D)``; ``observed: (N, L)`` bool, True at real (not padded) steps."""

    def token_mask(self, observed: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` real steps -> ``(N, T)`` real tokens: a token is real when any step it covers is (T = L: the
        steps themselves)."""
        t = self.num_tokens(observed.shape[1])
        if t == observed.shape[1]:
            return observed
        # (N, 1, L) -> (N, 1, T): each token takes the steps nearest its share of the series
        return F.adaptive_max_pool1d(observed[:, None].float(), t)[:, 0] > 0


ENCODERS: dict[str, type[Encoder]] = {}


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    def add(cls: type[Encoder]) -> type[Encoder]:
        ENCODERS[name] = cls
        return cls

    return add


def build_encoder(cfg: ModelConfig, *, in_channels: int, seq_len: int) -> Encoder:
    try:
        cls = ENCODERS[cfg.encoder]
    except KeyError:
        raise ValueError(
            f"model.encoder: unknown encoder '{cfg.encoder}'; valid: {', '.join(sorted(ENCODERS))}"
        ) from None
    return cls.from_config(cfg, in_channels=in_channels, seq_len=seq_len)


# --- Transformer building blocks -----------------------------------------------------------------------------


def uses_small_heads(model: nn.Module) -> bool:
    """Whether an attention layer of ``model`` has heads small enough for the small-head kernel (on the CPU)."""
    return any(
        isinstance(m, SelfAttention) and m.qkv.in_features // m.n_heads < SMALL_HEAD_LIMIT for m in model.modules()
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention on the fused kernel (no L x L map is kept in memory for the backward pass)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (N, h, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        y = attention(q, k, v, dropout_p=dropout_p, keys=keys, packed=qkv)  # (N, h, T, hs)
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class EncoderLayer(nn.Module):
    """Post-LayerNorm Transformer layer, as in the official SimMTM / Time-Series-Library encoder."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = SelfAttention(d_model, n_heads, attention_dropout)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), Dropout(dropout), nn.Linear(d_ff, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, keys)))
        return self.norm2(x + self.dropout(self.ff(x)))


class TransformerStack(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attention_dropout)
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, keys)
        return self.norm(x)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The fixed sine/cosine position table of Vaswani et al., ``(length, d_model)``."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


# --- the encoders --------------------------------------------------------------------------------------------


@register_encoder("transformer")
class TransformerEncoder(Encoder):
    """The official forecasting backbone: one token per time step, circular-convolution token embedding plus
    sinusoidal positions, post-LayerNorm Transformer layers."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.token = nn.Conv1d(in_channels, cfg.d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        if cfg.embedding_init == "official":  # the official TokenEmbedding's initialisation
            nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.positions: torch.Tensor  # (L, D), a buffer: it follows the module's device and dtype
        self.register_buffer("positions", sinusoidal_positions(seq_len, cfg.d_model), persistent=False)
        self.dropout = Dropout(cfg.dropout)
        self.stack = TransformerStack(cfg)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> TransformerEncoder:
        return cls(cfg, in_channels=in_channels, seq_len=seq_len)

    def num_tokens(self, seq_len: int) -> int:
        return seq_len

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.token(x.transpose(1, 2)).transpose(1, 2)  # (N, L, D)
        tokens = self.dropout(tokens + self.positions[: x.shape[1]])
        return self.stack(tokens, observed)  # (N, L, D)


@register_encoder("patch")
class PatchEncoder(Encoder):
    """PatchTST-style: overlapping patches of ``patch_len`` points (step ``patch_stride``) are the tokens."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> None:
        super().__init__()
        if cfg.patch_len > seq_len:
            raise ValueError(f"model.patch_len ({cfg.patch_len}) must not exceed data.seq_len ({seq_len})")
        self.d_model = cfg.d_model
        self.patch_len = cfg.patch_len
        self.stride = cfg.patch_stride
        self.embed = nn.Linear(cfg.patch_len * in_channels, cfg.d_model)
        self.positions = nn.Parameter(0.02 * torch.randn(self.num_tokens(seq_len), cfg.d_model))
        self.dropout = Dropout(cfg.dropout)
        self.stack = TransformerStack(cfg)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> PatchEncoder:
        return cls(cfg, in_channels=in_channels, seq_len=seq_len)

    def num_tokens(self, seq_len: int) -> int:
        # PatchTST pads the end by one stride (repeating the last value) so the tail forms a patch too.
        return (seq_len + self.stride - self.patch_len) // self.stride + 1

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        n, _, c = x.shape
        padded = torch.cat([x, x[:, -1:].expand(n, self.stride, c)], dim=1)  # (N, L + stride, C)
        patches = padded.unfold(1, self.patch_len, self.stride)  # (N, P, C, patch_len)
        patches = patches.reshape(n, patches.shape[1], c * self.patch_len)  # (N, P, C * patch_len)
        tokens = self.dropout(self.embed(patches) + self.positions)  # (N, P, D)
        return self.stack(tokens, None if observed is None else self.token_mask(observed))

    def token_mask(self, observed: torch.Tensor) -> torch.Tensor:
        """A patch is real when any of its steps is (the tail patch repeats the last step, as in ``forward``)."""
        padded = torch.cat([observed, observed[:, -1:].expand(-1, self.stride)], dim=1)  # (N, L + stride)
        return padded.unfold(1, self.patch_len, self.stride).any(dim=-1)  # (N, P)


class ResidualBlock(nn.Module):
    """Three Conv-BN(-ReLU) layers with a shortcut (Wang et al. 2017, the 1-D ResNet for series)."""

    def __init__(self, c_in: int, c_out: int, kernel_sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, k in enumerate(kernel_sizes):
            layers += [
                nn.Conv1d(c_in if i == 0 else c_out, c_out, k, padding="same", bias=False),
                nn.BatchNorm1d(c_out),
            ]
            if i < len(kernel_sizes) - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


@register_encoder("resnet1d")
class ResNet1dEncoder(Encoder):
    """A 1-D residual CNN with no down-sampling, so every time point keeps its own representation."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        blocks = [
            ResidualBlock(in_channels if i == 0 else cfg.d_model, cfg.d_model, cfg.kernel_sizes)
            for i in range(cfg.n_layers)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> ResNet1dEncoder:
        return cls(cfg, in_channels=in_channels, seq_len=seq_len)

    def num_tokens(self, seq_len: int) -> int:
        return seq_len

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        # padded steps reach the convolutions as zeros (normalisation zeroes them); token_mask drops their outputs
        z = self.blocks(x.transpose(1, 2))  # (N, D, L)
        return self.dropout(z.transpose(1, 2))  # (N, L, D)


@register_encoder("tfc")
class TFCEncoder(Encoder):
    """The official SimMTM classification backbone (the TF-C time-domain CNN): three Conv-BN-ReLU-MaxPool blocks,
    kernel ``tfc_kernel`` with stride ``tfc_stride`` (official 25, 3), then 8 and 8; channels 32, 64, ``d_model``
    (official 128); dropout after the first block. Each of the T pooled positions is one token (T << L)."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.kernel, self.stride = cfg.tfc_kernel, cfg.tfc_stride
        self.blocks = nn.Sequential(
            _conv_pool_block(in_channels, 32, self.kernel, self.stride, dropout=cfg.dropout),
            _conv_pool_block(32, 64, 8, 1),
            _conv_pool_block(64, cfg.d_model, 8, 1),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, in_channels: int, seq_len: int) -> TFCEncoder:
        return cls(cfg, in_channels=in_channels, seq_len=seq_len)

    def num_tokens(self, seq_len: int) -> int:
        length = seq_len
        for kernel, stride in ((self.kernel, self.stride), (8, 1), (8, 1)):
            length = (length + 2 * (kernel // 2) - kernel) // stride + 1  # convolution, padding kernel // 2
            length = length // 2 + 1  # MaxPool1d(2, 2, padding=1)
        return length

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        # as in resnet1d: padding enters as zeros, token_mask drops the pooled positions that cover only padding
        z = self.blocks(x.transpose(1, 2))  # (N, D, T)
        return z.transpose(1, 2)  # (N, T, D)


def _conv_pool_block(c_in: int, c_out: int, kernel: int, stride: int, *, dropout: float = 0.0) -> nn.Sequential:
    """Conv1d (no bias, padding kernel // 2) -> BatchNorm -> ReLU -> MaxPool1d(2, 2, padding=1) [-> Dropout]."""
    layers: list[nn.Module] = [
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
        nn.MaxPool1d(kernel_size=2, stride=2, padding=1),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
