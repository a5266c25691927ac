"""The encoder contract, run over every registered encoder, and the fused attention of the Transformer."""

from __future__ import annotations

import math

import pytest
import torch

from simmtm.config.schema import ModelConfig
from simmtm.method.encoders import ENCODERS, Encoder, SelfAttention, TFCEncoder, build_encoder

SHAPES = [(24, 1), (24, 3), (17, 2), (40, 1)]  # (L, C)


def tiny_model(encoder: str, **changes) -> ModelConfig:
    base = dict(encoder=encoder, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.1, patch_len=4, patch_stride=2,
                kernel_sizes=[5, 3])
    return ModelConfig(**{**base, **changes})


def build(name: str, length: int, channels: int, *, seed: int = 0, **changes) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder(tiny_model(name, **changes), in_channels=channels, seq_len=length)


@pytest.fixture(params=sorted(ENCODERS))
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("length, channels", SHAPES)
def test_encoder_contract(name: str, length: int, channels: int) -> None:
    """Every registered encoder: shape (N, num_tokens(L), d_model), gradient to every parameter, seeded
    determinism, deterministic eval mode."""
    encoder = build(name, length, channels)
    assert isinstance(encoder, Encoder)
    assert encoder.d_model == 8
    x = torch.randn(3, length, channels, generator=torch.Generator().manual_seed(1))

    # shape
    encoder.train()
    z = encoder(x)
    assert z.shape == (3, encoder.num_tokens(length), encoder.d_model)
    assert 1 <= encoder.num_tokens(length) <= length
    assert torch.isfinite(z).all()

    # gradient reaches every parameter (a random projection of z, since the final LayerNorm makes plain sums flat)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    (z * weights).sum().backward()
    params = dict(encoder.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient at {pname}"

    # the same seed gives the same weights and outputs; another seed gives others
    twin, other = build(name, length, channels), build(name, length, channels, seed=1)
    for key, value in build(name, length, channels).state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in twin.state_dict().items())
    fresh = build(name, length, channels)
    fresh.eval(), twin.eval()
    with torch.no_grad():
        out = fresh(x)
        assert torch.equal(out, twin(x))
        assert torch.equal(out, fresh(x))  # eval mode: no dropout, no batch statistics
        assert not torch.equal(out, other.eval()(x))


def test_encoder_batch_items_are_independent_in_eval(name: str) -> None:
    """A series' representation does not depend on the rest of the batch (in eval mode)."""
    encoder = build(name, 24, 2).eval()
    x = torch.randn(4, 24, 2)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)[:1], encoder(x[:1]), atol=1e-5, rtol=1e-5)


def test_the_registry_has_the_documented_encoders() -> None:
    assert {"transformer", "patch", "resnet1d", "tfc"} <= set(ENCODERS)
    with pytest.raises(ValueError, match="model.encoder: unknown encoder 'lstm'; valid: .*transformer"):
        build_encoder(tiny_model("lstm"), in_channels=1, seq_len=24)


def test_patch_counts_tokens_with_a_padded_tail() -> None:
    encoder = build("patch", 24, 1, patch_len=8, patch_stride=4)
    assert encoder.num_tokens(24) == 6  # (24 + 4 - 8) // 4 + 1
    with pytest.raises(ValueError, match="model.patch_len"):
        build("patch", 6, 1, patch_len=8)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match=r"model.d_model \(8\) must be divisible by model.n_heads \(3\)"):
        build("transformer", 24, 1, n_heads=3)


def test_tfc_has_the_official_classification_shapes() -> None:
    """The official Epilepsy setup: length 178, kernel 25 stride 3, then 8, 8; channels 32, 64, 128. Its flattened
    output is the official `Linear(1280, ...)` input: 10 positions x 128 channels."""
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(encoder="tfc", d_model=128, dropout=0.35), in_channels=1, seq_len=178)
    assert isinstance(encoder, TFCEncoder)
    assert encoder.num_tokens(178) == 10
    assert encoder.eval()(torch.randn(2, 178, 1)).shape == (2, 10, 128)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.bias) for c in convs] == [
        (1, 32, 25, 3, None), (32, 64, 8, 1, None), (64, 128, 8, 1, None)]
    assert sum(isinstance(m, torch.nn.MaxPool1d) for m in encoder.modules()) == 3


def test_token_embedding_has_the_official_initialisation() -> None:
    """kaiming-normal (fan_in, leaky_relu) on the token convolution, drawn after torch's default init as the
    official TokenEmbedding does: the same seed gives exactly those weights."""
    torch.manual_seed(3)
    official = build_encoder(tiny_model("transformer", embedding_init="official"), in_channels=2, seq_len=24)
    torch.manual_seed(3)
    conv = torch.nn.Conv1d(2, 8, kernel_size=3, padding=1, padding_mode="circular", bias=False)
    torch.nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="leaky_relu")
    torch.testing.assert_close(official.token.weight, conv.weight)
    torch.manual_seed(3)
    default = build_encoder(tiny_model("transformer", embedding_init="torch"), in_channels=2, seq_len=24)
    assert not torch.equal(default.token.weight, official.token.weight)


# --- the Transformer's attention -----------------------------------------------------------------------------


def test_self_attention_matches_the_textbook_formula() -> None:
    torch.manual_seed(0)
    attention = SelfAttention(d_model=8, n_heads=2, dropout=0.0).eval()
    x = torch.randn(3, 10, 8)
    q, k, v = attention.qkv(x).split(8, dim=-1)  # (N, T, D) each

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(3, 10, 2, 4).transpose(1, 2)  # (N, h, T, hs)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4)  # (N, h, T, T)
    expected = attention.out((scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(3, 10, 8))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
