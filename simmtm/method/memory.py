"""Keeping a CPU training step's memory down without changing its numbers.

* ``Dropout``: ``nn.Dropout`` that saves a one-byte mask for the backward pass instead of a float32 one.
* ``return_freed_memory``: make glibc's malloc give large freed blocks back to the system at once, so that a step's
  peak resident memory is what its tensors need rather than that plus what earlier steps left fragmented.
  ``apply_malloc_setting`` is how a run applies the config's ``return_freed_memory`` (on by default on the CPU).

Measured at the paper's ETTh1 configuration with the official projector (docs/benchmarks.md, "Peak memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Literal

import torch
from torch import nn

__all__ = ["MMAP_THRESHOLD", "Dropout", "apply_malloc_setting", "return_freed_memory"]

log = logging.getLogger(__name__)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the same values, gradients and random stream, and a quarter of the saved memory on a CPU.

    On the CPU, torch's ``dropout`` draws a float32 noise tensor, scales it and keeps it for the backward pass (4 bytes
    per element); ``native_dropout``, the kernel torch itself uses on GPUs, draws the same Bernoulli numbers from the
    same generator and keeps a bool mask (1 byte). At the paper's ETTh1 configuration that is 250 MB of saved
    activations down to 63 MB a step (tests/test_memory.py checks values, gradients and the generator's state).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0.0 < self.p < 1.0 and not self.inplace:
            return torch.native_dropout(x, self.p, True)[0]
        return super().forward(x)


# Blocks of at least this size are mmap-ed by malloc and unmapped when freed (glibc's default starts at 128 KiB and
# rises with every freed mmap-ed block, up to 32 MiB; from then on a training step's 5-60 MB tensors come from the
# heap, where freed space is reused only in part: +0.5-0.6 GB of resident memory at the paper's ETTh1 config).
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (which also stops it from rising). True if it was set;
    False (and nothing changes) on a C library without ``mallopt``, e.g. musl or macOS."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("mallopt not available (%s): malloc's mmap threshold left as it is", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def apply_malloc_setting(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """Apply a run's ``return_freed_memory`` setting; True if the mmap threshold is now fixed by it.

    ``auto`` turns it on for a run on the CPU, unless ``MALLOC_MMAP_THRESHOLD_`` in the environment already chose a
    threshold (glibc read it at start-up). On a GPU host memory holds no activations, so ``auto`` leaves malloc
    alone. The setting is the process's from then on (glibc has no way back to its rising threshold), so a fine-tune
    that follows in the same process keeps it; ``return_freed_memory: false`` leaves malloc as it is.
    """
    if setting == "auto":
        setting = device.type == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    if not setting:
        return False
    applied = return_freed_memory()
    log.debug(
        "malloc's mmap threshold %s at %d bytes", "fixed" if applied else "not fixed (no mallopt)", MMAP_THRESHOLD
    )
    return applied
