"""The SimMTM objective: constraint loss, aggregation without self, normalisation, loss weighting, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simmtm.config.schema import ModelConfig, PretrainConfig
from simmtm.method.encoders import build_encoder
from simmtm.method.heads import Classifier, Forecaster
from simmtm.method.masking import geometric_mask
from simmtm.method.model import (
    AutomaticWeightedLoss,
    FixedWeightedLoss,
    SeriesProjector,
    SimMTM,
    aggregation_weights,
    constraint_loss,
    from_series,
    masked_instance_norm,
    series_similarity,
    to_series,
)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def hand_constraint_loss(vectors: list[list[float]], num_views: int, tau: float) -> float:
    """- sum over positives of log softmax (self excluded), mean over rows; rows are view-major (v * N + i)."""
    n = len(vectors) // num_views
    total = 0.0
    for row in range(len(vectors)):
        others = [col for col in range(len(vectors)) if col != row]
        denominator = sum(math.exp(cosine(vectors[row], vectors[col]) / tau) for col in others)
        for col in others:
            if col % n == row % n:  # another view of the same original
                total -= math.log(math.exp(cosine(vectors[row], vectors[col]) / tau) / denominator)
    return total / len(vectors)


# --- the constraint loss -------------------------------------------------------------------------------------


def test_constraint_loss_two_series_one_masked_copy() -> None:
    # rows: original 0, original 1, copy of 0, copy of 1 (N = 2, M = 1)
    s = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]]
    tau = 0.5
    got = constraint_loss(series_similarity(torch.tensor(s, dtype=torch.float64)), 2, tau)
    assert got.item() == pytest.approx(hand_constraint_loss(s, 2, tau), rel=1e-12)


def test_constraint_loss_row_zero_by_hand() -> None:
    """With N=2, V=2, rows 1..3 symmetric to row 0 the loss is row 0's term: checks the formula itself."""
    s = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    tau = 0.2
    # row 0: similarities to rows 1, 2, 3 are -1, 1, -1; positive row 2
    row = -math.log(math.exp(1 / tau) / (math.exp(-1 / tau) + math.exp(1 / tau) + math.exp(-1 / tau)))
    assert constraint_loss(series_similarity(s), 2, tau).item() == pytest.approx(row, rel=1e-12)


def test_constraint_loss_three_views_many_positives() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 4)).tolist()  # N = 2 originals, M = 2 masked copies: V = 3
    for tau in (0.2, 1.0):
        got = constraint_loss(series_similarity(torch.tensor(s, dtype=torch.float64)), 3, tau).item()
        assert got == pytest.approx(hand_constraint_loss(s, 3, tau), rel=1e-10)


def test_constraint_loss_is_lower_when_views_agree() -> None:
    agree = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    swapped = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9], [0.9, 0.1]])
    assert constraint_loss(series_similarity(agree), 2, 0.2) < constraint_loss(series_similarity(swapped), 2, 0.2)


# --- aggregation -------------------------------------------------------------------------------------------


def test_aggregation_excludes_self_and_matches_softmax_by_hand() -> None:
    s = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    similarity = series_similarity(s)
    tau = 0.3
    weights = aggregation_weights(similarity[:2], tau)  # the originals' rows (N=2, V=3)
    assert weights.shape == (2, 6)
    assert weights[0, 0].item() == 0.0 and weights[1, 1].item() == 0.0
    r = similarity.numpy()
    for i in range(2):
        e = np.exp(r[i] / tau)
        e[i] = 0.0
        np.testing.assert_allclose(weights[i].numpy(), e / e.sum(), rtol=1e-12)
    # rows given with an offset exclude their own column too
    tail = aggregation_weights(similarity[3:5], tau, first_row=3)
    assert tail[0, 3].item() == 0.0 and tail[1, 4].item() == 0.0
    torch.testing.assert_close(tail.sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_own_representation_never_enters_its_rebuild() -> None:
    """With the similarities fixed, changing series i's z changes every rebuild but its own."""
    z = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(1))  # (V*N, T, D)
    similarity = series_similarity(torch.randn(6, 5, generator=torch.Generator().manual_seed(2)))
    weights = aggregation_weights(similarity[:2], 0.2)  # (N, V*N)
    rebuilt = (weights @ z.flatten(1)).view(2, 4, 3)
    z2 = z.clone()
    z2[0] += 100.0
    rebuilt2 = (weights @ z2.flatten(1)).view(2, 4, 3)
    torch.testing.assert_close(rebuilt2[0], rebuilt[0])
    assert not torch.allclose(rebuilt2[1], rebuilt[1])


