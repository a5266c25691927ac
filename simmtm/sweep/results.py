"""A sweep's results, after its trials: one row per Tune trial, the Optuna study made to agree, the test split
scored once for the best configurations.

Rows come from Tune's saved experiment state (not ``get_dataframe``, which may miss rows after a restore).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from simmtm.sweep.outputs import OWNER_ATTR, WARM_START_ATTR, TrialRow
from simmtm.sweep.search import tell_pruned
from simmtm.sweep.spec import probe_key
from simmtm.sweep.trial import Trial

__all__ = ["collect_rows", "trial_row", "reconcile_study", "score_test", "ORPHAN_REASON"]

log = logging.getLogger(__name__)


def collect_rows(experiment_dir: str, param_keys: list[str]) -> list[TrialRow]:
    """One row per Tune trial, from Tune's saved experiment state."""
    return [_row(trial, param_keys) for trial in _saved_trials(experiment_dir)]


def _saved_trials(experiment_dir: str) -> list:
    """Tune's trials as its experiment state saved them (``ExperimentAnalysis.trials``), without the analysis's
    per-trial pandas frame of every reported result: unused here, it was 70 % of collect_rows at 300 trials
    (docs/benchmarks.md, "Sweeps at scale")."""
    from ray.tune import ExperimentAnalysis

    class _TrialsOnly(ExperimentAnalysis):
        def _fetch_trial_dataframes(self) -> dict:
            return {}

    return _TrialsOnly(experiment_dir).trials


def trial_row(trial, param_keys: list[str]) -> TrialRow:
    """The row of one Tune trial (saved or live; a live trial that is ending still reads RUNNING)."""
    return _row(trial, param_keys)


def _row(trial, param_keys: list[str]) -> TrialRow:
    last = dict(trial.last_result or {})
    trial_cfg = Trial.from_config(trial.config)
    metric = trial_cfg.spec.metric
    final = last.get("stage") == "final"
    status = trial.status
    if status == "ERROR":
        state = "FAILED"
    elif status == "TERMINATED":
        state = "COMPLETE" if final else "PRUNED"
    elif status in ("RUNNING", "PAUSED"):
        state = "RUNNING"
    else:
        state = "PENDING"
    probe = last.get(probe_key(metric), last.get(f"last_{probe_key(metric)}"))
    params = {k: trial_cfg.params.get(k) for k in param_keys}
    row = TrialRow(
        trial_id=trial.trial_id,
        state=state,
        params=params,
        repeat=trial_cfg.repeat,
        score=float(last[metric]) if final and metric in last else None,
        val_score=float(probe) if probe is not None else None,
        test_score=float(last[test]) if final and (test := f"test_{metric.removeprefix('val_')}") in last else None,
        epochs=int(last["epoch"]) if "epoch" in last else None,
        wall_s=float(last["time_total_s"]) if "time_total_s" in last else None,
        error=_error_line(trial) if state == "FAILED" else "",
    )
    row.extra["trial_wall_s"] = last.get("trial_wall_s")
    row.extra["checkpoint"] = trial.checkpoint or _train_checkpoint(last)
    row.extra["trial"] = trial_cfg
    return row


