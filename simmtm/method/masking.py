"""Masking strategies: which time points of each masked copy are hidden.

All strategies return a boolean tensor of the requested shape ``(..., L)`` where ``True`` marks a *masked*
(hidden) point, drawn on the given device with no Python loop over time points. Each series along the leading
dimensions gets its own independent draw.

A strategy is one function registered by name (``@register_masking("name")``) under one of the names the config
declares (``simmtm.config.schema.MASKING_NAMES``: the config sits below the method and cannot import this registry;
registering a name it does not declare fails at import). The functions import torch themselves, so that validating a
config (``simmtm validate``) does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from simmtm.config.schema import MASKING_NAMES

if TYPE_CHECKING:
    import torch

__all__ = [
    "MASKINGS",
    "geometric_mask",
    "make_mask",
    "random_mask",
    "real_steps_only",
    "register_masking",
]

MaskFn = Callable[..., "torch.Tensor"]
MASKINGS: dict[str, MaskFn] = {}


def register_masking(name: str) -> Callable[[MaskFn], MaskFn]:
    """Register a strategy ``fn(shape, ratio, mean_length, *, generator, device) -> bool tensor`` as ``name``."""

    if name not in MASKING_NAMES:
        raise ValueError(f"masking '{name}' is not declared in simmtm.config.schema.MASKING_NAMES")

    def add(fn: MaskFn) -> MaskFn:
        MASKINGS[name] = fn
        return fn

    return add


def _known_masking(name: str) -> str:
    if name not in MASKINGS:
        raise ValueError(f"unknown masking '{name}'; valid: {', '.join(sorted(MASKINGS))}")
    return name


@register_masking("geometric")
def geometric_mask(
    shape: tuple[int, ...],
    ratio: float,
    mean_length: float = 3.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Segment masking (Zerveas et al. 2021, as used by SimMTM), one independent chain per series.

    A two-state Markov chain alternates masked runs of mean length ``mean_length`` and unmasked runs of mean
    length ``mean_length * (1 - ratio) / ratio``; it starts masked with probability ``ratio``, so the expected
    masked fraction is ``ratio``. When that unmasked mean would fall below one point (``ratio`` above
    ``mean_length / (mean_length + 1)``), masked runs lengthen to ``ratio / (1 - ratio)`` instead. Run lengths are
    drawn directly (geometric), then placed by a cumulative sum.
    """
    import torch

    *lead, length = shape
    series = math.prod(lead)
    # Unmasked runs last at least one point; at high ratios the masked runs lengthen to keep the ratio.
    mean_length = max(mean_length, ratio / (1 - ratio))
    mean_unmasked = mean_length * (1 - ratio) / ratio
    p_masked_end = 1.0 / mean_length  # probability a masked run ends at each step
    p_unmasked_end = min(1.0, 1.0 / mean_unmasked)

    # Enough runs to cover `length` points with overwhelming probability; in the rare case they fall short,
    # redraw with one run per point, which always covers the series since every run is at least one point.
    starts_masked = torch.rand(series, 1, generator=generator, device=device) < ratio  # (S, 1)
    for n_runs in (_runs_needed(length, mean_length, mean_unmasked), length):
        run_index = torch.arange(n_runs, device=device)
        run_is_masked = starts_masked ^ (run_index & 1).bool()  # (S, K): runs alternate state
        scale = torch.where(run_is_masked, _geometric_scale(p_masked_end), _geometric_scale(p_unmasked_end))
        lengths = _geometric(scale, generator=generator)  # (S, K), each >= 1
        ends = lengths.cumsum(dim=1)  # (S, K): exclusive end of each run
        if bool((ends[:, -1] >= length).all()):
            break
    # Mark where each run ends (plus a mark at t = 0 when the chain starts masked): the running count of marks
    # is then odd exactly on masked points, since runs alternate.
    boundaries = torch.zeros(series, length + 1, dtype=torch.uint8, device=device)
    boundaries.scatter_(1, ends.clamp_(max=length), 1)
    boundaries[:, :1] = starts_masked
    mask = boundaries[:, :length].cumsum(dim=1, dtype=torch.int32).bitwise_and_(1).bool()  # (S, L)
    return mask.reshape(*lead, length)


@register_masking("random")
def random_mask(
    shape: tuple[int, ...],
    ratio: float,
    mean_length: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent Bernoulli(ratio) masking of every point (``mean_length`` is ignored)."""
    import torch

    return torch.rand(shape, generator=generator, device=device) < ratio


def real_steps_only(mask: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """``mask (M, N, L, c)`` with padding never masked: only real steps (``observed (N, L)`` True) are hidden.

    None (equal lengths) returns ``mask`` itself. The model leaves padding out of every loss either way; this keeps
    a masked copy's hidden points where there is something to hide.
    """
    if observed is None:
        return mask
    return mask & observed[None, :, :, None]


def make_mask(
    name: str,
    shape: tuple[int, ...],
    ratio: float,
    mean_length: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw a mask with the strategy registered under ``name``."""
    return MASKINGS[_known_masking(name)](shape, ratio, mean_length, generator=generator, device=device)


# --- helpers -------------------------------------------------------------------------------------------------


def _geometric_scale(p: float) -> float:
    """Scale that turns a Uniform(0, 1] draw U into a Geometric(p) draw on {1, 2, ...}: floor(log U * scale) + 1."""
    return 0.0 if p >= 1 else 1.0 / math.log1p(-p)


def _geometric(scale: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """Geometric draws by inversion of uniform draws, vectorised (``scale`` from ``_geometric_scale``)."""
    import torch

    u = torch.rand(scale.shape, generator=generator, device=scale.device)
    log_u = u.clamp_min_(torch.finfo(u.dtype).tiny).log_()
    return log_u.mul_(scale).floor_().add_(1).long()


def _runs_needed(length: int, mean_masked: float, mean_unmasked: float) -> int:
    """Runs to draw so that they cover ``length`` points with overwhelming probability."""
    mean_pair = mean_masked + mean_unmasked
    expected = 2 * length / mean_pair
    return int(min(length, math.ceil(expected + 5 * math.sqrt(expected) + 8)))
