"""What pre-training and fine-tuning share: the run directory, precision and compilation, the random state of a
resumable run, and ``Loop``, which runs the optimiser steps of one epoch.

``Loop`` waits for the device only every ``log_every`` steps and at an epoch's end: each step's loss parts (and
gradient norm) stay on the device until then and are read in one transfer. Then every step is written to
TensorBoard and checked: a non-finite loss raises ``TrainingDiverged`` naming the step where it first appeared.
The steps between that step and the read ran on broken weights, which no checkpoint ever holds, because the loops
save a checkpoint only after an epoch's final read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from simmtm.config.schema import RunConfig, dump_config
from simmtm.errors import UserError
from simmtm.method.attention import small_head_kernel_available
from simmtm.method.encoders import uses_small_heads
from simmtm.method.memory import apply_malloc_setting
from simmtm.train.history import RunLog, StepLog, progress_bar
from simmtm.train.runtime import Runtime

__all__ = [
    "TrainingDiverged",
    "apply_denormal_setting",
    "Loop",
    "LossParts",
    "set_up",
    "prepare_model",
    "autocast",
    "open_run_dir",
    "rng_states",
    "restore_rng_states",
]

log = logging.getLogger(__name__)

LossParts = Mapping[str, torch.Tensor]  # scalar losses of one batch; "loss" is the one minimised


class TrainingDiverged(UserError):
    """The loss became NaN or infinite. A config change fixes it (hence a UserError), but it is not bad input:
    the CLI exits with ``exit_code`` 3, and the checkpoints of the finished epochs are kept."""

    exit_code = 3


# --- set-up --------------------------------------------------------------------------------------------------


def set_up(config: RunConfig, runtime: Runtime) -> None:
    """The process-wide settings of a run: torch threads, malloc's handling of freed memory (``return_freed_memory``)
    and, on CUDA, whether float32 matmuls may use TF32."""
    if config.threads:
        torch.set_num_threads(config.threads)
    apply_malloc_setting(config.return_freed_memory, runtime.device)
    apply_denormal_setting(config.flush_denormal, runtime.device)
    if runtime.device.type == "cuda":
        _allow_tf32(config.precision == "tf32")


def apply_denormal_setting(setting: bool | Literal["auto"], device: torch.device) -> None:
    """Apply a run's ``flush_denormal``: ``auto`` flushes denormals on the CPU and leaves a GPU run's host as it is.
    The flag belongs to the calling thread (the run's), as the x86 MXCSR register it sets."""
    if setting == "auto":
        if device.type != "cpu":
            return
        setting = True
    torch.set_flush_denormal(setting)


def _allow_tf32(allowed: bool) -> None:
    matmul = torch.backends.cuda.matmul
    # torch swaps the cudnn module for a CudnnModule object at import; the names its stub declares lack `conv`
    cudnn: Any = torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy allow_tf32 flags must not be mixed with it
        mode = "tf32" if allowed else "ieee"
        matmul.fp32_precision = mode
        cudnn.conv.fp32_precision = mode
    else:
        matmul.allow_tf32 = allowed
        cudnn.allow_tf32 = allowed


def prepare_model(model: nn.Module, runtime: Runtime, *, compile: bool) -> nn.Module:
    """The module to call: ``model`` on the runtime's device (wrapped for data parallelism), compiled if asked.

    Keep ``model`` itself for state dicts: its keys carry neither DDP's ``module.`` nor compile's ``_orig_mod.``.
    """
    prepared = runtime.prepare_model(model)
    if not compile:
        return prepared
    if runtime.device.type == "cpu" and uses_small_heads(model):
        small_head_kernel_available()  # built and loaded before tracing, which cannot build it
    # CUDA graphs remove the launch overhead of the many small kernels of a step; on CPU they do not exist.
    compiled = torch.compile(prepared, mode="reduce-overhead" if runtime.device.type == "cuda" else None)
    # torch.compile's stub types the result as the callable it was given; a module comes back as an OptimizedModule
    return cast(nn.Module, compiled)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast for ``precision: bf16``, otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def open_run_dir(run_dir: str | Path | None, config: RunConfig, runtime: Runtime) -> Path | None:
    """The main worker's run directory, created, holding the resolved config; None on other workers."""
    if run_dir is None or not runtime.is_main:
        return None
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    dump_config(config, path / "config.yaml")
    return path


# --- the random state of a resumable run ----------------------------------------------------------------------
#
# The data order and the masks need no saved state: the loader's generator is re-seeded from (seed, epoch) at the
# start of every epoch and each step's masks from (seed, step), both fixed by the checkpoint's epoch and step.
# What carries over between epochs are the global generators (dropout draws from torch's), one set per worker.


def rng_states(runtime: Runtime) -> list[dict[str, Any]]:
    """Every worker's global random state (torch CPU, CUDA, numpy, Python), in rank order.

    A collective: every worker calls it. The result holds tensors and primitives only (``weights_only`` loads it).
    """
    numpy = np.random.get_state(legacy=True)
    assert isinstance(numpy, tuple)  # the global RandomState is an MT19937: its state is always the legacy tuple
    python = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy[1].astype(np.int64)),
            "pos": numpy[2],
            "has_gauss": numpy[3],
            "gauss": numpy[4],
        },
        "python": {"version": python[0], "internal": list(python[1]), "gauss_next": python[2]},
    }
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return runtime.all_gather_object(state)