def _train_checkpoint(last: dict[str, Any]):
    """A multi-worker trial's checkpoint lives in its Train run; TuneReportCallback passes on its path."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    path = last.get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    from ray.tune import Checkpoint

    return Checkpoint(path)


def _error_line(trial) -> str:
    try:
        err = trial.get_error()
    except Exception:  # the error file is gone (a cleaned-up node)
        err = None
    text = str(err) if err is not None else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):  # the exception line of the deepest traceback
        if ("Error" in line or "Exception" in line or "Diverged" in line) and ":" in line:
            return line
    return lines[-1] if lines else "failed (no error recorded)"


ORPHAN_REASON = "the driver stopped before Tune recorded this trial"


def reconcile_study(
    storage_url: str,
    study_name: str,
    rows: list[TrialRow],
    param_keys: list[str],
    *,
    owner: str = "",
    shared: bool = False,
) -> list[TrialRow]:
    """Make the Optuna study agree with Tune's trials (after an interruption the two can drift apart).

    Each Optuna trial carries the Tune trial id it ran as. A finished Tune trial whose Optuna trial is still
    RUNNING is told its state. An Optuna trial without a Tune trial (asked in the instant before the driver died,
    never saved by Tune, never to run; possibly even before it got its Tune trial id, then it is named
    ``optuna-<number>``) is marked FAIL with the reason and returned as a FAILED row, so that trials.csv and the
    study list the same trials.

    In a shared study (``shared``) only this driver's trials (user attribute ``owner``) are touched: the others
    belong to drivers still running, and an untagged RUNNING trial may be one of theirs being asked right now.
    """
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return []
    by_tune = {r.trial_id: r for r in rows}
    orphans = []
    for t in study.get_trials(deepcopy=False):
        if shared and t.user_attrs.get(OWNER_ATTR) != owner:
            continue
        tune_id = t.user_attrs.get("tune_trial_id")
        if tune_id is None and t.state == TrialState.RUNNING and WARM_START_ATTR not in t.user_attrs:
            # Asked from Optuna, then the driver died before the searcher could tag it with its Tune trial id:
            # name it after its Optuna number so the study and trials.csv still list the same trials.
            tune_id = f"optuna-{t.number}"
            study._storage.set_trial_user_attr(t._trial_id, "tune_trial_id", tune_id)
        row = by_tune.get(tune_id) if tune_id is not None else None
        if row is None and tune_id is not None:
            if t.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(t._trial_id, "reason", ORPHAN_REASON)
                study.tell(t.number, state=TrialState.FAIL)
            orphans.append(
                TrialRow(
                    trial_id=tune_id,
                    state="FAILED",
                    params={k: t.params.get(k) for k in param_keys},
                    repeat=int(t.user_attrs.get("repeat", 0)),
                    error=t.user_attrs.get("reason", ORPHAN_REASON),
                )
            )
        elif row is None or t.state != TrialState.RUNNING:
            continue
        elif row.state == "COMPLETE":
            study.tell(t.number, row.score)
        elif row.state == "PRUNED":
            tell_pruned(study, t.number)
        elif row.state == "FAILED":
            study._storage.set_trial_user_attr(t._trial_id, "reason", row.error)
            study.tell(t.number, state=TrialState.FAIL)
    return orphans


def score_test(ranked: list[list[TrialRow]], out: Path, *, metric: str) -> None:
    """Score the test split once for each repeat of the top configurations (re-using an earlier score)."""
    from simmtm import finetune
    from simmtm.checkpoint import ray_checkpoint_state

    test_metric = metric.removeprefix("val_")
    for group in ranked:
        for row in group:
            run_dir = out / "best" / row.trial_id
            done = run_dir / "metrics.json"
            if done.is_file():
                row.test_score = float(json.loads(done.read_text())[test_metric])
                continue
            if not row.extra.get("checkpoint"):
                log.warning("trial %s has no checkpoint; its test score is left empty", row.trial_id)
                continue
            state = ray_checkpoint_state(row.extra["checkpoint"])
            state.pop("sweep_final", None)
            run_cfg = row.extra["trial"].run_config(pin_threads=False)
            log.info("scoring the test split once for trial %s", row.trial_id)
            metrics = finetune.run(run_cfg, pretrained=state, run_dir=run_dir)
            row.test_score = float(metrics[test_metric])
            if not math.isclose(float(metrics[metric]), row.score or math.nan, rel_tol=1e-3):
                log.warning(
                    "trial %s: re-run fine-tune gives %s=%.6g, the trial reported %.6g",
                    row.trial_id,
                    metric,
                    metrics[metric],
                    row.score,
                )
