"""A run directory's record of progress: TensorBoard scalars and a crash-safe JSON-lines history."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RunLog", "StepLog", "progress_bar", "read_history", "write_json"]


class StepLog(Protocol):
    """Takes the per-step scalars of a training loop, a batch at a time: ``(optimiser step, {tag: value})`` for
    every step the loop read from the device since the last call (the TensorBoard tags, e.g. ``pretrain/loss``).

    Called on the main worker only, from the loop's thread: it should hand the batch on and return (a sweep trial's
    W&B and MLflow runs, ``simmtm.train.trackers.TrialSteps``).
    """

    def __call__(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...


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
    ``resume_step``: the optimiser step a (re)started run continues from. Whatever an interrupted attempt wrote
    after it is dropped, so each step and epoch is recorded once: history records with a larger ``step`` are
    removed, and TensorBoard hides events from ``resume_step + 1`` on (SummaryWriter's ``purge_step``).
    """

    def __init__(self, run_dir: Path | None, *, subdir: str = "tb", resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        self._writer = None
        self._history = None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

            run_dir.mkdir(parents=True, exist_ok=True)
            history = run_dir / "history.jsonl"
            purge_step = None
            if resume_step is not None:
                _truncate_history(history, resume_step)
                purge_step = resume_step + 1
            self._writer = SummaryWriter(str(run_dir / subdir), purge_step=purge_step)
            self._history = history.open("a")

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


def _truncate_history(path: Path, last_step: int) -> None:
    """Drop the records of ``path`` written after optimiser step ``last_step`` (atomically)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _step_of(line) <= last_step]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def _step_of(line: str) -> float:
    """A history line's optimiser step; a line torn by a kill counts as after every step (so it is dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


def read_history(path: Path, *, kind: str) -> list[dict[str, Any]]:
    """The records of one ``kind`` in a ``history.jsonl`` (without ``kind`` and ``time``); a torn line is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.pop("kind", None) == kind:
            record.pop("time", None)
            records.append(record)
    return records
