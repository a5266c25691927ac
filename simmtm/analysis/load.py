"""Read a sweep directory (finished, still running or resumed) into one table of trials plus its metadata.

A sweep directory, as ``simmtm sweep`` writes it:

- ``sweep.json``: ``metric``, ``mode`` (min/max), ``study_name``, ``storage``, ``params`` (dotted keys searched),
  ``search_space``, ``method`` (tpe/random/grid), ``seed``. Its presence is what makes a folder a sweep directory.
- ``sweep.yaml``: the resolved sweep file (a run config plus search/tune/resources sections).
- ``optuna.db``: the Optuna study (SQLite); read through a snapshot, so a running sweep is never written to.
- ``trials.csv``: one row per trial (``TRIAL_COLUMNS``, then one column per searched parameter).

Either table may be missing or lag behind while a sweep runs; the one holding more finished trials is used. Trials
that a warm start copied from an earlier sweep (Optuna user attribute ``warm_start_from``) are not this sweep's own
and are left out of the table (counted in ``Sweep.n_warm_start``). Each searched parameter's distribution comes from
``simmtm.analysis.param_space``.
"""

from __future__ import annotations

import csv as csv_module
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from simmtm.analysis.param_space import (
    merge_distributions,
    param_value,
    resolve_distributions,
    snap_to_distributions,
)
from simmtm.config.keys import get_key
from simmtm.errors import UserError
from simmtm.tuning.confirm_stage import read_confirmation_json
from simmtm.tuning.outputs import (
    STATES,
    TRIAL_COLUMNS,
    WARM_START_ATTR,
    read_study,
    read_sweep_json,
    read_sweep_yaml,
    read_trials_csv,
)
from simmtm.tuning.space import match_choice, search_distributions
from simmtm.tuning.spec import SHORT_NAMES
from simmtm.tuning.study import OPTUNA_STATES
from simmtm.tuning.timing import read_timing_events

__all__ = [
    "R_KEY",
    "M_KEY",
    "TAU_KEY",
    "ENCODER_KEY",
    "SHORT_NAMES",
    "STATES",
    "Sweep",
    "load_sweep",
    "finished_trials",
    "search_distributions",
    "analysis_study",
    "match_choice",
]

logger = logging.getLogger(__name__)

R_KEY = "pretrain.mask_ratio"
M_KEY = "pretrain.num_masked"
TAU_KEY = "pretrain.temperature"
ENCODER_KEY = "model.encoder"


