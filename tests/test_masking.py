"""Masking strategies: masked fraction, run lengths, independence across series, seeding, shape, device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simmtm.method.masking import MASKINGS, geometric_mask, make_mask, random_mask


def draw(fn, shape, ratio, mean_length=3.0, seed=0):
    return fn(shape, ratio, mean_length, generator=torch.Generator().manual_seed(seed))


def run_means(mask: torch.Tensor) -> tuple[float, float]:
    """Mean length of masked and of unmasked runs along the last dim (points per run start)."""
    m = mask.reshape(-1, mask.shape[-1]).numpy().astype(np.int8)
    changes = np.diff(m, axis=1)
    masked_starts = (changes == 1).sum() + m[:, 0].sum()
    unmasked_starts = (changes == -1).sum() + (1 - m[:, 0]).sum()
    return m.sum() / masked_starts, (1 - m).sum() / unmasked_starts


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().float().numpy(), b.flatten().float().numpy())[0, 1])


# --- the masked fraction and the run lengths -----------------------------------------------------------------


@pytest.mark.parametrize("fn", [geometric_mask, random_mask], ids=["geometric", "random"])
@pytest.mark.parametrize("ratio", [0.125, 0.3, 0.5, 0.75, 0.875])
def test_masked_fraction_is_the_ratio(fn, ratio: float) -> None:
    mask = draw(fn, (400, 500), ratio)
    assert mask.float().mean().item() == pytest.approx(ratio, abs=0.01)
    # the fraction holds at every position (the chain starts in its stationary state), not just on average
    per_position = mask.float().mean(dim=0)
    assert per_position[:5].mean().item() == pytest.approx(ratio, abs=0.05)
    assert per_position[-5:].mean().item() == pytest.approx(ratio, abs=0.05)


@pytest.mark.parametrize("ratio, mean_length", [(0.125, 3.0), (0.25, 3.0), (0.5, 3.0), (0.75, 3.0), (0.5, 5.0), (0.2, 1.0)])
def test_geometric_runs_have_the_requested_mean_lengths(ratio: float, mean_length: float) -> None:
    assert ratio <= mean_length / (mean_length + 1)  # the regime where lm is kept as asked
    mask = draw(geometric_mask, (200, 2000), ratio, mean_length)
    masked, unmasked = run_means(mask)
    assert masked == pytest.approx(mean_length, rel=0.1)
    assert unmasked == pytest.approx(mean_length * (1 - ratio) / ratio, rel=0.1)


@pytest.mark.parametrize("ratio", [0.8, 0.875, 0.95])
def test_geometric_runs_lengthen_at_high_ratio(ratio: float) -> None:
    """Above lm / (lm + 1) an unmasked run would be shorter than a point: unmasked runs are single points and
    masked runs lengthen to r / (1 - r), so the ratio still holds (the documented behaviour)."""
    mask = draw(geometric_mask, (200, 2000), ratio, 3.0)
    masked, unmasked = run_means(mask)
    assert unmasked == 1.0
    assert masked == pytest.approx(ratio / (1 - ratio), rel=0.1)
    assert mask.float().mean().item() == pytest.approx(ratio, abs=0.01)


def test_geometric_mask_is_a_markov_chain_not_independent_points() -> None:
    """Lag-1 autocorrelation of the two-state chain is 1 - 1/lm_masked - 1/lm_unmasked (1/3 at r=0.5, lm=3);
    independent points (random masking) have none."""
    geometric = draw(geometric_mask, (200, 2000), 0.5, 3.0)
    assert corr(geometric[:, 1:], geometric[:, :-1]) == pytest.approx(1 / 3, abs=0.03)
    independent = draw(random_mask, (200, 2000), 0.5)
    assert abs(corr(independent[:, 1:], independent[:, :-1])) < 0.01
    assert run_means(independent)[0] == pytest.approx(2.0, rel=0.1)  # 1 / (1 - r)


# --- independence, seeding, shape, device --------------------------------------------------------------------


@pytest.mark.parametrize("fn", [geometric_mask, random_mask], ids=["geometric", "random"])
def test_every_series_has_its_own_chain(fn) -> None:
    mask = draw(fn, (3, 4, 2, 4000), 0.5).reshape(24, 4000)
    assert len({tuple(row.tolist()) for row in mask}) == 24  # rows differ
    c = np.corrcoef(mask.float().numpy())
    off_diagonal = c[~np.eye(24, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.08
    assert abs(off_diagonal.mean()) < 0.01


def test_no_chain_runs_across_series_borders() -> None:
    """The official code runs one chain over the flattened batch, so a series' first point follows the previous
    series' last point; here each series starts afresh."""
    mask = draw(geometric_mask, (20000, 12), 0.5)
    assert abs(corr(mask[1:, 0], mask[:-1, -1])) < 0.03
    assert corr(mask[:, 1], mask[:, 0]) > 0.25  # within a series the chain does carry over


@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_seeded_generator_reproduces_the_mask(name: str) -> None:
    a = make_mask(name, (4, 3, 50), 0.4, 3.0, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part when a generator is given
    b = make_mask(name, (4, 3, 50), 0.4, 3.0, generator=torch.Generator().manual_seed(7))
    c = make_mask(name, (4, 3, 50), 0.4, 3.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(MASKINGS))
@pytest.mark.parametrize("shape", [(1,), (37,), (5, 9), (2, 3, 4, 17), (16, 7, 3, 48)])
def test_shape_and_dtype_are_kept(name: str, shape: tuple[int, ...]) -> None:
    mask = make_mask(name, shape, 0.5, 3.0, generator=torch.Generator().manual_seed(0))
    assert mask.shape == shape
    assert mask.dtype == torch.bool


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_device_is_honoured(name: str, device: str) -> None:
    generator = torch.Generator(device=device).manual_seed(0)
    mask = make_mask(name, (4, 2, 30), 0.5, 3.0, generator=generator, device=torch.device(device))
    assert mask.device.type == device
    assert 0.2 < mask.float().mean().item() < 0.8


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_masking_is_vectorised_over_time(name: str) -> None:
    """The number of tensor operations does not grow with the series length (no loop over time points)."""
    counts = []
    for length in (16, 400, 10000):
        with _CountOps() as ops:
            make_mask(name, (2, 3, length), 0.5, 3.0, generator=torch.Generator().manual_seed(0))
        counts.append(ops.count)
    assert counts[0] == counts[1] == counts[2]
    assert counts[0] < 100


def test_unknown_masking_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown masking 'blocks'; valid: geometric, random"):
        make_mask("blocks", (2, 10), 0.5, 3.0)


def test_every_masking_the_config_accepts_is_registered() -> None:
    from simmtm.config.schema import MASKING_NAMES
    from simmtm.method.masking import MASKINGS

    assert sorted(MASKINGS) == sorted(MASKING_NAMES)
