"""What TensorBoard shows of a run's ``tb`` folder: one reader for the tests that check it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["scalars"]


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each scalar tag's ``(step, value)`` pairs as TensorBoard reads the folder (event files in name order; a file
    that restarts at an earlier step purges the later steps before it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