def restore_rng_states(states: list[dict[str, Any]] | None, runtime: Runtime) -> None:
    """Set this worker's global random state from ``rng_states``'s list (saved by as many workers)."""
    if not states or len(states) != runtime.world_size:
        saved = len(states) if states else "no"
        log.warning(
            "the checkpoint holds %s random states for %d worker(s): resuming without them, so the run "
            "continues but not bit-identically",
            saved,
            runtime.world_size,
        )
        return
    state = states[runtime.rank]
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


# --- the loop ------------------------------------------------------------------------------------------------


@dataclass
class Loop:
    """Epochs of optimiser steps over one loader, each step recorded in a ``RunLog``."""

    model: nn.Module  # what is called: on the device, wrapped for data parallelism, compiled if asked
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    shuffle: torch.Generator  # the loader's generator, re-seeded from (seed, epoch) every epoch
    config: RunConfig
    runtime: Runtime
    run_log: RunLog
    stage: str  # names the run in messages and the progress bar: "pre-training", "fine-tuning h96"
    prefix: str  # TensorBoard prefix of the per-step scalars; epochs go under "<prefix>_epoch/"
    advice: str  # which key to change when the loss diverges
    total_steps: float  # the step budget
    grad_clip: float | None = None
    step_scheduler: LRScheduler | None = None  # stepped after every optimiser step; per-epoch ones are the caller's
    frozen: nn.Module | None = None  # kept in eval mode while the rest trains (a probe's encoder)
    step: int = 0
    progress: bool = False
    step_log: StepLog | None = None  # also takes every step's scalars (main worker only; a sweep trial's trackers)

    def __post_init__(self) -> None:
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        enabled = self.progress and self.runtime.is_main
        self.bar = progress_bar(self.total_steps, self.stage, initial=self.step, enabled=enabled)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def run_epoch(self, epoch: int, losses: Callable[[Any], LossParts]) -> dict[str, float]:
        """Train on the loader once (or on what is left of the step budget); the mean of each loss part.

        ``losses(batch)`` runs the forward pass (under the run's autocast) and returns the loss parts.
        """
        self._seed_epoch(epoch)
        self.model.train()
        if self.frozen is not None:
            self.frozen.eval()  # frozen: no dropout, no batch-statistics updates
        pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, parts + grad norm on the device)
        sums: dict[str, float] = {}
        names: list[str] = []
        steps = 0
        for batch in self.loader:
            lr = self.optimizer.param_groups[0]["lr"]
            # Before the forward pass, not after it: the last step's gradients (as large as the weights) would
            # otherwise be held through the forward pass, on top of its saved activations (-0.4 GB of peak at the
            # paper's ETTh1 config with the official projector; docs/benchmarks.md, "Peak memory").
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.config.precision, self.runtime.device):
                parts = losses(batch)
            parts["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or math.inf)
            self.optimizer.step()
            if self.step_scheduler is not None:
                self.step_scheduler.step()
            self.step += 1
            names = [*parts, "grad_norm"]
            # A fresh tensor per step (a CUDA graph reuses its output buffers); read every log_every steps.
            pending.append(
                (self.step, lr, torch.stack([*(p.detach().float() for p in parts.values()), grad_norm.float()]))
            )
            if self.bar is not None:
                self.bar.update(1)
            if self.step % self.config.log_every == 0:
                steps += self._read(pending, names, sums, epoch)
            if self.done:
                break
        steps += self._read(pending, names, sums, epoch)
        return {k: v / steps for k, v in sums.items()}

    def record(self, kind: str, metrics: Mapping[str, Any]) -> None:
        """An epoch's metrics: a ``kind`` record in history.jsonl, and TensorBoard scalars at the current step
        (one step axis for every scalar, so that a resumed run can hide what an interrupted attempt wrote)."""
        floats = {k: v for k, v in metrics.items() if isinstance(v, float)}
        self.run_log.scalars(self.step, floats, prefix=self.prefix.rstrip("/") + "_epoch/")
        self.run_log.record(kind, metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _seed_epoch(self, epoch: int) -> None:
        """The epoch's data order depends on (seed, epoch) alone, so a resumed run draws the same batches."""
        sampler = getattr(self.loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.shuffle.manual_seed(self.config.seed * 1_000_003 + epoch)

    def _read(
        self, pending: list[tuple[int, float, torch.Tensor]], names: list[str], sums: dict[str, float], epoch: int
    ) -> int:
        """Read the pending steps from the device at once, check and record them, add them to ``sums``; how many."""
        if not pending:
            return 0
        rows = torch.stack([values for _, _, values in pending]).tolist()  # the one host synchronisation
        logged: list[tuple[int, dict[str, float]]] = []
        try:
            for (step, lr, _), row in zip(pending, rows):
                values = dict(zip(names, row))
                scalars = {self.prefix + k: v for k, v in {**values, "lr": lr}.items()}
                logged.append((step, scalars))
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(
                        f"{self.stage} diverged at step {step} (epoch {epoch + 1}): the loss is "
                        f"{values['loss']}; {self.advice}; the checkpoints of finished epochs are kept"
                    )
                self.run_log.scalars(step, scalars)
                for name in names[:-1]:  # the loss parts; the gradient norm is logged, not averaged
                    sums[name] = sums.get(name, 0.0) + values[name]
        finally:
            if self.step_log is not None:  # the steps up to a divergence too: the tracker shows where it broke
                self.step_log(logged)
        if self.bar is not None:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{rows[-1][0]:.4f}")
        pending.clear()
        return len(rows)
