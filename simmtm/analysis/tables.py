"""Tables of a sweep: the top configurations (validation and, where scored, test results) and the failures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simmtm.analysis.load import SHORT_NAMES, Sweep

__all__ = ["top_configurations", "failed_trials"]


def top_configurations(sweep: Sweep, *, k: int = 10) -> pd.DataFrame:
    """The ``k`` best configurations: trials with equal parameters (repeats, seeds) are one row with mean scores."""
    done = sweep.finished
    params = [p for p in sweep.params if p in done.columns]
    if done.empty:
        names = [SHORT_NAMES.get(p, p) for p in params]
        return pd.DataFrame(columns=[*names, "trials", "score", "val_score", "test_score", "best_trial"])
    key = done[params].map(str).agg("|".join, axis=1) if params else pd.Series("", index=done.index)
    rows = []
    for _, group in done.groupby(key, sort=False):
        best = group.iloc[int(np.argmax(sweep.sign * group["score"].to_numpy(float)))]
        row = {SHORT_NAMES.get(p, p): group[p].iloc[0] for p in params}
        row.update(
            trials=len(group),
            score=group["score"].mean(),
            score_std=group["score"].std() if len(group) > 1 else np.nan,
            val_score=group["val_score"].mean(),
            test_score=group["test_score"].mean() if group["test_score"].notna().any() else np.nan,
            best_trial=best["trial_id"],
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values("score", ascending=sweep.mode == "min", kind="stable").head(k).reset_index(drop=True)
    table.index = table.index + 1
    table.index.name = "rank"
    if table["score_std"].isna().all():
        table = table.drop(columns="score_std")
    if table["test_score"].isna().all():
        table = table.drop(columns="test_score")
    return table


def _last_words(error: str, limit: int = 200) -> str:
    """The end of an error text: a traceback ends with the exception (trials.csv keeps it on one line)."""
    last = (error.strip().splitlines() or [""])[-1]
    return last if len(last) <= limit else "..." + last[-limit:]


def failed_trials(sweep: Sweep) -> pd.DataFrame:
    """Failed trials with the end of their error (the exception, when it is a traceback)."""
    t = sweep.trials
    failed = t[t["state"] == "FAILED"]
    errors = failed["error"].fillna("").astype(str).map(_last_words)
    return pd.DataFrame({"trial_id": failed["trial_id"].to_numpy(), "error": errors.to_numpy()})
