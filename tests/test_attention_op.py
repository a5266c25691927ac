"""simmtm.method.attention_kernel: the small-head kernel is a torch operator. torch.library.opcheck passes on every
operator (schema, autograd registration, fake implementation, AOT dispatch with dynamic shapes, forward and backward),
a compiled Transformer encoder that runs on it gives eager's values and gradients, and a second process reuses the
build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simmtm
from simmtm.config.schema import ModelConfig
from simmtm.method import attention as attention_module
from simmtm.method.attention import small_head_kernel_available
from simmtm.method.encoders import build_encoder

needs_kernel = pytest.mark.skipif(not small_head_kernel_available(), reason="no C++ compiler for the small-head kernel")
ops = torch.ops.simmtm if small_head_kernel_available() else None

# (N, h, T, hs): the paper's heads (size 2) at short lengths, the encoder tests' shapes (d_model 8 over 4 and 2 heads),
# a single token, an odd length with the largest head the kernel takes.
SHAPES = [(2, 16, 12, 2), (3, 4, 21, 2), (5, 2, 24, 4), (1, 1, 1, 1), (2, 3, 37, 7)]


def seed(value: int | None) -> torch.Tensor | None:
    return None if value is None else torch.tensor(value, dtype=torch.int64)


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dropout", [(0.0, None), (0.1, 1234)], ids=["plain", "dropout"])
def test_opcheck_small_head_attention(shape: tuple[int, ...], dropout: tuple[float, int | None]) -> None:
    torch.manual_seed(0)
    p, s = dropout
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    torch.library.opcheck(ops.small_head_attention.default, (q, k, v, p, seed(s)))
    # strided views (the transformer's q, k, v sliced out of one projection), not contiguous
    n, h, t, e = shape
    views = torch.randn(n, t, 3, h, e, requires_grad=True).permute(2, 0, 3, 1, 4)
    torch.library.opcheck(ops.small_head_attention.default, (*views, p, seed(s)))


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dropout", [(0.0, None), (0.2, -5)], ids=["plain", "dropout"])  # a negative seed: 64 bits
def test_opcheck_small_head_attention_packed(shape: tuple[int, ...], dropout: tuple[float, int | None]) -> None:
    torch.manual_seed(1)
    n, h, t, e = shape
    qkv = torch.randn(n, t, 3, h, e, requires_grad=True)
    torch.library.opcheck(ops.small_head_attention_packed.default, (qkv, *dropout[:1], seed(dropout[1])))


@needs_kernel
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_opcheck_the_backward_operators_and_the_mask(p: float) -> None:
    # what autograd calls, checked on their own (not differentiable themselves: once_differentiable)
    torch.manual_seed(2)
    s = seed(7) if p else None
    qkv = torch.randn(2, 19, 3, 4, 2)
    out, lse = ops.small_head_attention_packed(qkv, p, s)
    grad = torch.randn_like(out)
    torch.library.opcheck(ops.small_head_attention_packed_backward.default, (grad, qkv, out, lse, p, s))
    q, k, v = (t.contiguous() for t in qkv.permute(2, 0, 3, 1, 4))
    out, lse = ops.small_head_attention(q, k, v, p, s)
    torch.library.opcheck(ops.small_head_attention_backward.default, (grad, q, k, v, out, lse, p, s))
    torch.library.opcheck(ops.small_head_dropout_mask.default, (6, 19, max(p, 0.3), seed(7)))


def encoder_and_batch(attention_dropout: float = 0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder="transformer",
        d_model=8,
        n_heads=4,
        n_layers=2,
        d_ff=16,
        dropout=0.0,
        attention_dropout=attention_dropout,
    )
    return build_encoder(cfg, in_channels=1, seq_len=21), torch.randn(3, 21, 1)


def values_and_gradients(model, encoder, x):
    encoder.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in encoder.parameters()]


@needs_kernel
def test_compiled_encoder_on_the_kernel_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder, x = encoder_and_batch()
    eager = values_and_gradients(encoder, encoder, x)

    def refuse(*args, **kwargs):
        raise AssertionError("the compiled encoder fell back to torch's attention kernel")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    compiled = values_and_gradients(torch.compile(encoder, fullgraph=True), encoder, x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=2e-6)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_compiling_before_the_kernel_is_loaded_breaks_no_graph_and_compile_true_loads_it_first(monkeypatch) -> None:
    """torch.compile cannot trace the kernel's build and its lock (they broke the graph in every attention layer). An
    encoder compiled before any load traces whole, on torch's kernel; a model that ``compile: true`` compiles
    (prepare_model) gets the kernel loaded before it is traced. Here the load is made to look first-time again (the
    build and registration already happened in this process)."""
    from simmtm.method import attention_kernel
    from simmtm.train.runtime import LocalRuntime
    from simmtm.train.shared import prepare_model

    monkeypatch.setattr(attention_kernel, "_loaded", False)
    monkeypatch.setattr(attention_kernel, "_build", lambda: None)
    monkeypatch.setattr(attention_kernel, "_register", lambda: None)
    encoder, x = encoder_and_batch()
    torch._dynamo.reset()  # no compiled code of another test's encoder is reused
    out, _ = values_and_gradients(torch.compile(encoder, fullgraph=True, backend="aot_eager"), encoder, x)
    assert not attention_kernel.loaded() and torch.isfinite(out).all()  # fullgraph: a graph break would raise
    prepare_model(encoder, LocalRuntime(torch.device("cpu")), compile=True)
    assert attention_kernel.loaded()


@needs_kernel
def test_compiled_encoder_with_attention_dropout_traces_the_seed_without_a_graph_break() -> None:
    encoder, x = encoder_and_batch(attention_dropout=0.1)
    compiled = torch.compile(encoder, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break would raise
    out, grads = values_and_gradients(compiled, encoder, x)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    encoder.eval()  # no dropout: the compiled module gives eager's values
    torch.testing.assert_close(compiled(x), encoder(x), rtol=1e-5, atol=2e-6)
    assert attention_module.KERNEL == "auto"


@needs_kernel
@pytest.mark.slow  # a fresh interpreter that imports torch: 10-45 s
def test_a_second_process_loads_the_built_kernel_without_rebuilding(tmp_path: Path) -> None:
    """...even from a copy of simmtm at another path, as each Ray job's unpacked working dir is: the compile command
    names the source file, and a per-path command had every trial process of a cluster job rebuild the kernel."""
    (library,) = [Path(p) for p in torch.ops.loaded_libraries if "simmtm_attention" in Path(p).name]
    built = {p: p.stat().st_mtime_ns for p in library.parent.iterdir() if p.suffix in (".so", ".o")}
    elsewhere = tmp_path / "unpacked"
    shutil.copytree(Path(simmtm.__file__).parent, elsewhere / "simmtm", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import torch, simmtm; from simmtm.method.attention import small_head_kernel_available as ok; "
        "assert ok(); print(simmtm.__file__, *[p for p in torch.ops.loaded_libraries if 'simmtm_attention' in p])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, check=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(elsewhere)})
    package, loaded = map(Path, done.stdout.split())
    assert package.is_relative_to(elsewhere) and loaded == library
    assert {p: p.stat().st_mtime_ns for p in built} == built  # neither compiled nor linked again