# --- the whole model ---------------------------------------------------------------------------------------


def tiny_simmtm(*, length: int = 16, channels: int = 1, weighting: str = "auto", encoder: str = "transformer",
                seed: int = 0, reconstruction: str = "originals", **model) -> SimMTM:
    torch.manual_seed(seed)
    model_cfg = ModelConfig(**{"encoder": encoder, "d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16, "dropout": 0.0,
                               "projector_dim": 8, "kernel_sizes": [3], **model})
    pretrain_cfg = PretrainConfig(num_masked=2, temperature=0.2, loss_weighting=weighting, constraint_weight=0.3,
                                  reconstruction=reconstruction)
    encoder_ = build_encoder(model_cfg, in_channels=channels, seq_len=length)
    return SimMTM(encoder_, seq_len=length, channels=channels, model=model_cfg, pretrain=pretrain_cfg)


def batch(n: int = 4, length: int = 16, channels: int = 1, m: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(n, length, channels, generator=g)
    mask = geometric_mask((m, n, channels, length), 0.5, 3.0, generator=g).transpose(2, 3)  # (M, N, L, c)
    return x, mask


def test_forward_rebuilds_from_others_only() -> None:
    """In the real forward pass: the decoder's input for each original is the softmax-weighted sum of the
    other series' z (own weight exactly 0), with weights from the projector's cosine similarities."""
    model = tiny_simmtm()
    captured = {}
    model.encoder.register_forward_hook(lambda mod, inp, out: captured.__setitem__("z", out))
    model.projector.register_forward_hook(lambda mod, inp, out: captured.__setitem__("s", out))
    model.decoder.register_forward_pre_hook(lambda mod, inp: captured.__setitem__("rebuilt_z", inp[0]))
    x, mask = batch()
    out = model(x, mask)
    z, s = captured["z"].detach(), captured["s"].detach()
    assert z.shape == (12, 16, 8)  # (V*N, T, D)
    cos = torch.nn.functional.normalize(s, dim=1) @ torch.nn.functional.normalize(s, dim=1).T
    e = torch.exp(cos[:4] / 0.2)
    e[range(4), range(4)] = 0.0  # self excluded
    weights = e / e.sum(dim=1, keepdim=True)
    torch.testing.assert_close(captured["rebuilt_z"].detach(), (weights @ z.flatten(1)).view(4, 16, 8))
    assert out.rebuilt.shape == x.shape
    torch.testing.assert_close(out.reconstruction, torch.mean((out.rebuilt - x) ** 2))


def test_gradients_reach_every_parameter() -> None:
    model = tiny_simmtm()
    x, mask = batch()
    model(x, mask).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(name.startswith("encoder.") for name, _ in model.named_parameters())


def test_fixed_weighting_is_reconstruction_plus_lambda_constraint() -> None:
    model = tiny_simmtm(weighting="fixed")
    assert isinstance(model.combine, FixedWeightedLoss)
    out = model(*batch())
    torch.testing.assert_close(out.loss, out.reconstruction + 0.3 * out.constraint)
    assert FixedWeightedLoss(0.0)(torch.tensor(2.0), torch.tensor(5.0)).item() == 2.0


def test_automatic_weighting_formula() -> None:
    combine = AutomaticWeightedLoss(2)
    torch.testing.assert_close(combine.sigma.detach(), torch.ones(2))  # init 1
    with torch.no_grad():
        combine.sigma.copy_(torch.tensor([0.5, 2.0]))
    got = combine(torch.tensor(3.0), torch.tensor(7.0))
    expected = 0.5 / 0.25 * 3.0 + math.log(1 + 0.25) + 0.5 / 4.0 * 7.0 + math.log(1 + 4.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    # d/dsigma of 0.5 L / sigma^2 + log(1 + sigma^2) = -L / sigma^3 + 2 sigma / (1 + sigma^2)
    expected_grad = [-3.0 / 0.125 + 1.0 / 1.25, -7.0 / 8.0 + 4.0 / 5.0]
    np.testing.assert_allclose(combine.sigma.grad.numpy(), expected_grad, rtol=1e-6)
    model = tiny_simmtm(weighting="auto")
    out = model(*batch())
    torch.testing.assert_close(out.loss, 0.5 * out.reconstruction + math.log(2) + 0.5 * out.constraint + math.log(2))


def test_identity_gather_changes_nothing() -> None:
    """One worker's gather is the identity: the view-major reordering around it must be an exact round trip."""
    model = tiny_simmtm()
    x, mask = batch()
    plain = model(x, mask)
    gathered = model(x, mask, gather=lambda t: t)
    torch.testing.assert_close(gathered.loss, plain.loss)
    torch.testing.assert_close(gathered.rebuilt, plain.rebuilt)


@pytest.mark.parametrize("reconstruction", ["originals", "every_view"])
def test_gather_across_two_simulated_workers_equals_the_global_batch(reconstruction: str) -> None:
    """Worker 0 of two, whose gather appends worker 1's tensors, computes the global batch's losses."""
    model = tiny_simmtm(reconstruction=reconstruction)
    x, mask = batch(n=4)
    whole = model(x, mask)

    recorded: list[torch.Tensor] = []
    model(x[2:], mask[:, 2:], gather=lambda t: recorded.append(t.detach()) or t)  # worker 1's local tensors
    remote = iter(recorded)
    worker0 = model(x[:2], mask[:, :2], gather=lambda t: torch.cat([t, next(remote)]))
    torch.testing.assert_close(worker0.constraint, whole.constraint)
    torch.testing.assert_close(worker0.reconstruction, whole.reconstruction)
    torch.testing.assert_close(worker0.rebuilt, whole.rebuilt)


# --- normalisation and channel independence ----------------------------------------------------------------


def test_masked_instance_norm_uses_only_kept_points() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 2, generator=g) * 4 + 7
    keep = torch.rand(3, 20, 2, generator=g) > 0.4
    normed, mean, std = masked_instance_norm(x, keep)
    for i in range(3):
        for c in range(2):
            kept = x[i, :, c][keep[i, :, c]].double().numpy()
            assert mean[i, 0, c].item() == pytest.approx(kept.mean(), rel=1e-5)
            assert std[i, 0, c].item() == pytest.approx(math.sqrt(kept.var() + 1e-5), rel=1e-5)
    assert (normed[~keep] == 0).all()  # masked points become 0
    # masked values may be anything, even inf or NaN: neither the statistics nor the kept outputs change
    garbage = x.masked_fill(~keep, 1e6)
    garbage[0, ~keep[0, :, 0], 0] = float("nan")
    garbage[1, ~keep[1, :, 1], 1] = float("inf")
    normed2, mean2, std2 = masked_instance_norm(garbage, keep)
    torch.testing.assert_close(mean2, mean)
    torch.testing.assert_close(std2, std)
    torch.testing.assert_close(normed2, normed)


def test_masked_instance_norm_keeps_every_point_when_nothing_is_masked() -> None:
    x = torch.randn(2, 30, 1) * 3 + 1
    normed, mean, std = masked_instance_norm(x, torch.ones_like(x, dtype=torch.bool))
    torch.testing.assert_close(normed * std + mean, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed.mean(dim=1), torch.zeros(2, 1), atol=1e-5, rtol=0)


def test_to_series_and_back() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # (B, L, C)
    series = to_series(x, True)
    assert series.shape == (6, 5, 1)
    torch.testing.assert_close(series[1 * 3 + 2, :, 0], x[1, :, 2])  # row b * C + c is channel c of window b
    torch.testing.assert_close(from_series(series, 2, True), x)
    assert to_series(x, False) is x
    assert from_series(x, 2, False) is x
    # a head's output (B*C, H, 1) with H != L maps back to (B, H, C)
    y = torch.randn(6, 4, 1)
    back = from_series(y, 2, True)
    assert back.shape == (2, 4, 3)
    torch.testing.assert_close(back[1, :, 2], y[5, :, 0])


def test_multichannel_series_are_rebuilt_in_their_own_scale() -> None:
    model = tiny_simmtm(channels=3, encoder="resnet1d")
    x, mask = batch(channels=3)
    out = model(x, mask)
    assert out.rebuilt.shape == (4, 16, 3)
    # the rebuilt series come back de-normalised: their mean sits near the input's (about 3), not near 0
    assert abs(out.rebuilt.mean().item() - x.mean().item()) < 1.0


# --- the official recipe's switches ------------------------------------------------------------------------


def test_official_projector_has_the_pooler_head_widths_and_lean_keeps_its_keys() -> None:
    official = SeriesProjector.from_config(ModelConfig(projector="official", head_dropout=0.1), tokens=16, d_model=8)
    layers = official.net
    assert (layers[1].in_features, layers[1].out_features, layers[2].num_features, layers[4].out_features) == (128, 64, 64, 128)
    assert layers[5].p == 0.1
    wider = SeriesProjector.from_config(ModelConfig(projector="official", projector_hidden=256, projector_dim=32), tokens=16, d_model=8)
    assert (wider.net[1].out_features, wider.net[4].out_features) == (256, 32)
    # lean: today's projector, same state-dict keys as before the switch (older runs stay loadable), no dropout
    lean = SeriesProjector.from_config(ModelConfig(projector="lean", projector_dim=8, head_dropout=0.3), tokens=16, d_model=8)
    assert {k: tuple(v.shape) for k, v in lean.state_dict().items() if "weight" in k} == {
        "net.1.weight": (8, 128), "net.2.weight": (8,), "net.4.weight": (8, 8)}
    assert lean.net[5].p == 0.0


def test_head_dropout_acts_in_training_only() -> None:
    model = tiny_simmtm(projector="official", head_dropout=0.5)
    x, mask = batch()
    assert model.decoder[2].p == 0.5 and model.projector.net[5].p == 0.5
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask).loss, model(x, mask).loss)
        model.train()
        assert not torch.equal(model(x, mask).rebuilt, model(x, mask).rebuilt)
    forecaster = Forecaster(model.encoder, seq_len=16, horizon=4, channels=1, channel_independent=True, head_dropout=0.5)
    windows = torch.randn(3, 16, 1)
    with torch.no_grad():
        assert not torch.equal(forecaster.train()(windows), forecaster(windows))
        torch.testing.assert_close(forecaster.eval()(windows), forecaster(windows))


