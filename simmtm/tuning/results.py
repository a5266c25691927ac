"""A sweep's results, read from its own record: one row per trial of the Optuna study (with what its folder holds),
one row per confirmation run (from its folder), and the test split scored once for the best configurations.

Nothing here reads Ray Tune's experiment folder: the study and the trial folders (``simmtm.tuning.record``) are the
sweep.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from simmtm.train import finetuning
from simmtm.tuning.outputs import TrialRow
from simmtm.tuning.record import TrialStore, trial_name
from simmtm.tuning.spec import TrialSpec
from simmtm.tuning.study import NAME_ATTR, OPTUNA_STATES, REASON_ATTR, WALL_ATTR, SweepStudy
from simmtm.tuning.trial import Trial

__all__ = ["study_rows", "named_rows", "row_of", "score_test"]

log = logging.getLogger(__name__)


def study_rows(study: SweepStudy, store: TrialStore, spec: TrialSpec, param_keys: list[str]) -> list[TrialRow]:
    """One row per trial of this sweep in the study, with its folder's final result and error."""
    return [_study_row(t, store, spec, param_keys) for t in study.trials() if t.params or t.state != TrialState.RUNNING]


def _study_row(t: FrozenTrial, store: TrialStore, spec: TrialSpec, param_keys: list[str]) -> TrialRow:
    name = str(t.user_attrs.get(NAME_ATTR, trial_name(t.number)))
    state = OPTUNA_STATES.get(t.state, "PENDING")
    result = store.read_result(name) if state == "COMPLETE" else None
    steps = sorted(t.intermediate_values)
    error = (str(t.user_attrs.get(REASON_ATTR, "")) or store.read_error(name)) if state == "FAILED" else ""
    wall = t.user_attrs.get(WALL_ATTR)
    repeat = int(t.user_attrs.get("repeat", 0))
    row = TrialRow(
        trial_id=name,
        state=state,
        params={k: t.params.get(k) for k in param_keys},
        repeat=repeat,
        score=float(t.value) if state == "COMPLETE" and t.value is not None else None,
        val_score=float(t.intermediate_values[steps[-1]]) if steps else None,
        epochs=int((result or {}).get("epoch", steps[-1] if steps else 0)) or None,
        wall_s=float(wall) if wall is not None else None,
        error=error or ("failed (no error recorded)" if state == "FAILED" else ""),
    )
    row.extra["trial_wall_s"] = (result or {}).get("trial_wall_s")
    row.extra["probes"] = {int(k): float(v) for k, v in t.intermediate_values.items()}
    row.extra["trial"] = Trial(spec=spec, params=dict(t.params), repeat=repeat, number=t.number)
    return row


def named_rows(
    store: TrialStore, named: Mapping[str, Mapping[str, Any]], spec: TrialSpec, param_keys: list[str]
) -> list[TrialRow]:
    """Rows of runs known by name (the confirmation's): ``named`` maps each name to its ``repeat`` and values."""
    rows = []
    for name, point in named.items():
        params = {k: v for k, v in point.items() if k != "repeat"}
        row = row_of(name, store.read_result(name), params, int(point.get("repeat", 0)), spec.metric, param_keys)
        if row.state != "COMPLETE" and (error := store.read_error(name)):
            row.state, row.error = "FAILED", error
        row.extra["trial"] = Trial(spec=spec, params=params, repeat=row.repeat, label=name)
        rows.append(row)
    return rows


def row_of(
    name: str,
    last: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    repeat: int,
    metric: str,
    param_keys: Sequence[str],
    *,
    state: str | None = None,
) -> TrialRow:
    """The row of a trial from its last result (a final one: COMPLETE; ``state`` says otherwise)."""
    last = dict(last or {})
    final = last.get("stage") == "final" and last.get(metric) is not None
    probe = last.get(f"probe_{metric}", last.get(f"last_probe_{metric}"))
    test = f"test_{metric.removeprefix('val_')}"
    row = TrialRow(
        trial_id=name,
        state=state or ("COMPLETE" if final else "PENDING"),
        params={k: params.get(k) for k in param_keys},
        repeat=repeat,
        score=float(last[metric]) if final else None,
        val_score=float(probe) if probe is not None else None,
        test_score=float(last[test]) if final and test in last else None,
        epochs=int(last["epoch"]) if last.get("epoch") is not None else None,
        wall_s=float(last["time_total_s"]) if "time_total_s" in last else last.get("trial_wall_s"),
    )
    row.extra["trial_wall_s"] = last.get("trial_wall_s")
    row.extra["probes"] = {int(k): float(v) for k, v in (last.get("probes") or {}).items()}
    return row


def score_test(ranked: list[list[TrialRow]], out: Path, store: TrialStore, *, metric: str) -> None:
    """Score the test split once for each repeat of the top configurations (re-using an earlier score)."""
    test_metric = metric.removeprefix("val_")
    for group in ranked:
        for row in group:
            run_dir = out / "best" / row.trial_id
            done = run_dir / "metrics.json"
            if done.is_file():
                row.test_score = float(json.loads(done.read_text())[test_metric])
                continue
            state = store.load_checkpoint(row.trial_id)
            if state is None:
                log.warning("trial %s has no checkpoint; its test score is left empty", row.trial_id)
                continue
            for key in ("sweep_probe", "sweep_probes"):
                state.pop(key, None)
            run_cfg = row.extra["trial"].run_config(pin_threads=False)
            log.info("scoring the test split once for trial %s", row.trial_id)
            metrics = finetuning.run(run_cfg, pretrained=state, run_dir=run_dir)
            row.test_score = float(metrics[test_metric])
            if not math.isclose(float(metrics[metric]), row.score or math.nan, rel_tol=1e-3):
                log.warning(
                    "trial %s: re-run fine-tune gives %s=%.6g, the trial reported %.6g",
                    row.trial_id,
                    metric,
                    metrics[metric],
                    row.score,
                )
