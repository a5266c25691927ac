"""A run directory's record of progress: TensorBoard scalars and a crash-safe JSON-lines history."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "progress_bar", "write_json"]


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def progress_bar(total: float, desc: str, *, initial: int = 0, enabled: bool):
    """A terminal progress bar over optimiser steps, or None when disabled (workers, tests, --no-progress)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=int(total), initial=initial, desc=desc, unit="step", dynamic_ncols=True)


class RunLog:
    """Writes scalars to TensorBoard (``DIR/tb``) and appends every record to ``DIR/history.jsonl``.

    Created only on the main worker; ``RunLog(None)`` records nothing (workers other than rank 0).
    """

    def __init__(self, run_dir: Path | None, *, subdir: str = "tb") -> None:
        self.run_dir = run_dir
        self._writer = None
        self._history = None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

            run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(run_dir / subdir))
            self._history = (run_dir / "history.jsonl").open("a")

    def scalars(self, step: int, values: Mapping[str, float], *, prefix: str = "") -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(prefix + key, value, step)

    def record(self, kind: str, values: Mapping[str, Any]) -> None:
        if self._history is None:
            return
        self._history.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        self._history.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._history is not None:
            self._history.close()
