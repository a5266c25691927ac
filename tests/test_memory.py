"""simmtm.method.memory: the lean dropout gives torch's values, gradients and random stream with a one-byte saved mask; the
malloc setting takes effect where glibc has it, and a CPU run applies it unless its config says not to."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from simmtm.config.schema import parse_config
from simmtm.errors import ConfigError
from simmtm.method.memory import Dropout, apply_malloc_setting, return_freed_memory


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes that autograd keeps for the backward pass of ``fn(x)`` (each storage counted once, x itself excluded)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_lean_dropout_equals_torch_dropout_in_values_gradients_and_random_stream(p: float) -> None:
    x = torch.randn(6, 50, 8, requires_grad=True)
    grad = torch.randn(6, 50, 8)
    results = []
    for module in (nn.Dropout(p), Dropout(p)):
        torch.manual_seed(3)
        out = module(x)
        (g,) = torch.autograd.grad(out, x, grad)
        results.append((out, g, torch.rand(4)))  # the next draw: the generator advanced alike
    (ref, ref_grad, ref_next), (ours, our_grad, our_next) = results
    assert torch.equal(ours, ref) and torch.equal(our_grad, ref_grad) and torch.equal(our_next, ref_next)
    assert 0 < (ours == 0).float().mean() < 1  # it did drop something


def test_lean_dropout_saves_a_quarter_of_the_memory_and_is_the_identity_where_torchs_is() -> None:
    x = torch.randn(64, 100, requires_grad=True)
    torch_bytes, lean_bytes = saved_bytes(nn.Dropout(0.1), x), saved_bytes(Dropout(0.1), x)
    assert torch_bytes == 4 * x.numel() and lean_bytes == x.numel()  # float32 noise against a bool mask
    for module in (Dropout(0.0), Dropout(0.3).eval()):
        assert module(x) is x or torch.equal(module(x), x)
    torch.manual_seed(0)
    assert torch.equal(Dropout(1.0)(x), nn.Dropout(1.0)(x))  # p = 1: torch's own path


def test_transformer_layers_use_the_lean_dropout() -> None:
    from simmtm.config.schema import ModelConfig
    from simmtm.method.encoders import build_encoder

    encoder = build_encoder(ModelConfig(encoder="transformer", d_model=8, n_heads=2, n_layers=2, d_ff=16), in_channels=1, seq_len=12)
    kinds = {type(m) for m in encoder.modules() if isinstance(m, nn.Dropout)}
    assert kinds == {Dropout}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_return_freed_memory_sets_glibcs_mmap_threshold() -> None:
    assert return_freed_memory(32 * 1024 * 1024)  # glibc's own maximum: what a long run reaches anyway


def test_return_freed_memory_is_auto_true_or_false_in_a_run_config() -> None:
    data = {"name": "ETTh1"}
    assert parse_config({"data": data}).return_freed_memory == "auto"
    assert parse_config({"data": data, "return_freed_memory": False}).return_freed_memory is False
    with pytest.raises(ConfigError, match="return_freed_memory: Input should be 'auto', True or False"):
        parse_config({"data": data, "return_freed_memory": "sometimes"})


def test_auto_leaves_malloc_alone_on_a_gpu_and_where_the_environment_chose_a_threshold(monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert apply_malloc_setting("auto", torch.device("cuda")) is False
    assert apply_malloc_setting(False, torch.device("cpu")) is False
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert apply_malloc_setting("auto", torch.device("cpu")) is False


# In a fresh process: free a 16 MiB block (glibc's default then raises its mmap threshold to 16 MiB), pre-train the
# tiny config through simmtm.train.pretraining.run, then ask whether a new 8 MiB block is mmap-ed (mallinfo2's hblks).
PROBE = """
import ctypes, json, sys
from simmtm.train import pretraining as pretrain
from simmtm.config.schema import parse_config


class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2
libc.free(libc.malloc(16 << 20))
pretrain.run(parse_config(json.loads(sys.argv[1])))
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


@pytest.mark.slow  # two pre-trainings in fresh interpreters: 10-45 s
@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's mallopt and mallinfo2")
def test_pretraining_on_the_cpu_makes_malloc_return_large_freed_blocks(tiny_config, monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    root = str(Path(__file__).resolve().parent.parent)
    mmapped = {}
    for setting in ("auto", False):
        raw = yaml.safe_load(yaml.safe_dump(tiny_config({})))  # plain data for JSON
        raw["return_freed_memory"] = setting
        done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(raw)], capture_output=True, text=True,
                              cwd=root, check=True, env={**os.environ, "PYTHONPATH": root})
        mmapped[setting] = int(done.stdout.strip().splitlines()[-1])
    assert mmapped == {"auto": 1, False: 0}  # default glibc would serve the block from the heap


def test_flush_denormal_auto_flushes_on_the_cpu_and_false_does_not() -> None:
    from simmtm.train.shared import apply_denormal_setting

    torch.set_flush_denormal(False)  # an earlier run in this thread may have set it (the flag is the thread's)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32 (created while nothing flushes)
    try:
        apply_denormal_setting("auto", torch.device("cpu"))
        assert (tiny * 1.0).item() == 0.0
        apply_denormal_setting(False, torch.device("cpu"))
        assert (tiny * 1.0).item() > 0.0
        apply_denormal_setting("auto", torch.device("cuda"))  # a GPU run leaves the host's setting as it is
        assert (tiny * 1.0).item() > 0.0
    finally:
        torch.set_flush_denormal(False)
