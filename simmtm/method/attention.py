"""Softmax self-attention, ``(N, h, T, hs)`` in and out, on the fastest exact kernel for the shape and device.

* Small heads (hs < 8) on the CPU, float32: a C kernel of our own (``attention_kernel.c``), compiled on first
  use with the system's C compiler. torch's fused CPU kernel (``scaled_dot_product_attention``) is built for heads of
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
for benchmarks and for a machine without a C compiler (where "auto" falls back to it by itself, with one warning).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import logging
import math
import os
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "KERNEL",
    "PAD_HEADS",
    "SMALL_HEAD_LIMIT",
    "attention",
    "small_head_attention",
    "small_head_dropout_mask",
    "small_head_kernel_available",
]

log = logging.getLogger(__name__)

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
    piece (no copies of q, k, v or of their gradients); the values are the same as without it.
    """
    size = q.shape[-1]
    mask = None if keys is None else keys[:, None, None, :]  # (N, 1, 1, T): broadcast over heads and queries
    if pad is None and mask is None and _small_head_applies(q, k, v):
        if packed is not None and _is_split_of(packed, q, k, v):
            return _PackedSmallHeadAttention.apply(packed, _Dropout.draw(dropout_p))
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
        and small_head_kernel_available()
    )


def _is_split_of(packed: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if packed.dim() != 5 or packed.shape[2] != 3 or packed.stride(-1) != 1:
        return False
    views = packed.permute(2, 0, 3, 1, 4)
    return all(
        a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
        for a, b in zip(views, (q, k, v), strict=True)
    )


# --- the small-head kernel -------------------------------------------------------------------------------------


def small_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0, seed: int | None = None
) -> torch.Tensor:
    """Exact softmax self-attention for float32 CPU tensors ``(..., T, hs)`` with hs < 8, on the C kernel.

    ``dropout_p``: dropout on the attention weights, with the mask ``small_head_dropout_mask(q.shape, dropout_p,
    seed)``; ``seed`` None draws one from torch's default generator (``torch.manual_seed`` repeats it)."""
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (q, k, v)):
        raise ValueError("small_head_attention takes float32 CPU tensors only")
    if q.shape[-1] >= SMALL_HEAD_LIMIT:
        raise ValueError(f"small_head_attention takes heads below {SMALL_HEAD_LIMIT}, got head size {q.shape[-1]}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"small_head_attention needs q, k, v of equal shapes, got {q.shape}, {k.shape}, {v.shape}")
    return _SmallHeadAttention.apply(q, k, v, _Dropout.draw(dropout_p, seed))


def _as_problems(t: torch.Tensor) -> torch.Tensor:
    """``(..., T, hs)`` as ``(A, B, T, hs)`` with a unit-stride last dimension: the kernel reads it in place (a copy
    only where the last dimension is strided, or where other leading dimensions cannot be merged into a view)."""
    if t.dim() != 4:
        t = t.reshape(-1, 1, *t.shape[-2:])
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _new_output(like: torch.Tensor) -> torch.Tensor:
    """An ``(A, B, T, hs)`` tensor laid out as ``(A, T, B, hs)``: for (N, h, T, hs) attention, merging the heads
    back into (N, T, h * hs) is then a view, not a copy."""
    a, b, t, e = like.shape
    return like.new_empty(a, t, b, e).transpose(1, 2)


class _Dropout(NamedTuple):
    """A call's attention dropout: its seed, and the 16-bit draw below which a weight is dropped (0: no dropout;
    so dropout is rounded to a multiple of 2^-16, 0.1 runs at 0.100006)."""

    seed: int
    threshold: int

    @classmethod
    def draw(cls, p: float, seed: int | None = None) -> _Dropout:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {p}")
        if p == 0.0:
            return cls(0, 0)
        if seed is None:
            seed = int(torch.randint(2**62, ()))  # from torch's default generator: torch.manual_seed repeats it
        return cls(seed % 2**64, min(max(1, round(p * 2**16)), 2**16 - 1))


def small_head_dropout_mask(shape: Sequence[int], dropout_p: float, seed: int) -> torch.Tensor:
    """The keep mask ``(..., T, T)`` (bool) that ``small_head_attention`` on q of ``shape`` ``(..., T, hs)`` applies
    with this ``dropout_p`` and ``seed``: kept weights are scaled by 1 / (1 - dropout_p), the others are 0."""
    *lead, length, _ = shape
    problems = math.prod(lead)
    dropout = _Dropout.draw(dropout_p, seed)
    mask = torch.ones(problems, length, length)
    if dropout.threshold:
        _library().small_attention_dropout_mask(mask.data_ptr(), 0, problems, length, *dropout)
    return mask.bool().reshape(*lead, length, length)


class _SmallHeadAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: _Dropout) -> torch.Tensor:
        shape = q.shape
        q, k, v = (_as_problems(t) for t in (q, k, v))
        out = _new_output(q)
        lse = q.new_empty(q.shape[:-1])  # (A, B, T): log-sum-exp of each row of scores, for the backward pass
        _run("forward", dropout, q, k, v, out, lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.dropout = dropout  # the backward pass regenerates the same mask from it
        return out.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        shape = grad_out.shape
        grad_out = _as_problems(grad_out.reshape(q.shape))
        dq, dk, dv = (t.new_empty(t.shape) for t in (q, k, v))
        _run("backward", ctx.dropout, q, k, v, out, lse, grad_out, dq, dk, dv)
        return dq.view(shape), dk.view(shape), dv.view(shape), None


class _PackedSmallHeadAttention(torch.autograd.Function):
    """The same kernel on ``(N, T, 3, h, hs)``: reads q, k, v in place, writes their gradient into one tensor."""

    @staticmethod
    def forward(ctx, packed: torch.Tensor, dropout: _Dropout) -> torch.Tensor:
        q, k, v = packed.permute(2, 0, 3, 1, 4)  # 3 x (N, h, T, hs), views
        out = _new_output(q)
        lse = q.new_empty(q.shape[:-1])
        _run("forward", dropout, q, k, v, out, lse)
        ctx.save_for_backward(packed, out, lse)
        ctx.dropout = dropout
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        packed, out, lse = ctx.saved_tensors
        grad = torch.empty_like(packed, memory_format=torch.contiguous_format)
        q, k, v = packed.permute(2, 0, 3, 1, 4)
        _run("backward", ctx.dropout, q, k, v, out, lse, _as_problems(grad_out), *grad.permute(2, 0, 3, 1, 4))
        return grad, None


_BLOCKS_PER_THREAD = 8


def _run(direction: str, dropout: _Dropout, *tensors: torch.Tensor) -> None:
    """Split the problems across torch's thread count; the C call releases the GIL.

    ``tensors``: q, k, v, out, lse (forward), then grad_out, dq, dk, dv (backward); all ``(A, B, T, hs)`` with a
    unit-stride last dimension, except lse, a contiguous ``(A, B, T)``.
    """
    lib = _library()
    q = tensors[0]
    heads, length, size = q.shape[1:]
    problems = q.shape[0] * heads
    if problems == 0 or length == 0:
        return
    fn = lib.small_attention_forward if direction == "forward" else lib.small_attention_backward
    strided = [t for i, t in enumerate(tensors) if i != 4]  # every tensor but lse
    assert all(t.shape == q.shape and (t.stride(-1) == 1 or size == 1) for t in strided)
    assert tensors[4].is_contiguous()
    strides = (ctypes.c_long * (3 * len(strided)))(*(s for t in strided for s in t.stride()[:3]))
    pointers = [t.data_ptr() for t in tensors]
    threads = max(1, min(torch.get_num_threads(), problems))
    # A few blocks per thread, handed out as threads free up: on a shared machine one descheduled thread does not
    # leave the others waiting at the end with half of its work still to do.
    step = -(-problems // (threads * _BLOCKS_PER_THREAD)) if threads > 1 else problems
    ranges = [(start, min(problems, start + step)) for start in range(0, problems, step)]
    calls = [(size, *pointers, strides, heads, start, stop, length, size**-0.5, *dropout) for start, stop in ranges]
    if len(calls) == 1:
        codes = [fn(*calls[0])]
    else:
        codes = list(_pool(threads).map(lambda args: fn(*args), calls))
    if any(codes):
        raise RuntimeError(f"small-head attention kernel failed (codes {codes}) for head size {size}")


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="simmtm-attention")
    return _pools[workers]


# --- building the C kernel -------------------------------------------------------------------------------------

# -ffast-math lets the compiler vectorise the max/sum reductions (it reorders them: differences of float rounding);
# -march=native because the library is built on the machine that runs it (its name carries the CPU's flags).
_CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-shared", "-fPIC"]
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


def small_head_kernel_available() -> bool:
    """True once the C kernel is built and loaded (built on the first call); False, with a warning, if it cannot be."""
    try:
        _library()
    except RuntimeError:
        return False
    return True


def _library() -> ctypes.CDLL:
    global _lib, _lib_error
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = _load(_build())
            except (OSError, subprocess.SubprocessError) as exc:
                _lib_error = str(exc)
                log.warning(
                    "small-head attention kernel unavailable (%s); using scaled_dot_product_attention", _lib_error
                )
    if _lib is None:
        raise RuntimeError(f"small-head attention kernel unavailable: {_lib_error}")
    return _lib


def _build() -> Path:
    """Compile the kernel once per source, flags, compiler and CPU, into a cache folder (atomic: parallel workers)."""
    compiler = os.environ.get("CC", "cc")
    cpu = _cpu_flags()
    source_text = importlib.resources.files("simmtm.method").joinpath("attention_kernel.c").read_text()
    key = hashlib.sha256("\0".join([source_text, *_CFLAGS, compiler, cpu]).encode()).hexdigest()[:16]
    cache = Path(
        os.environ.get("SIMMTM_CACHE_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "simmtm")
    )
    target = cache / f"small_attention-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        source = Path(tmp) / "small_attention.c"
        source.write_text(source_text)
        built = Path(tmp) / target.name
        cmd = [compiler, *_CFLAGS, str(source), "-o", str(built)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"{compiler} exit {done.returncode}: {done.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    ptr, long_, float_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    seed, threshold = ctypes.c_uint64, ctypes.c_uint32
    lib.small_attention_forward.argtypes = [ctypes.c_int, *[ptr] * 6, *[long_] * 4, float_, seed, threshold]
    lib.small_attention_backward.argtypes = [ctypes.c_int, *[ptr] * 10, *[long_] * 4, float_, seed, threshold]
    lib.small_attention_forward.restype = lib.small_attention_backward.restype = ctypes.c_int
    lib.small_attention_dropout_mask.argtypes = [ptr, long_, long_, long_, seed, threshold]
    lib.small_attention_dropout_mask.restype = None
    return lib