@dataclass
class Sweep:
    """One sweep directory, read: its metadata and a table with one row per trial of its own."""

    path: Path
    metric: str
    mode: Literal["min", "max"]
    method: str
    seed: int
    study_name: str
    params: list[str]  # dotted keys searched, in the order of sweep.json
    search_space: dict[str, Any]  # the search section as written
    run_config: dict[str, Any]  # sweep.yaml without search/tune/resources
    trials: pd.DataFrame  # columns: TRIAL_COLUMNS, then one per searched parameter
    distributions: dict[str, BaseDistribution]  # per searched parameter: the space it was drawn from
    source: str  # "trials.csv", "optuna.db" or "none"
    n_warm_start: int = 0  # trials in the study copied from an earlier sweep
    notes: list[str] = field(default_factory=list)  # things a reader should know (stale files, ...)
    confirmation: dict[str, Any] | None = None  # confirmation.json (simmtm.tuning.confirm_stage); None: none was run

    @property
    def finished(self) -> pd.DataFrame:
        """COMPLETE trials with a finite score: the only ones any analysis uses."""
        t = self.trials
        return t[(t["state"] == "COMPLETE") & np.isfinite(t["score"].astype(float))].reset_index(drop=True)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.mode == "min" else "maximize"

    @property
    def better(self) -> str:
        """Which way the metric improves, as figures and the report say it."""
        return "lower is better" if self.mode == "min" else "higher is better"

    @property
    def sign(self) -> float:
        """+1 when larger scores are better, -1 when smaller are: ``sign * score`` is always 'higher is better'."""
        return 1.0 if self.mode == "max" else -1.0

    def counts(self) -> dict[str, int]:
        """How many trials are in each state (all of STATES, zeros included)."""
        vc = self.trials["state"].value_counts()
        return {s: int(vc.get(s, 0)) for s in STATES}

    def fixed_value(self, key: str) -> Any:
        """The value of a dotted key in the run config (for parameters the sweep did not search)."""
        return get_key(self.run_config, key)

    def label(self) -> str:
        return self.path.name or str(self.path)

    def params_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's searched parameters as plain Python values of their distribution's type (M an int, ...)."""
        return {p: param_value(row[p], self.distributions.get(p)) for p in self.params}


# --- reading ---------------------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep directory; ``UserError`` (one line) when ``path`` is not one."""
    path = Path(path)
    meta = read_sweep_json(path)
    params = meta.params
    run_config = read_sweep_yaml(path, run_only=True)
    search_space = meta.search_space
    notes: list[str] = []

    study = read_study(path, meta, notes)
    study_frame, dists, n_warm = _frame_from_study(study, params) if study is not None else (None, {}, 0)
    csv_frame = _frame_from_csv(path / "trials.csv", params, notes)

    frame, source = _choose(csv_frame, study_frame)
    if source == "none" and notes:  # tables are there but none can be read (none yet: a sweep that just started)
        why = "; ".join(n.split(";")[0] for n in notes)
        raise UserError(f"{path}: no readable table of trials ({why}); nothing to analyze")
    if source == "trials.csv" and study_frame is not None:
        behind = _n_finished(study_frame) - _n_finished(csv_frame)
        if behind > 0:
            notes.append(f"trials.csv lags behind the Optuna study by {behind} finished trial(s)")
    elif source == "optuna.db" and csv_frame is not None:
        notes.append("trials.csv holds fewer finished trials than the Optuna study; the study was used")

    distributions = resolve_distributions(params, dists, search_space, frame)
    frame = _in_start_order(snap_to_distributions(frame, distributions), read_timing_events(path))
    return Sweep(
        path=path,
        metric=meta.metric,
        mode=meta.mode,  # type: ignore[arg-type]  # read_sweep_json checked it is min or max
        method=meta.method,
        seed=meta.seed,
        study_name=meta.study_name,
        params=params,
        search_space=search_space,
        run_config=run_config,
        trials=frame,
        distributions=distributions,
        source=source,
        n_warm_start=n_warm,
        notes=notes,
        confirmation=read_confirmation_json(path),
    )


def _in_start_order(frame: pd.DataFrame, events: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Trials in the order Tune created them (``timing.jsonl``); trials it has no time for keep their order, last.
    (Trial ids do not sort by start: a resumed sweep's trials get a new id prefix.)"""
    if frame.empty or not events:
        return frame
    started = frame["trial_id"].map(lambda t: events.get(str(t), {}).get("add", events.get(str(t), {}).get("start")))
    order = sorted(
        range(len(frame)),
        key=lambda i: (
            started.iat[i] is None or pd.isna(started.iat[i]),
            started.iat[i] if pd.notna(started.iat[i]) else 0.0,
            i,
        ),
    )
    return frame.iloc[order].reset_index(drop=True)


def finished_trials(path: str | Path) -> list[tuple[dict[str, Any], float]]:
    """The finished trials of a sweep directory as ``(params, score)`` pairs (params by dotted key)."""
    sweep = load_sweep(path)
    return [(sweep.params_of(row), float(row["score"])) for _, row in sweep.finished.iterrows()]


def _frame_from_study(
    study: optuna.Study, params: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, BaseDistribution], int]:
    rows: list[dict[str, Any]] = []
    dists: dict[str, BaseDistribution] = {}
    n_warm = 0
    for t in study.get_trials(deepcopy=False):
        if WARM_START_ATTR in t.user_attrs:
            n_warm += 1
            continue
        state = OPTUNA_STATES.get(t.state, str(t.state.name))
        value = t.value if t.state == TrialState.COMPLETE and t.values else np.nan
        attrs = t.user_attrs
        row = {
            "trial_id": str(attrs.get("tune_trial_id", attrs.get("trial_id", t.number))),
            "state": state,
            "score": value,
            "val_score": attrs.get("val_score", value),
            "test_score": attrs.get("test_score", np.nan),
            "repeat": attrs.get("repeat", 0),
            "epochs": attrs.get("epochs", np.nan),
            "wall_s": t.duration.total_seconds() if t.duration is not None else np.nan,
            "error": attrs.get("error", attrs.get("reason", "")),
        }
        for p in params:
            row[p] = t.params.get(p, np.nan)
        for p, d in t.distributions.items():
            if p in params:
                dists[p] = merge_distributions(dists.get(p), d)
        rows.append(row)
    return _typed(pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *params]), params), dists, n_warm


