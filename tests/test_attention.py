"""simmtm.method.attention: the small-head CPU kernel equals the reference kernel (values and gradients), and the dispatch
sends each shape where it belongs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simmtm.config.schema import ModelConfig
from simmtm.method import attention as attention_module
from simmtm.method import attention_kernel
from simmtm.method.attention import (
    attention,
    small_head_attention,
    small_head_dropout_mask,
    small_head_kernel_available,
)
from simmtm.method.encoders import build_encoder

needs_kernel = pytest.mark.skipif(not small_head_kernel_available(), reason="no C++ compiler for the small-head kernel")


def reference_and_ours(q, k, v, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*leaves)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    mine = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ours = small_head_attention(*mine)
    our_grads = torch.autograd.grad(ours, mine, grad)
    return (ref, *ref_grads), (ours, *our_grads)


@needs_kernel
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(3, 5, 37), (1, 1, 1), (2, 3, 64)])  # problems x tokens: odd, single, even
def test_small_head_kernel_equals_the_reference_in_values_and_gradients(size: int, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(size)
    n, h, t = shape
    q, k, v, grad = (torch.randn(n, h, t, size) for _ in range(4))
    expected, got = reference_and_ours(q, k, v, grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


@needs_kernel
def test_small_head_kernel_is_stable_for_large_scores_and_any_leading_shape() -> None:
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(15, 40, 2) for _ in range(4))  # 3-d: 15 problems, not a multiple of the thread count
    q = q * 30  # scores up to ~1e3: a softmax without the row maximum would overflow
    # At such scores float32 itself is the limit (the reference is off by ~1e-4 too): both are measured against float64.
    exact_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    exact_out = F.scaled_dot_product_attention(*exact_leaves)
    truth = [exact_out, *torch.autograd.grad(exact_out, exact_leaves, grad.double())]
    reference, ours = reference_and_ours(q, k, v, grad)
    for exact, ref, got in zip(truth, reference, ours):
        assert torch.isfinite(got).all()
        ref_error, our_error = ((t.double() - exact).abs().max().item() for t in (ref, got))
        assert our_error <= max(2 * ref_error, 1e-5 * exact.abs().max().item())


@needs_kernel
def test_small_head_kernel_takes_the_transformers_strided_views() -> None:
    # SelfAttention slices q, k, v out of one (N, T, 3, h, hs) tensor: non-contiguous inputs
    torch.manual_seed(0)
    qkv = torch.randn(4, 30, 3, 16, 2)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (N, h, T, hs)
    assert not q.is_contiguous()
    grad = torch.randn(4, 16, 30, 2)
    expected, got = reference_and_ours(q, k, v, grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


@needs_kernel
def test_packed_qkv_gives_the_same_values_and_gradients_without_copies() -> None:
    # SelfAttention passes the fused projection's (N, T, 3, h, hs) output: the kernel reads it in place and returns
    # its gradient in one piece. Same arithmetic as the three-view path, so bit-for-bit the same numbers.
    torch.manual_seed(0)
    packed = torch.randn(3, 29, 3, 4, 2)
    grad = torch.randn(3, 4, 29, 2)
    split = packed.detach().clone().requires_grad_()
    separate = attention(*split.permute(2, 0, 3, 1, 4))
    separate.backward(grad)
    fused = packed.detach().clone().requires_grad_()
    out = attention(*fused.permute(2, 0, 3, 1, 4), packed=fused)
    out.backward(grad)
    assert torch.equal(out, separate) and torch.equal(fused.grad, split.grad)
    reference = packed.detach().clone().requires_grad_()
    F.scaled_dot_product_attention(*reference.permute(2, 0, 3, 1, 4)).backward(grad)
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=2e-6)
    assert out.transpose(1, 2).is_contiguous()  # laid out (N, T, h, hs): merging the heads is a view
    # a tensor that q, k, v are not views of is ignored (the three views are used)
    other = torch.randn(3, 29, 3, 4, 2)
    torch.testing.assert_close(
        attention(*packed.permute(2, 0, 3, 1, 4), packed=other), separate.detach(), rtol=0, atol=0
    )


@needs_kernel
def test_the_transformer_layer_gives_the_reference_values_and_gradients_with_the_packed_kernel(monkeypatch) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(
        ModelConfig(encoder="transformer", d_model=8, n_heads=4, n_layers=2, d_ff=16, dropout=0.0),
        in_channels=1,
        seq_len=21,
    )
    x = torch.randn(3, 21, 1)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        out = encoder(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters()]

    ours, our_grads = run()
    monkeypatch.setattr(attention_module, "KERNEL", "sdpa")
    ref, ref_grads = run()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-6)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_small_head_kernel_refuses_what_it_was_not_built_for() -> None:
    x = torch.randn(2, 3, 5, 2)
    with pytest.raises(ValueError, match="float32"):
        small_head_attention(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match="head size 8"):
        small_head_attention(*(torch.randn(2, 3, 5, 8) for _ in range(3)))
    with pytest.raises(ValueError, match="shapes"):
        small_head_attention(x, x[:, :, :4], x[:, :, :4])  # cross-attention: not this kernel's


@needs_kernel
def test_small_head_kernel_runs_on_any_thread_count() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 25, 2) for _ in range(3))
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(small_head_attention(q, k, v))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])  # one problem is always one thread's: the split changes nothing


# --- attention dropout inside the kernel -----------------------------------------------------------------------


def math_path_with_mask(q, k, v, grad, mask, p):
    """softmax(q k^T / sqrt(hs)) with the kernel's mask applied as torch's dropout applies one, in float64."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    weights = torch.softmax(leaves[0] @ leaves[1].transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    out = (weights * mask / (1 - p)) @ leaves[2]
    return (out, *torch.autograd.grad(out, leaves, grad.double()))


