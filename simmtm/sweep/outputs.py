"""What a sweep leaves under its directory: ``trials.csv``, ``best.yaml`` and a TensorBoard HParams summary.

``trials.csv`` has one row per Tune trial with the columns ``TRIAL_COLUMNS`` and then one column per searched
dotted key. ``score`` is the trial's result in the sweep's metric (the full fine-tune's validation score; empty
unless COMPLETE); ``val_score`` is the last probe's validation score (the number ASHA ranked it by; set for pruned
trials too); ``test_score`` is the test split's score, filled only for the best configurations, once.
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simmtm.sweep.spec import apply_params

__all__ = ["TrialRow", "TRIAL_COLUMNS", "STATES", "WARM_START_ATTR", "write_trials_csv", "read_trials_csv", "rank_configurations", "write_best_yaml", "write_hparams"]

TRIAL_COLUMNS = ("trial_id", "state", "score", "val_score", "test_score", "repeat", "epochs", "wall_s", "error")
STATES = ("COMPLETE", "PRUNED", "FAILED", "RUNNING", "PENDING")
# The Optuna user attribute of the trials a warm start copied from an earlier sweep (not this sweep's own).
WARM_START_ATTR = "warm_start_from"


@dataclass
class TrialRow:
    """One Tune trial as the sweep reports it."""

    trial_id: str
    state: str  # one of STATES
    params: dict[str, Any]
    repeat: int = 0
    score: float | None = None
    val_score: float | None = None
    test_score: float | None = None
    epochs: int | None = None
    wall_s: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # not written: checkpoint path and the like

    def config_key(self, keys: list[str]) -> tuple:
        """What identifies a configuration across its repeats."""
        return tuple(repr(self.params.get(k)) for k in keys)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value


def write_trials_csv(path: Path, rows: list[TrialRow], param_keys: list[str]) -> None:
    """Write ``trials.csv`` atomically, rows in trial-id order."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*TRIAL_COLUMNS, *param_keys])
        for r in sorted(rows, key=lambda r: r.trial_id):
            writer.writerow([
                r.trial_id, r.state, _cell(r.score), _cell(r.val_score), _cell(r.test_score), r.repeat,
                _cell(r.epochs), _cell(None if r.wall_s is None else round(r.wall_s, 2)), r.error.replace("\n", " ")[:500],
                *[_cell(r.params.get(k)) for k in param_keys],
            ])
    tmp.replace(path)


def read_trials_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def rank_configurations(rows: list[TrialRow], param_keys: list[str], mode: str) -> list[list[TrialRow]]:
    """COMPLETE trials grouped by configuration (repeats together), best mean score first."""
    groups: dict[tuple, list[TrialRow]] = {}
    for r in rows:
        if r.state == "COMPLETE" and r.score is not None:
            groups.setdefault(r.config_key(param_keys), []).append(r)
    sign = 1.0 if mode == "min" else -1.0
    return sorted(groups.values(), key=lambda g: sign * statistics.fmean(r.score for r in g))


def write_best_yaml(path: Path, base_run: dict[str, Any], best: list[TrialRow], *, metric: str, sweep_dir: Path) -> dict[str, Any]:
    """A run config with the best parameters (and the sweep's own seed), runnable by ``simmtm pretrain``."""
    params = best[0].params
    raw = apply_params(base_run, {k: v for k, v in params.items() if v is not None})
    mean = statistics.fmean(r.score for r in best)
    header = (
        f"# best.yaml: the best configuration of the sweep in {sweep_dir} ({metric} = {mean:.6g}, mean of "
        f"{len(best)} repeat(s): trial(s) {', '.join(r.trial_id for r in best)}).\n"
        f"# Run it:   simmtm pretrain {path} --out runs/best\n"
        f"#           simmtm run {path} --out runs/best-run\n"
    )
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return raw


def write_hparams(tb_dir: Path, rows: list[TrialRow], param_keys: list[str], *, metric: str) -> None:
    """One HParams run per finished trial under ``tb_dir/hparams`` (TensorBoard's HPARAMS tab)."""
    from torch.utils.tensorboard import SummaryWriter

    target = tb_dir / "hparams"
    if target.exists():
        shutil.rmtree(target)  # rewritten whole: a resumed sweep must not show a trial twice
    writer = SummaryWriter(str(target))
    try:
        for r in rows:
            if r.state not in ("COMPLETE", "PRUNED", "FAILED"):
                continue
            hparams = {k: _hparam(r.params.get(k)) for k in param_keys}
            hparams.update(repeat=r.repeat, state=r.state)
            metrics = {f"hparam/{metric}": r.score, f"hparam/probe_{metric}": r.val_score, "hparam/epochs": r.epochs}
            metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
            writer.add_hparams(hparams, metrics or {"hparam/epochs": 0.0}, run_name=r.trial_id)
    finally:
        writer.close()


def _hparam(value: Any) -> Any:
    if value is None:
        return "n/a"  # a conditional parameter this trial did not use
    return value if isinstance(value, (int, float, str, bool)) else str(value)
