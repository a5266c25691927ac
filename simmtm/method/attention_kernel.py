"""The small-head attention kernel as torch operators: built from ``attention_kernel.cpp`` on first use by torch's
extension tooling, then given its autograd formulas and fake (meta) implementations here.

The operators (schemas in ``attention_kernel.cpp``; ``simmtm.method.attention`` is the module that calls them)::

    torch.ops.simmtm.small_head_attention(q, k, v, dropout_p, seed) -> (out, lse)         # (A, B, T, E) each
    torch.ops.simmtm.small_head_attention_packed(qkv, dropout_p, seed) -> (out, lse)      # qkv (N, T, 3, h, E)
    torch.ops.simmtm.small_head_attention_backward / small_head_attention_packed_backward  # what autograd calls
    torch.ops.simmtm.small_head_dropout_mask(problems, length, dropout_p, seed) -> (P, T, T) bool   # for tests

``seed`` is a one-element int64 tensor (its bits read as unsigned), None without dropout: a tensor, so that
torch.compile traces the draw that makes it instead of breaking the graph on it. ``out`` is laid out (A, T, B, E),
``lse`` (A, B, T) holds the log-sum-exp of each row of scores, from which the backward pass recomputes the weights.

The build: ``torch.utils.cpp_extension.load`` into torch's extension folder (``TORCH_EXTENSIONS_DIR`` moves it),
from a copy of the source kept there (one path wherever simmtm is installed or unpacked), one build per CPU kind,
since it is compiled for the CPU that runs it (-march=native; the extension's name carries a hash of the CPU's
flags). ninja rebuilds only when the source or the flags change, and torch's lock file makes parallel workers wait
for one build. If it fails (no compiler, no ninja) ``load()`` says so in one warning and
returns False, and the caller stays on torch's kernel.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

__all__ = ["failure", "load", "loaded"]

log = logging.getLogger(__name__)

# -ffast-math lets the compiler vectorise the max/sum reductions (it reorders them: differences of float rounding);
# only the compile step sees it (not the link step, where GCC would add code that flushes denormals process-wide).
# -march=native because the library is built on the machine that runs it.
_CFLAGS = ["-O3", "-march=native", "-ffast-math"]
if platform.machine() in ("x86_64", "AMD64"):
    _CFLAGS.append("-mprefer-vector-width=512")  # AVX-512 where there is any: GCC prefers 256-bit vectors otherwise
# at::parallel_for is a header template around "#pragma omp parallel" when torch uses OpenMP (its CPU builds on
# Linux do): without -fopenmp the pragma is dropped and the kernel runs on one thread.
_OPENMP = ["-fopenmp"] if torch.backends.openmp.is_available() and platform.system() == "Linux" else []

_loaded = False
_error: str | None = None
_lock = threading.Lock()


def load() -> bool:
    """Build (first use on this machine) and load the kernel's operators; False, with one warning, if they cannot be."""
    global _loaded, _error
    if _loaded or _error is not None:
        return _loaded
    with _lock:
        if not _loaded and _error is None:
            try:
                _build()
                _register()
                _loaded = True
            except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as exc:
                lines = str(exc).strip().splitlines() or [repr(exc)]
                _error = lines[-1][-500:]
                log.warning("small-head attention kernel unavailable (%s); using scaled_dot_product_attention", _error)
    return _loaded


def loaded() -> bool:
    """Whether the kernel's operators are loaded (never builds them)."""
    return _loaded


def failure() -> str | None:
    """Why the kernel could not be built or loaded (None if it was, or was not tried yet)."""
    return _error


def _build() -> None:
    from torch.utils import cpp_extension

    cpu = hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()  # as torch's load() does
    with _ninja_on_path():
        cpp_extension.load(
            name=f"simmtm_attention_{cpu}",
            sources=[str(_stable_source(root))],
            extra_cflags=_CFLAGS + _OPENMP,
            extra_ldflags=_OPENMP,
            is_python_module=False,
        )


def _stable_source(root: str) -> Path:
    """The kernel's source, copied once per content to a path that does not depend on where simmtm is installed.

    ninja rebuilds when a command changes, and the compile command names the source file: a package unpacked at a
    new path per Ray job and node (``ray job submit --working-dir``) rebuilt the kernel in every trial process, each
    node's path undoing the other's build. ``root``: torch's extension folder."""
    text = importlib.resources.files(__package__).joinpath("attention_kernel.cpp").read_bytes()
    path = Path(root) / "simmtm_sources" / f"attention_kernel_{hashlib.sha256(text).hexdigest()[:12]}.cpp"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(text)
        os.replace(partial, path)  # atomic: a process building beside this one never reads half a file
    return path


class _ninja_on_path:
    """torch's tooling runs ``ninja`` from PATH; the ninja wheel (a dependency) installs it beside the interpreter,
    which is not on PATH when the environment is not activated. Added for the build only."""

    def __enter__(self) -> None:
        self.path = os.environ.get("PATH", "")
        here = str(Path(sys.executable).parent)
        if shutil.which("ninja") is None and shutil.which("ninja", path=here) is not None:
            os.environ["PATH"] = os.pathsep.join([here, self.path])

    def __exit__(self, *exc: object) -> None:
        os.environ["PATH"] = self.path


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- autograd formulas and fake implementations --------------------------------------------------------------


def _register() -> None:
    ops = "simmtm::small_head_attention"
    torch.library.register_fake(ops, _fake_forward)
    torch.library.register_fake(f"{ops}_packed", _fake_packed)
    torch.library.register_fake(f"{ops}_backward", _fake_backward)
    torch.library.register_fake(f"{ops}_packed_backward", _fake_packed_backward)
    torch.library.register_fake("simmtm::small_head_dropout_mask", _fake_mask)
    torch.library.register_autograd(ops, _backward, setup_context=_setup)
    torch.library.register_autograd(f"{ops}_packed", _packed_backward, setup_context=_setup_packed)


def _output_like(q: torch.Tensor) -> torch.Tensor:
    """``(A, B, T, E)`` laid out as ``(A, T, B, E)``, as the kernel writes its output."""
    a, b, t, e = q.shape
    return q.new_empty(a, t, b, e).transpose(1, 2)


def _fake_forward(q, k, v, dropout_p=0.0, seed=None):
    return _output_like(q), q.new_empty(q.shape[:-1])


def _fake_packed(qkv, dropout_p=0.0, seed=None):
    q = qkv.select(2, 0).transpose(1, 2)  # (N, h, T, E)
    return _output_like(q), q.new_empty(q.shape[:-1])


def _fake_backward(grad_out, q, k, v, out, lse, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _fake_packed_backward(grad_out, qkv, out, lse, dropout_p, seed):
    return qkv.new_empty(qkv.shape)


def _fake_mask(problems, length, dropout_p, seed):
    return seed.new_empty(problems, length, length, dtype=torch.bool)


def _setup(ctx, inputs, output) -> None:
    q, k, v, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.dropout_p = dropout_p  # with the seed, the backward pass regenerates the same dropout mask


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    grads = torch.ops.simmtm.small_head_attention_backward(grad_out, q, k, v, out, lse, ctx.dropout_p, seed)
    return *grads, None, None


def _setup_packed(ctx, inputs, output) -> None:
    qkv, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, out, lse, seed)
    ctx.dropout_p = dropout_p


def _packed_backward(ctx, grad_out, _grad_lse):
    qkv, out, lse, seed = ctx.saved_tensors
    grad = torch.ops.simmtm.small_head_attention_packed_backward(grad_out, qkv, out, lse, ctx.dropout_p, seed)
    return grad, None, None