@needs_kernel
@pytest.mark.parametrize("size", [1, 2, 7])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kernel_dropout_equals_the_math_path_given_the_same_mask(size: int, p: float) -> None:
    torch.manual_seed(size)
    q, k, v, grad = (torch.randn(2, 3, 37, size) for _ in range(4))
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    out = small_head_attention(*mine, dropout_p=p, seed=1234)
    got = (out, *torch.autograd.grad(out, mine, grad))
    mask = small_head_dropout_mask(q.shape, p, 1234)  # (2, 3, 37, 37)
    assert 0 < mask.float().mean() < 1
    for a, b in zip(got, math_path_with_mask(q, k, v, grad, mask, p)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5)
    # another mask does not fit: the comparison above can fail
    other = small_head_dropout_mask(q.shape, p, 1235)
    assert not torch.allclose(out.double(), math_path_with_mask(q, k, v, grad, other, p)[0], atol=1e-3)


@needs_kernel
def test_packed_kernel_with_dropout_equals_the_math_path_and_the_seed_comes_from_torch() -> None:
    # The Transformer's path: the packed q/k/v, the seed drawn from torch's generator (torch.manual_seed repeats it).
    packed = torch.randn(3, 29, 3, 4, 2)
    grad = torch.randn(3, 4, 29, 2)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        seed = int(torch.randint(2**62, ()))  # what the kernel draws
        torch.manual_seed(7)
        leaf = packed.clone().requires_grad_()
        out = attention(*leaf.permute(2, 0, 3, 1, 4), packed=leaf, dropout_p=0.2)
        out.backward(grad)
        outs.append(out.detach())
    q, k, v = packed.permute(2, 0, 3, 1, 4)
    expected = math_path_with_mask(q, k, v, grad, small_head_dropout_mask(q.shape, 0.2, seed), 0.2)
    torch.testing.assert_close(outs[0].double(), expected[0], rtol=1e-4, atol=2e-5)
    grads = leaf.grad.permute(2, 0, 3, 1, 4)
    for a, b in zip(grads, expected[1:]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(attention(q, k, v, dropout_p=0.2), attention(q, k, v, dropout_p=0.2))  # fresh draws


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_kept_fraction_is_one_minus_p_and_neighbours_are_independent(p: float) -> None:
    mask = torch.cat([small_head_dropout_mask((50, 4, 37, 2), p, seed) for seed in range(10)]).float()
    n = mask.numel()  # 2.7M weights
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(mask.mean().item() - (1 - p)) < 4 * sigma
    # pairs along a row (the two halves of one draw too: columns j and j + 18) and along a column
    for a, b in [
        (mask[..., :-1], mask[..., 1:]),
        (mask[..., :18], mask[..., 18:36]),
        (mask[..., :-1, :], mask[..., 1:, :]),
    ]:
        both = (a * b).mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / a.numel()) ** 0.5
    # problems (heads) differ, seeds differ
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0], mask[50])


