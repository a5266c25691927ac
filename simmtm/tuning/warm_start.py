"""Seed a new Optuna study with the finished trials of an earlier sweep (``simmtm sweep --warm-start DIR``).

The earlier sweep is read through its own files (``sweep.json`` and its Optuna study, ``simmtm.tuning.outputs``).
The copied trials keep their scores and are tagged with the user attribute ``warm_start_from`` (the earlier sweep's
directory) and ``warm_start_trial`` (its trial id): the sampler learns from them, the analysis of the new sweep
leaves them out, and a resumed sweep does not copy them twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from simmtm.errors import UserError
from simmtm.tuning.outputs import WARM_START_ATTR, read_study, read_sweep_json
from simmtm.tuning.space import match_choice, search_distributions

__all__ = ["warm_start_study"]

logger = logging.getLogger(__name__)


def warm_start_study(
    study: optuna.Study,
    previous_dir: str | Path,
    search_space: Mapping[str, BaseDistribution] | Mapping[str, Any],
    *,
    metric: str | None = None,
) -> int:
    """Add the finished trials of the sweep in ``previous_dir`` to ``study``; return how many were added.

    ``search_space`` is the new sweep's space: a mapping of dotted key to Optuna distribution, or the sweep file's
    ``search`` section. Both sweeps must search the same parameters (and, when ``metric`` is given, optimise the
    same metric in the same direction), else ``UserError``. Trials whose values fall outside the new space are
    skipped with a warning; trials already copied (a resumed sweep) are not copied again.
    """
    previous_dir = Path(previous_dir)
    previous = read_sweep_json(previous_dir)
    where = f"--warm-start {previous_dir}"
    dists = _as_distributions(search_space, where)
    _check_comparable(previous, dists, study, metric=metric, where=where)

    earlier = read_study(previous_dir, previous)
    if earlier is None:
        raise UserError(f"{where}: no Optuna study there (no optuna.db, and sweep.json names no reachable database)")
    finished = [
        t
        for t in earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if WARM_START_ATTR not in t.user_attrs and t.value is not None and math.isfinite(t.value)
    ]
    source = str(previous_dir.resolve())
    done = {
        (t.user_attrs.get(WARM_START_ATTR), t.user_attrs.get("warm_start_trial"))
        for t in study.get_trials(deepcopy=False)
    }
    added = skipped = 0
    for t in finished:
        trial_id = str(t.user_attrs.get("trial_id", t.user_attrs.get("tune_trial_id", t.number)))
        if (source, trial_id) in done:
            continue
        params = _inside_space(t.params, dists)
        if params is not None:
            study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: dists[k] for k in params},
                    value=t.value,  # finite: filtered above
                    user_attrs={WARM_START_ATTR: source, "warm_start_trial": trial_id},
                )
            )
            added += 1
        else:
            skipped += 1
    if skipped:
        logger.warning(
            "%s: %d finished trial(s) lie outside this sweep's search space and were not copied", where, skipped
        )
    logger.info("%s: copied %d finished trial(s) into study %s", where, added, study.study_name)
    return added


def _check_comparable(
    previous: Any, dists: Mapping[str, BaseDistribution], study: optuna.Study, *, metric: str | None, where: str
) -> None:
    """UserError (one line) unless the earlier sweep searched the same keys for the same metric and direction."""
    if set(dists) != set(previous.params):
        raise UserError(
            f"{where}: that sweep searched {', '.join(sorted(previous.params)) or 'nothing'} but this one searches "
            f"{', '.join(sorted(dists)) or 'nothing'}; a warm start needs the same parameters"
        )
    if metric is not None and metric != previous.metric:
        raise UserError(
            f"{where}: that sweep optimised {previous.metric}, this one optimises {metric}; scores are not comparable"
        )
    direction = "minimize" if previous.mode == "min" else "maximize"
    if direction != study.direction.name.lower():
        raise UserError(
            f"{where}: that sweep {direction}d {previous.metric}, this study is set to {study.direction.name.lower()}"
        )


def _inside_space(values: Mapping[str, Any], dists: Mapping[str, BaseDistribution]) -> dict[str, Any] | None:
    """A trial's values as this sweep's space holds them; None when one lies outside (conditional keys it did not
    use are left out)."""
    params = {}
    for key, dist in dists.items():
        if key not in values:
            continue  # a conditional parameter this trial did not use
        value = _coerce(values[key], dist)
        if value is None:
            return None
        params[key] = value
    return params


def _as_distributions(space: Mapping[str, Any], where: str) -> dict[str, BaseDistribution]:
    if space and all(isinstance(v, BaseDistribution) for v in space.values()):
        return dict(space)
    dists = search_distributions(space)
    if not dists:
        raise UserError(
            f"{where}: cannot read this sweep's search space (expected Optuna distributions or a search section)"
        )
    return dists


def _coerce(value: Any, dist: BaseDistribution) -> Any:
    """The value as ``dist`` holds it, or None when it lies outside."""
    if isinstance(dist, CategoricalDistribution):
        return match_choice(value.item() if hasattr(value, "item") else value, dist.choices)
    try:
        value = int(round(float(value))) if isinstance(dist, IntDistribution) else float(value)
    except (TypeError, ValueError):
        return None
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    if not dist.low <= value <= dist.high:
        return None
    if dist.step is not None:
        k = (value - dist.low) / dist.step
        if abs(k - round(k)) > 1e-8:
            return None  # off the distribution's grid
    return value
