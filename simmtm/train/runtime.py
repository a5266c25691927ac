"""What differs between an in-process run and a data-parallel worker, behind one small interface.

The training loops (``pretraining.run``, ``finetuning.run``) take a ``Runtime`` and never ask where they
run: the local one below is the default, and ``simmtm.cluster.distributed`` supplies one for Ray Train workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from simmtm.errors import UserError

__all__ = ["Report", "Runtime", "LocalRuntime", "check_device", "pick_device", "no_report"]

log = logging.getLogger(__name__)


class Report(Protocol):
    """Called after each epoch with its metrics and, when a checkpoint is due, the state to persist.

    The state is a plain dict of tensors and primitives (``torch.save``-able, ``weights_only``-loadable).
    Every worker calls it; ``state`` is given on the main worker only.
    """

    def __call__(self, metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None: ...


def no_report(metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
    """A report that keeps nothing (the loops still write their own run directory)."""


def check_device(name: str) -> None:
    """Refuse a device this machine does not have (UserError naming the key and what the machine has)."""
    if name == "cuda" and not torch.cuda.is_available():
        built = f"torch {torch.__version__} " + (
            "is built without CUDA" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no GPU"
        )
        raise UserError(f"device: cuda, but this machine has no CUDA device ({built}); set device: cpu or auto")


def pick_device(name: str = "auto") -> torch.device:
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Runtime:
    """In-process defaults; subclasses override the hooks for data parallelism."""

    device: torch.device = field(default_factory=pick_device)
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the model to the device (and wrap it for data parallelism)."""
        return model.to(self.device)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Shard the loader across workers (a no-op in process)."""
        return loader

    def gather(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Concatenate tensors across workers along dim 0 with gradients, or None in process."""
        return None

    def all_reduce_mean(self, value: float) -> float:
        """Average a scalar over workers (identity in process)."""
        return value

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every worker's ``obj`` (picklable), in rank order; every worker must call it.

        In process a list of one; with several workers it needs torch.distributed's default process group (which
        Ray Train sets up).
        """
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


class LocalRuntime(Runtime):
    """One process, one device."""