def _frame_from_csv(csv: Path, params: Sequence[str], notes: list[str]) -> pd.DataFrame | None:
    if not csv.is_file():
        return None
    try:
        frame = pd.DataFrame(read_trials_csv(csv)).replace("", np.nan)  # every cell a string; "" is no value
    except (csv_module.Error, OSError, UnicodeDecodeError) as exc:
        notes.append(f"trials.csv could not be read ({type(exc).__name__}); the Optuna study was used")
        return None
    missing = [c for c in ("trial_id", "state", "score") if c not in frame.columns]
    if missing:
        notes.append(f"trials.csv lacks column(s) {', '.join(missing)}; the Optuna study was used")
        return None
    for col in TRIAL_COLUMNS:
        if col not in frame.columns:
            frame[col] = "" if col == "error" else np.nan
    for p in params:
        if p not in frame.columns:
            frame[p] = np.nan
    frame["state"] = frame["state"].fillna("")
    frame["error"] = frame["error"].fillna("")
    return _typed(frame[[*TRIAL_COLUMNS, *params]], params)


def _typed(frame: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    frame = frame.copy()
    for col in ("score", "val_score", "test_score", "epochs", "wall_s"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    frame["repeat"] = pd.to_numeric(frame["repeat"], errors="coerce").fillna(0).astype(int)
    frame["trial_id"] = frame["trial_id"].astype(str)
    for p in params:
        numeric = pd.to_numeric(frame[p], errors="coerce")
        if numeric.notna().sum() == frame[p].notna().sum():  # all present values are numbers
            frame[p] = numeric
    return frame.reset_index(drop=True)


def _n_finished(frame: pd.DataFrame | None) -> int:
    if frame is None:
        return -1
    return int(((frame["state"] == "COMPLETE") & frame["score"].notna()).sum())


def _choose(csv: pd.DataFrame | None, study: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    if csv is None and study is None:
        return _typed(pd.DataFrame(columns=list(TRIAL_COLUMNS)), []), "none"
    if study is None or (csv is not None and _n_finished(csv) >= _n_finished(study)):
        return csv, "trials.csv"
    return study, "optuna.db"


# --- an Optuna study of exactly the analysed trials ----------------------------------------------------------


def analysis_study(sweep: Sweep) -> optuna.Study:
    """An in-memory Optuna study holding this sweep's finished trials (warm-start copies excluded), with one
    distribution per parameter: what Optuna's importance evaluators and plots are given."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=sweep.direction, study_name=sweep.study_name or sweep.label())
    params = [p for p in sweep.params if p in sweep.distributions]
    for _, row in sweep.finished.iterrows():
        # A conditional parameter (searched only `when` another has some value) is absent from some trials.
        values = {p: v for p in params if (v := param_value(row[p], sweep.distributions[p])) is not None}
        dists = {p: sweep.distributions[p] for p in values}
        study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions=dists,
                value=float(row["score"]),
                user_attrs={"trial_id": row["trial_id"], "repeat": int(row["repeat"])},
            )
        )
    return study
