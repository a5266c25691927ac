"""What a running sweep writes as each trial ends, for whoever watches it (TensorBoard's HPARAMS tab).

``TrialEndHParams`` is a Tune callback on the driver: when a trial completes, is stopped by ASHA or fails, it adds
that trial's HParams run under ``DIR/tb/hparams/<trial>`` (``write_trial_hparams``). After the sweep
``write_hparams`` rewrites the tab whole from the final rows, so the two never disagree for long.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback

from simmtm.tuning.outputs import write_trial_hparams
from simmtm.tuning.results import row_of
from simmtm.tuning.trial import Trial

__all__ = ["TrialEndHParams"]

log = logging.getLogger(__name__)


class TrialEndHParams(Callback):
    """Writes a trial's HParams run as soon as it ends."""

    def __init__(self, tb_dir: Path, param_keys: list[str], *, metric: str) -> None:
        self.tb_dir = Path(tb_dir)
        self.param_keys = list(param_keys)
        self.metric = metric

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        final = (trial.last_result or {}).get("stage") == "final"
        self._write(trial, "COMPLETE" if final else "PRUNED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "FAILED")

    def _write(self, trial: Any, state: str) -> None:
        try:  # bookkeeping for the watcher: never let it stop the sweep
            t = Trial.from_config(trial.config)
            row = row_of(t.name, trial.last_result, t.params, t.repeat, self.metric, self.param_keys, state=state)
            write_trial_hparams(self.tb_dir, row, self.param_keys, metric=self.metric)
        except Exception:
            log.exception("could not write the HParams run of trial %s", trial.trial_id)
