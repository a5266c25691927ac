"""Softmax self-attention, ``(N, h, T, hs)`` in and out, on the fastest exact kernel for the shape and device.

* Small heads (hs < 8) on the CPU, float32, no attention dropout: a C kernel of our own (below), compiled on first
  use with the system's C compiler. torch's fused CPU kernel (``scaled_dot_product_attention``) is built for heads of
  64-128; at the paper's ETTh1 shape (7,168 problems a layer of 336 x 336 with heads of size 2) it spends its time on
  per-block overhead, and it took 88 % of a pre-training step. Ours handles one problem per thread at a time, one row
  of scores at a time: the scores never leave L1, memory stays linear in T, and the backward pass recomputes the
  probabilities from the saved log-sum-exp (one exponential per score in each direction, as flash attention does).
  It reads q, k, v in place through strides (with ``packed=``, straight out of the fused q/k/v projection, whose
  gradient it writes in one piece) and lays its output out as (N, T, h, hs), so merging the heads is a view.
* Everything else: ``F.scaled_dot_product_attention``, with small heads zero-padded on a GPU (see ``PAD_HEADS``).

``KERNEL = "sdpa"`` (or the environment variable ``SIMMTM_ATTENTION=sdpa``) forces the reference kernel everywhere,
for benchmarks and for a machine without a C compiler (where "auto" falls back to it by itself, with one warning).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "KERNEL",
    "PAD_HEADS",
    "SMALL_HEAD_LIMIT",
    "attention",
    "small_head_attention",
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
# A switch for benchmarks: simmtm.attention.PAD_HEADS = False.
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
    if pad is None and mask is None and _small_head_applies(q, k, v, dropout_p):
        if packed is not None and _is_split_of(packed, q, k, v):
            return _PackedSmallHeadAttention.apply(packed)
        return small_head_attention(q, k, v)
    if pad is None:
        pad = PAD_HEADS and q.is_cuda and size % _HEAD_MULTIPLE != 0
    if not pad:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    extra = -size % _HEAD_MULTIPLE
    q, k, v = (F.pad(t, (0, extra)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=size**-0.5)[..., :size]


def _small_head_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    return (
        KERNEL == "auto"
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and q.shape[-1] < SMALL_HEAD_LIMIT
        and q.shape == k.shape == v.shape
        and dropout_p == 0.0
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


def small_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact softmax self-attention for float32 CPU tensors ``(..., T, hs)`` with hs < 8, on the C kernel."""
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (q, k, v)):
        raise ValueError("small_head_attention takes float32 CPU tensors only")
    if q.shape[-1] >= SMALL_HEAD_LIMIT:
        raise ValueError(f"small_head_attention takes heads below {SMALL_HEAD_LIMIT}, got head size {q.shape[-1]}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"small_head_attention needs q, k, v of equal shapes, got {q.shape}, {k.shape}, {v.shape}")
    return _SmallHeadAttention.apply(q, k, v)


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


class _SmallHeadAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shape = q.shape
        q, k, v = (_as_problems(t) for t in (q, k, v))
        out = _new_output(q)
        lse = q.new_empty(q.shape[:-1])  # (A, B, T): log-sum-exp of each row of scores, for the backward pass
        _run("forward", q, k, v, out, lse)
        ctx.save_for_backward(q, k, v, out, lse)
        return out.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        shape = grad_out.shape
        grad_out = _as_problems(grad_out.reshape(q.shape))
        dq, dk, dv = (t.new_empty(t.shape) for t in (q, k, v))
        _run("backward", q, k, v, out, lse, grad_out, dq, dk, dv)
        return dq.view(shape), dk.view(shape), dv.view(shape)


class _PackedSmallHeadAttention(torch.autograd.Function):
    """The same kernel on ``(N, T, 3, h, hs)``: reads q, k, v in place, writes their gradient into one tensor."""

    @staticmethod
    def forward(ctx, packed: torch.Tensor) -> torch.Tensor:
        q, k, v = packed.permute(2, 0, 3, 1, 4)  # 3 x (N, h, T, hs), views
        out = _new_output(q)
        lse = q.new_empty(q.shape[:-1])
        _run("forward", q, k, v, out, lse)
        ctx.save_for_backward(packed, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        packed, out, lse = ctx.saved_tensors
        grad = torch.empty_like(packed, memory_format=torch.contiguous_format)
        _run("backward", *packed.permute(2, 0, 3, 1, 4), out, lse, _as_problems(grad_out), *grad.permute(2, 0, 3, 1, 4))
        return grad


_BLOCKS_PER_THREAD = 8


def _run(direction: str, *tensors: torch.Tensor) -> None:
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
    calls = [(size, *pointers, strides, heads, start, stop, length, size**-0.5) for start, stop in ranges]
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

_C_SOURCE = r"""
/* Softmax attention for heads of size E < 8, one problem (T x E) at a time. Every tensor is read or written in place
   through strides (in elements; the last dimension has stride 1): problem p = (b, h) with b = p / H, h = p % H starts
   at b * S[0] + h * S[1] and its rows are S[2] apart, so the (N, T, 3, h, E) output of the fused q/k/v projection is
   read without copies and the output is written as (N, T, h, E), where the head merge is a view. lse is (P, T).
   Each problem's k and v are transposed to (E, T) so that every loop over the T keys is unit-stride and vectorises;
   E is a compile-time constant in each specialisation (always_inline + a literal), so the loops over E unroll. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define AT(x, S, p, H) ((x) + ((p) / (H)) * (S)[0] + ((p) % (H)) * (S)[1])

/* exp(x) for x <= 0 (every softmax argument here, after the row maximum or the log-sum-exp is subtracted):
   2^n * p(r), |r| <= ln2/2, a degree-7 Taylor polynomial (truncation error < 2e-8, below float rounding); flushed
   to 2^-126 below -87 (the reference gives 0 there: a difference far below any tolerance). Written inline so that the
   loops around it vectorise without a call per vector. */
INLINE float exp_le0(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720; p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6;
    p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    union { float f; int i; } u = { p };
    u.i += (int)n << 23;
    return u.f;
}

INLINE void transpose(const float *x, long rs, float *xt, long T, const int E) {  /* (T, E), row stride rs -> (E, T) */
    for (long j = 0; j < T; j++)
        for (int d = 0; d < E; d++) xt[d * T + j] = x[j * rs + d];
}

/* S: the strides of q, k, v, o (3 each). */
INLINE void forward(const float *q, const float *k, const float *v, float *o, float *lse, const long *S, long H,
                    long p0, long p1, long T, float scale, float *buf, const int E) {
    float *kT = buf, *vT = buf + E * T, *s = buf + 2 * E * T;
    const long *Sq = S, *Sk = S + 3, *Sv = S + 6, *So = S + 9;
    for (long p = p0; p < p1; p++) {
        const float *qp = AT(q, Sq, p, H);
        float *op = AT(o, So, p, H);
        transpose(AT(k, Sk, p, H), Sk[2], kT, T, E);
        transpose(AT(v, Sv, p, H), Sv[2], vT, T, E);
        for (long i = 0; i < T; i++) {
            float qs[8], acc[8], m = -FLT_MAX, l = 0.0f;
            for (int d = 0; d < E; d++) { qs[d] = qp[i * Sq[2] + d] * scale; acc[d] = 0.0f; }
            for (long j = 0; j < T; j++) {  /* scores of row i and their maximum */
                float x = 0.0f;
                for (int d = 0; d < E; d++) x += qs[d] * kT[d * T + j];
                s[j] = x;
                m = x > m ? x : m;
            }
            for (long j = 0; j < T; j++) {  /* unnormalised probabilities, their sum, and p @ v */
                float e = exp_le0(s[j] - m);
                l += e;
                for (int d = 0; d < E; d++) acc[d] += e * vT[d * T + j];
            }
            for (int d = 0; d < E; d++) op[i * So[2] + d] = acc[d] / l;
            lse[p * T + i] = m + __builtin_logf(l);
        }
    }
}

/* dS = P * (dO v^T - rowsum(dO * O)); dq = scale dS k, dk = scale dS^T q, dv = P^T dO. Row by row: dq is a reduction
   over the keys, dk and dv are accumulated over the rows in (E, T) buffers of the problem.
   S: the strides of q, k, v, o, go, dq, dk, dv (3 each). */
INLINE void backward(const float *q, const float *k, const float *v, const float *o, const float *lse,
                     const float *go, float *dq, float *dk, float *dv, const long *S, long H, long p0, long p1, long T,
                     float scale, float *buf, const int E) {
    float *kT = buf, *vT = buf + E * T, *dkT = buf + 2 * E * T, *dvT = buf + 3 * E * T;
    float *prob = buf + 4 * E * T, *ds = prob + T;
    const long *Sq = S, *Sk = S + 3, *Sv = S + 6, *So = S + 9, *Sg = S + 12, *Sdq = S + 15, *Sdk = S + 18,
               *Sdv = S + 21;
    for (long p = p0; p < p1; p++) {
        const float *qp = AT(q, Sq, p, H), *op = AT(o, So, p, H), *gp = AT(go, Sg, p, H);
        float *dqp = AT(dq, Sdq, p, H), *dkp = AT(dk, Sdk, p, H), *dvp = AT(dv, Sdv, p, H);
        transpose(AT(k, Sk, p, H), Sk[2], kT, T, E);
        transpose(AT(v, Sv, p, H), Sv[2], vT, T, E);
        memset(dkT, 0, sizeof(float) * 2 * E * T);  /* dkT and dvT */
        for (long i = 0; i < T; i++) {
            const float *qi = qp + i * Sq[2], *gi = gp + i * Sg[2], *oi = op + i * So[2];
            float qs[8], g[8], rowdot = 0.0f, li = lse[p * T + i];
            for (int d = 0; d < E; d++) { qs[d] = qi[d] * scale; g[d] = gi[d]; rowdot += gi[d] * oi[d]; }
            for (long j = 0; j < T; j++) {
                float x = 0.0f, y = 0.0f;
                for (int d = 0; d < E; d++) { x += qs[d] * kT[d * T + j]; y += g[d] * vT[d * T + j]; }
                float pj = exp_le0(x - li);
                prob[j] = pj;
                ds[j] = pj * (y - rowdot);
            }
            for (int d = 0; d < E; d++) {
                float acc = 0.0f;
                for (long j = 0; j < T; j++) {
                    acc += ds[j] * kT[d * T + j];
                    dkT[d * T + j] += ds[j] * qs[d];  /* qs already carries the scale of dk */
                    dvT[d * T + j] += prob[j] * g[d];
                }
                dqp[i * Sdq[2] + d] = acc * scale;
            }
        }
        for (long j = 0; j < T; j++)
            for (int d = 0; d < E; d++) { dkp[j * Sdk[2] + d] = dkT[d * T + j]; dvp[j * Sdv[2] + d] = dvT[d * T + j]; }
    }
}

#define FOR_EACH_SIZE(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FORWARD(E) case E: forward(q, k, v, o, lse, S, H, p0, p1, T, scale, buf, E); break;
#define BACKWARD(E) case E: backward(q, k, v, o, lse, go, dq, dk, dv, S, H, p0, p1, T, scale, buf, E); break;

int small_attention_forward(int E, const float *q, const float *k, const float *v, float *o, float *lse,
                            const long *S, long H, long p0, long p1, long T, float scale) {
    float *buf = malloc(sizeof(float) * (2 * E + 1) * T);
    if (!buf) return 1;
    int code = 0;
    switch (E) { FOR_EACH_SIZE(FORWARD) default: code = 2; }
    free(buf);
    return code;
}

int small_attention_backward(int E, const float *q, const float *k, const float *v, const float *o, const float *lse,
                             const float *go, float *dq, float *dk, float *dv, const long *S, long H, long p0,
                             long p1, long T, float scale) {
    float *buf = malloc(sizeof(float) * (4 * E + 2) * T);
    if (!buf) return 1;
    int code = 0;
    switch (E) { FOR_EACH_SIZE(BACKWARD) default: code = 2; }
    free(buf);
    return code;
}
"""

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
    key = hashlib.sha256("\0".join([_C_SOURCE, *_CFLAGS, compiler, cpu]).encode()).hexdigest()[:16]
    cache = Path(
        os.environ.get("SIMMTM_CACHE_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "simmtm")
    )
    target = cache / f"small_attention-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        source = Path(tmp) / "small_attention.c"
        source.write_text(_C_SOURCE)
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
    lib.small_attention_forward.argtypes = [ctypes.c_int, *[ptr] * 6, long_, long_, long_, long_, float_]
    lib.small_attention_backward.argtypes = [ctypes.c_int, *[ptr] * 10, long_, long_, long_, long_, float_]
    lib.small_attention_forward.restype = lib.small_attention_backward.restype = ctypes.c_int
    return lib