@needs_kernel
def test_dropout_zero_is_the_kernel_without_dropout() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 2) for _ in range(3))
    state = torch.get_rng_state()
    plain = small_head_attention(q, k, v, dropout_p=0.0)
    assert torch.equal(torch.get_rng_state(), state)  # no seed drawn: the dropout-free kernel ran
    assert torch.equal(plain, small_head_attention(q, k, v, dropout_p=0.0, seed=99))
    assert small_head_dropout_mask(q.shape, 0.0, 5).all()
    with pytest.raises(ValueError, match="dropout"):
        small_head_attention(q, k, v, dropout_p=1.0)


# --- dispatch ------------------------------------------------------------------------------------------------


@pytest.fixture
def sdpa_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        sizes.append(q.shape[-1])
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return sizes


@needs_kernel
def test_small_float32_cpu_heads_go_to_the_small_head_kernel_and_the_rest_to_sdpa(sdpa_sizes, monkeypatch) -> None:
    x = torch.randn(2, 4, 10, 2)
    attention(x, x, x)  # small head, float32, CPU: ours
    assert sdpa_sizes == []
    attention(torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8))  # head of 8: torch's
    attention(x.double(), x.double(), x.double())  # float64: torch's
    attention(x, x, x, dropout_p=0.5)  # attention dropout: ours too
    attention(x, x, x, pad=False)  # explicitly the reference
    monkeypatch.setattr(attention_module, "KERNEL", "sdpa")
    attention(x, x, x)
    assert sdpa_sizes == [8, 2, 2, 2]


def test_every_transformer_layer_calls_the_attention_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from simmtm.method import encoders

    calls = []

    def spy(q, k, v, **kwargs):
        calls.append(q.shape)
        return attention(q, k, v, **kwargs)

    monkeypatch.setattr(encoders, "attention", spy)
    encoder = build_encoder(
        ModelConfig(encoder="transformer", d_model=8, n_heads=2, n_layers=3, d_ff=16), in_channels=1, seq_len=24
    )
    encoder(torch.randn(5, 24, 1))
    assert calls == [torch.Size([5, 2, 24, 4])] * 3  # (N, heads, T, head size) per layer


def test_without_a_compiler_auto_falls_back_to_sdpa(sdpa_sizes, monkeypatch, tmp_path, caplog) -> None:
    # a fresh build (an empty extension folder) with a C++ compiler that does not exist
    monkeypatch.setattr(attention_kernel, "_loaded", False)
    monkeypatch.setattr(attention_kernel, "_error", None)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    assert not small_head_kernel_available()
    x = torch.randn(2, 4, 10, 2)
    torch.testing.assert_close(attention(x, x, x), F.scaled_dot_product_attention(x, x, x))
    assert sdpa_sizes == [2, 2]
    warnings = [r for r in caplog.records if "small-head attention kernel unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()  # one line, once


# --- zero-padded heads on a GPU (moved here with the padding from encoders.py) --------------------------------


def test_padded_small_heads_give_the_same_attention_and_gradients() -> None:
    # The paper's heads have size 2; on a GPU they are zero-padded to 8 to stay on a fused kernel. Same numbers.
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 16, 20, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    plain = attention(q, k, v, pad=False)
    grads = torch.autograd.grad(plain.square().sum(), (q, k, v))
    padded = attention(q, k, v, pad=True)
    padded_grads = torch.autograd.grad(padded.square().sum(), (q, k, v))
    assert padded.shape == plain.shape == (3, 16, 20, 2)
    torch.testing.assert_close(padded, plain)
    for a, b in zip(padded_grads, grads):
        torch.testing.assert_close(a, b)
    # and the scale is the head's own: padding with the default 1/sqrt(8) would change the result
    wrong = F.scaled_dot_product_attention(*(F.pad(t, (0, 6)) for t in (q, k, v)))[..., :2]
    assert not torch.allclose(wrong, plain)


def test_heads_are_padded_only_when_asked_on_the_cpu(sdpa_sizes) -> None:
    x = torch.randn(2, 4, 10, 2, dtype=torch.float64)  # float64: not the small-head kernel's
    attention(x, x, x)  # on the CPU no padding: the CPU kernel takes any head size
    attention(x, x, x, pad=True)
    y = torch.randn(2, 4, 10, 8)
    attention(y, y, y, pad=True)  # already a fused size
    assert sdpa_sizes == [2, 8, 8]
