"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from simmtm.data.torch_files import UnreadableTorchFile, load_weights_only
from simmtm.errors import UserError

__all__ = [
    "save_pretrain_checkpoints",
    "save_state",
    "load_state",
    "ray_checkpoint_state",
    "CHECKPOINT_FILE",
    "latest_checkpoint",
    "run_checkpoint",
    "encoder_state",
    "PRETRAIN_KIND",
]

CHECKPOINT_FILE = "checkpoint.pt"


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (a file, or a directory holding ``checkpoint.pt``) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint there")
    try:
        state = load_weights_only(path, map_location=map_location)
    except UnreadableTorchFile as exc:  # truncated, foreign or unsafe: one line, never torch's advice
        raise UserError(f"{path}: not a readable simmtm checkpoint: {exc}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a simmtm checkpoint (it holds a {type(state).__name__}, not a dict of states)")
    return state


def ray_checkpoint_state(checkpoint: Any) -> dict[str, Any]:
    """The state inside a Ray Train or Tune checkpoint (its directory holds ``checkpoint.pt``)."""
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run directory (``checkpoints/last.pt``), or None."""
    return run_checkpoint(run_dir, "last")


PRETRAIN_KIND = "simmtm-pretrain"  # a pre-training state's "kind": what its readers check


def run_checkpoint(run_dir: str | Path, which: str) -> Path | None:
    """A pre-training run directory's ``checkpoints/last.pt`` (the newest epoch, with everything to resume) or
    ``checkpoints/best.pt`` (the epoch of lowest validation loss: model and config only), or None."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    return path if path.is_file() else None


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a full SimMTM (or fine-tuned) model state dict."""
    prefix = "encoder."
    # DistributedDataParallel prefixes "module."; a checkpoint written by N workers loads on one process.
    state = {k.removeprefix("module."): v for k, v in model_state.items()}
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# What a full pre-training state holds beyond the weights: only ``last.pt`` keeps it (resume); ``best.pt`` does not.
_RESUME_KEYS = ("optimizer", "scheduler", "rng", "best")


def save_pretrain_checkpoints(state: dict[str, Any], run_dir: str | Path) -> None:
    """Write a pre-training epoch's ``checkpoints/last.pt`` (the whole state), and ``checkpoints/best.pt`` (weights,
    config, metrics) when this epoch is the best so far (``state["best"]["epoch"] == state["epoch"]``)."""
    checkpoints = Path(run_dir) / "checkpoints"
    save_state(state, checkpoints / "last.pt")
    if state.get("best", {}).get("epoch") == state.get("epoch"):
        save_state({k: v for k, v in state.items() if k not in _RESUME_KEYS}, checkpoints / "best.pt")
