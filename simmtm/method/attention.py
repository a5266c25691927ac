"""Softmax self-attention, ``(N, h, T, hs)`` in and out, on the fastest exact kernel for the shape and device.

* Small heads (hs < 8) on the CPU, float32: a kernel of our own, the torch operators ``simmtm::small_head_attention``
  and ``simmtm::small_head_attention_packed`` (``attention_kernel.cpp``, built on first use by torch's extension
  tooling; ``attention_kernel.py`` builds it and registers its autograd formulas and fake implementations, so
  torch.compile traces it). torch's fused CPU kernel (``scaled_dot_product_attention``) is built for heads of
  64-128; at the paper's ETTh1 shape (7,168 problems a layer of 336 x 336 with heads of size 2) it spends its time on
  per-block overhead, and it took 88 % of a pre-training step. Ours handles one problem per thread at a time, one row
  of scores at a time: the scores never leave L1, memory stays linear in T, and the backward pass recomputes the
  probabilities from the saved log-sum-exp (one exponential per score in each direction, as flash attention does).
  It reads q, k, v in place through strides (with ``packed=``, straight out of the fused q/k/v projection, whose
  gradient it writes in one piece) and lays its output out as (N, T, h, hs), so merging the heads is a view.
  Attention dropout is applied inside the kernel from a counter-based random stream (a hash of the call's seed, the
  problem, the row and the column), which the backward pass regenerates: no T x T mask is stored either.
  ``small_head_dropout_mask`` returns the mask a seed gives (for tests).
* Everything else: ``F.scaled_dot_product_attention``, with small heads zero-padded on a GPU (see ``PAD_HEADS``).

``KERNEL = "sdpa"`` (or the environment variable ``SIMMTM_ATTENTION=sdpa``) forces the reference kernel everywhere,
for benchmarks and for a machine without a C++ compiler (where "auto" falls back to it by itself, with one warning).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from simmtm.method import attention_kernel

__all__ = [
    "KERNEL",
    "PAD_HEADS",
    "SMALL_HEAD_LIMIT",
    "attention",
    "small_head_attention",
    "small_head_dropout_mask",
    "small_head_kernel_available",
]

# "auto": the small-head kernel where it applies, else scaled_dot_product_attention; "sdpa": always the latter.
KERNEL = os.environ.get("SIMMTM_ATTENTION", "auto")
# Heads below this size go to the small-head kernel on the CPU (torch's kernel is the faster one from 8 up).
SMALL_HEAD_LIMIT = 8

# CUDA's fused attention kernels (flash, memory-efficient) need a head size that is a multiple of 8 (4 in float32 for
# the memory-efficient one); below that torch falls back to the math kernel, which keeps every T x T map for the
# backward pass. The paper's ETTh1 encoder has heads of size 2 (d_model 32, 16 heads), so on a GPU q, k and v are
# zero-padded to 8: no dot product changes, the padded output columns are dropped, the scale stays 1/sqrt(2).
# A switch for benchmarks: simmtm.method.attention.PAD_HEADS = False.
PAD_HEADS = True
_HEAD_MULTIPLE = 8


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout_p: float = 0.0,
    pad: bool | None = None,
    keys: torch.Tensor | None = None,
    packed: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v over ``(N, h, T, hs)``; ``dropout_p`` on the attention weights.

    ``pad`` True/False forces ``scaled_dot_product_attention`` with/without zero-padded heads (the reference).
    ``keys: (N, T)`` bool: only True keys are attended to (padded series); it always takes
    ``scaled_dot_product_attention``, the small-head kernel has no mask.
    ``packed``: the ``(N, T, 3, h, hs)`` output of a fused q/k/v projection of which q, k, v are the views
    ``packed.permute(2, 0, 3, 1, 4)``. The small-head kernel then reads it in place and returns its gradient in one
    piece (no copies of q, k, v or of their gradients); the values are the same as without it. Ignored under
    torch.compile, which cannot check that q, k, v are its views.
    """
    size = q.shape[-1]
    mask = None if keys is None else keys[:, None, None, :]  # (N, 1, 1, T): broadcast over heads and queries
    if pad is None and mask is None and _small_head_applies(q, k, v):
        # torch.compile cannot compare data pointers: a compiled model runs the three views (the same numbers)
        if packed is not None and not torch.compiler.is_compiling() and _is_split_of(packed, q, k, v):
            return torch.ops.simmtm.small_head_attention_packed(packed, dropout_p, _seed(dropout_p))[0]
        return small_head_attention(q, k, v, dropout_p=dropout_p)
    if pad is None:
        pad = PAD_HEADS and q.is_cuda and size % _HEAD_MULTIPLE != 0
    if not pad:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    extra = -size % _HEAD_MULTIPLE
    q, k, v = (F.pad(t, (0, extra)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=size**-0.5)[..., :size]


def _small_head_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (
        KERNEL == "auto"
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and q.shape[-1] < SMALL_HEAD_LIMIT
        and q.shape == k.shape == v.shape
        and _kernel_ready()
    )


def _kernel_ready() -> bool:
    # torch.compile cannot trace the build and its lock (a graph break in every attention layer): while tracing, only
    # whether the kernel is loaded (simmtm.train.shared.prepare_model loads it before it compiles a model that uses it)
    if torch.compiler.is_compiling():
        return attention_kernel.loaded()
    return small_head_kernel_available()


def _is_split_of(packed: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if packed.dim() != 5 or packed.shape[2] != 3 or packed.stride(-1) != 1:
        return False
    views = packed.permute(2, 0, 3, 1, 4)
    return all(
        a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
        for a, b in zip(views, (q, k, v), strict=True)
    )


# --- the small-head kernel ---------------------------------------------------------------------------------------


def small_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0, seed: int | None = None
) -> torch.Tensor:
    """Exact softmax self-attention for float32 CPU tensors ``(..., T, hs)`` with hs < 8, on the small-head kernel.

    ``dropout_p``: dropout on the attention weights, with the mask ``small_head_dropout_mask(q.shape, dropout_p,
    seed)``; ``seed`` None draws one from torch's default generator (``torch.manual_seed`` repeats it)."""
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (q, k, v)):
        raise ValueError("small_head_attention takes float32 CPU tensors only")
    if q.shape[-1] >= SMALL_HEAD_LIMIT:
        raise ValueError(f"small_head_attention takes heads below {SMALL_HEAD_LIMIT}, got head size {q.shape[-1]}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"small_head_attention needs q, k, v of equal shapes, got {q.shape}, {k.shape}, {v.shape}")
    if not small_head_kernel_available():
        raise RuntimeError(f"small-head attention kernel unavailable: {attention_kernel.failure()}")
    shape = q.shape
    q, k, v = (t.reshape(-1, 1, *shape[-2:]) if t.dim() != 4 else t for t in (q, k, v))  # (A, B, T, hs)
    out, _ = torch.ops.simmtm.small_head_attention(q, k, v, dropout_p, _seed(dropout_p, seed))
    return out.reshape(shape)


def _seed(dropout_p: float, seed: int | None = None) -> torch.Tensor | None:
    """The kernel's dropout seed: None without dropout, else a one-element int64 tensor holding the seed's 64 bits
    (drawn from torch's default generator when not given)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention dropout must be in [0, 1), got {dropout_p}")
    if dropout_p == 0.0:
        return None
    if seed is None:
        return torch.randint(2**62, (), dtype=torch.int64)  # torch.manual_seed repeats it
    seed %= 2**64
    return torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64)  # the same 64 bits, signed


def small_head_dropout_mask(shape: Sequence[int], dropout_p: float, seed: int) -> torch.Tensor:
    """The keep mask ``(..., T, T)`` (bool) that ``small_head_attention`` on q of ``shape`` ``(..., T, hs)`` applies
    with this ``dropout_p`` and ``seed``: kept weights are scaled by 1 / (1 - dropout_p), the others are 0. The kernel
    rounds ``dropout_p`` to a multiple of 2^-16 (0.1 runs at 0.100006)."""
    *lead, length, _ = shape
    seed_tensor = _seed(dropout_p, seed)
    if seed_tensor is None:
        return torch.ones(*lead, length, length, dtype=torch.bool)
    if not small_head_kernel_available():
        raise RuntimeError(f"small-head attention kernel unavailable: {attention_kernel.failure()}")
    mask = torch.ops.simmtm.small_head_dropout_mask(math.prod(lead), length, dropout_p, seed_tensor)
    return mask.reshape(*lead, length, length)


def small_head_kernel_available() -> bool:
    """True once the kernel's operators are built and loaded (built on the first call); False, with one warning, if
    they cannot be (no compiler): ``attention`` then takes ``scaled_dot_product_attention``."""
    return attention_kernel.load()
