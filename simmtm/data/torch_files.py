"""Reading torch files (checkpoints, ``.pt`` data) safely: always ``weights_only=True``, and a file that cannot be
read is explained in a few words. Torch's own message is a paragraph that ends in advice to retry with
``weights_only=False``, which would run whatever code the file carries: never pass it on.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnreadableTorchFile", "load_weights_only"]


class UnreadableTorchFile(Exception):
    """``str(exc)`` is the reason, in a few words (no path: the caller names the file)."""


def load_weights_only(path: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a corrupt, truncated or unsafe file raises UnreadableTorchFile."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            if not fh.read(1):
                raise UnreadableTorchFile("the file is empty")
    except OSError as exc:
        raise UnreadableTorchFile(f"cannot read: {exc.strerror or exc}") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second line about the same failure
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file
        raise UnreadableTorchFile(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return f"it holds a Python object ({unsafe.group(1)}), not only tensors; refused, as loading it could run code"
    if "Weights only load failed" in text:
        return "not a file of tensors (a pickle that only a full unpickler could read; refused, as that could run code)"
    if "zip archive" in text or "central directory" in text or isinstance(exc, OSError):  # torch's zip reader
        return "truncated or not a torch file (no complete zip archive)"
    return f"not a torch file ({type(exc).__name__})"
