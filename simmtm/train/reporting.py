"""Every "metrics plus checkpoint" writer: the ``Report`` implementations for Ray Tune and Ray Train, and the copy
a distributed pre-training keeps in its ``--out`` directory.

A report takes ``(metrics, state_or_None)`` (``simmtm.train.runtime.Report``). A state becomes a checkpoint directory
holding ``checkpoint.pt`` (``checkpoint_dir``), which Ray copies to its storage; ``checkpoint_state`` reads one
back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray.train

from simmtm.train.checkpoint import CHECKPOINT_FILE, ray_checkpoint_state, save_pretrain_checkpoints, save_state
from simmtm.train.history import RunLog

if TYPE_CHECKING:
    from simmtm.train.runtime import Runtime

__all__ = [
    "checkpoint_dir",
    "in_tune",
    "tune_trial_id",
    "tune_report",
    "train_checkpoint_state",
    "EpochHook",
    "RayReport",
    "RunDirCallback",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def checkpoint_dir(state: dict[str, Any]) -> Iterator[str]:
    """A temporary directory holding ``state`` as ``checkpoint.pt``, for Ray to copy into its storage."""
    with tempfile.TemporaryDirectory(prefix="simmtm-checkpoint-") as tmp:
        save_state(state, Path(tmp) / CHECKPOINT_FILE)
        yield tmp


# --- Ray Tune (a one-worker trial) -----------------------------------------------------------------------------


def in_tune() -> bool:
    """Whether this process runs a Tune trial (a Ray Train worker inside a trial does not)."""
    return tune_trial_id() != "local"


def tune_trial_id() -> str:
    """The Tune trial id of this process, or ``local`` outside Tune."""
    import ray.tune

    with warnings.catch_warnings():  # outside Tune, Ray warns that it returns None: that None is the answer sought
        warnings.simplefilter("ignore")
        trial_id = ray.tune.get_context().get_trial_id()
    return trial_id or "local"


def tune_report(metrics: Mapping[str, Any], state: dict[str, Any] | None = None) -> None:
    """``Report`` for a Tune trial: the metrics only. A sweep trial keeps its checkpoint in its own folder
    (``simmtm.tuning.record``), so no state reaches Tune (a second copy nothing would read)."""
    import ray.tune

    assert state is None, "a sweep trial checkpoints into its own folder, not through Tune"
    ray.tune.report(dict(metrics))


# --- Ray Train (every worker of a data-parallel run) -----------------------------------------------------------


def train_checkpoint_state() -> dict[str, Any] | None:
    """The state of the Train run's latest checkpoint (a restarted worker group, a re-run), or None."""
    checkpoint = ray.train.get_checkpoint()
    return None if checkpoint is None else ray_checkpoint_state(checkpoint)


class EpochHook(Protocol):
    """Called on every worker after each epoch's report (for benchmarks and tests: timing, fault injection)."""

    def __call__(self, metrics: Mapping[str, Any], runtime: Runtime) -> None: ...


class RayReport:
    """``Report`` for Ray Train: every rank reports its metrics; rank 0 (which gets the state) attaches it as the
    checkpoint, which Ray copies to storage."""

    def __init__(self, runtime: Runtime, after_epoch: EpochHook | None = None) -> None:
        self.runtime = runtime
        self.after_epoch = after_epoch

    def __call__(self, metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
        metrics = dict(metrics)
        if state is not None:
            with checkpoint_dir(state) as tmp:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if self.after_epoch is not None:
            self.after_epoch(metrics, self.runtime)


class RunDirCallback(ray.train.UserCallback):
    """Keeps ``out`` current after each report of a distributed pre-training: ``checkpoints/last.pt``,
    ``history.jsonl`` and TensorBoard (so ``simmtm finetune --from OUT`` works as after an in-process run).

    Runs on the Train controller, which Ray places on the driver's node, so ``out`` is the driver's directory.
    """

    def __init__(self, out: str) -> None:
        self.out = out

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        try:
            self._record(metrics[0] if metrics else {}, checkpoint)
        except Exception:  # never let bookkeeping of the copy in --out fail the training run
            log.exception("could not update %s after an epoch", self.out)

    def _record(self, metrics: dict[str, Any], checkpoint) -> None:
        out = Path(self.out)
        if checkpoint is not None:
            save_pretrain_checkpoints(ray_checkpoint_state(checkpoint), out)
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(values.get("step", 0))
        # Opened per report (the controller has no "run ended" hook to close it). A restarted worker group replays
        # the epoch after its checkpoint: whatever an earlier attempt recorded from this step on is dropped first,
        # so each epoch is recorded once; epoch scalars sit on the optimiser-step axis, as in-process.
        run_log = RunLog(out, resume_step=step - 1)
        try:
            run_log.record("pretrain_epoch", values)
            scalars = {k: v for k, v in values.items() if k not in ("epoch", "step") and math.isfinite(v)}
            run_log.scalars(step, scalars, prefix="pretrain_epoch/")
        finally:
            run_log.close()