def test_every_view_reconstruction_scores_each_row_against_its_own_input() -> None:
    """The official classification objective: every row (originals and masked copies) is rebuilt from all other
    rows and compared with its own input, a masked copy with its zeros."""
    model = tiny_simmtm(reconstruction="every_view", encoder="resnet1d", channels=2)
    captured = {}
    model.decoder.register_forward_hook(lambda mod, inp, out: captured.__setitem__("decoded", out))
    x, mask = batch(channels=2)
    out = model(x, mask)
    views = torch.cat([x[None], x[None].masked_fill(mask, 0.0)]).flatten(0, 1)  # (V*N, L, c)
    keep = torch.cat([torch.ones_like(mask[:1]), ~mask]).flatten(0, 1)
    _, mean, std = masked_instance_norm(views, keep)
    decoded = captured["decoded"].detach().view(12, 16, 2)
    assert decoded.shape[0] == 3 * 4  # every row, not the originals only
    expected = torch.mean((decoded * std + mean - views) ** 2)
    torch.testing.assert_close(out.reconstruction.detach(), expected)
    assert out.rebuilt.shape == x.shape  # the output still carries the originals


def test_without_instance_norm_the_encoder_sees_the_masked_input_itself() -> None:
    model = tiny_simmtm(instance_norm=False, encoder="resnet1d")
    seen = {}
    model.encoder.register_forward_pre_hook(lambda mod, inp: seen.__setitem__("x", inp[0]))
    x, mask = batch()
    model(x, mask)
    torch.testing.assert_close(seen["x"], torch.cat([x[None], x[None].masked_fill(mask, 0.0)]).flatten(0, 1))
    classifier = Classifier(model.encoder, seq_len=16, channels=1, num_classes=3, channel_independent=False, instance_norm=False)
    classifier(x)
    torch.testing.assert_close(seen["x"], x)

