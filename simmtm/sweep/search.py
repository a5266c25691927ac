"""The Optuna side of a sweep: Ray's ``OptunaSearch`` with a persistent study, repeats, and honest trial states.

Ray's ``OptunaSearch`` tells Optuna the *last* reported value of a trial, so a trial that ASHA stopped after its
first probe would enter the study as COMPLETE with a probe score. ``SweepSearch`` keeps probe scores as Optuna
intermediate values and ends a trial as

- COMPLETE with the full fine-tune's validation score, when the trial reported its final result,
- PRUNED when it stopped before that (ASHA), and
- FAIL when it raised (NaN loss, a dead process).

Every Optuna trial carries user attributes ``tune_trial_id`` and ``repeat``, so the study and Tune's results join
one to one. Repeats (seeds per configuration) are enqueued copies of a configuration; a grid is a queue of all its
cells.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from simmtm.sweep.outputs import OWNER_ATTR
from simmtm.sweep.spec import SearchSpec, condition_holds, search_distributions

__all__ = ["tell_pruned", "SweepSearch", "DefineByRun", "make_sampler", "open_storage", "search_distributions"]

log = logging.getLogger(__name__)


class DefineByRun:
    """Optuna's define-by-run space for the searched keys; conditional keys only when their ``when`` holds.

    A class (not a closure) so that Tune can pickle the searcher into its experiment checkpoint.
    """

    def __init__(self, search: SearchSpec, base_values: dict[str, Any]) -> None:
        self.search = search
        self.base_values = base_values  # dotted key -> value of the run config, for `when` on unsearched keys

    def __call__(self, trial: optuna.Trial) -> None:
        if self.search.method == "grid":  # the cells are enqueued; numeric axes keep numeric distributions
            for key, values in (self.search.grid or {}).items():
                if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    trial.suggest_int(key, min(values), max(values))
                elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    trial.suggest_float(key, float(min(values)), float(max(values)))
                else:
                    trial.suggest_categorical(key, values)
            return
        chosen: dict[str, Any] = {}
        for key, p in self.search.params.items():  # the same distributions as search_distributions
            if not condition_holds(p.when, {**self.base_values, **chosen}):
                continue
            if p.type == "categorical":
                chosen[key] = trial.suggest_categorical(key, p.choices or [])
            elif p.type == "int":
                low, high = p.bounds
                chosen[key] = trial.suggest_int(key, int(low), int(high), log=p.log, step=int(p.step or 1))
            else:
                low, high = p.bounds
                chosen[key] = trial.suggest_float(key, low, high, log=p.log, step=p.step)


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """TPE or random, seeded from the sweep's seed. Grid cells are enqueued.

    TPE starts with ``search.startup_trials`` random draws (Optuna's default when unset). With conditional
    parameters it is multivariate and groups the sub-spaces (``group=True``) instead of falling back to independent
    sampling for every conditional key.
    """
    if search.method != "tpe":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = 10 if search.startup_trials is None else search.startup_trials  # 10: Optuna's default
    if any(p.when for p in search.params.values()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def open_storage(url: str, *, attempts: int = 6) -> optuna.storages.BaseStorage:
    """An Optuna storage object for a database URL (OptunaSearch takes an object, not a URL).

    Two drivers of one shared study that start at the same moment both create the schema of a new database; the
    loser's CREATE TABLE fails with "already exists", or its schema-version row with a UNIQUE failure on
    alembic_version (SQLite). The schema is then there: open it again."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # sqlalchemy's OperationalError, possibly wrapped by Optuna
            racing = "already exists" in str(exc) or "alembic_version" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def tell_pruned(study: optuna.Study, number: int) -> None:
    """Finish a trial as PRUNED with no value. ``study.tell`` would copy its last intermediate value (a probe score)
    into ``value``, where COMPLETE trials hold final scores: sorting the study by value would then rank a probe
    against a fine-tune. TPE reads a pruned trial's intermediate values, not its value, so the sampler sees the same."""
    # One lookup by number: listing the study's trials for it cost O(trials) per pruned trial (a sweep's ASHA prunes
    # about half of them), O(trials^2) over a sweep.
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if not study._storage.set_trial_state_values(trial_id, TrialState.PRUNED):
        raise RuntimeError(f"trial {number} was already finished")


class SweepSearch(OptunaSearch):
    """OptunaSearch that records pruned trials as PRUNED, failed ones as FAIL, and runs repeats and grids."""

    def __init__(
        self,
        search: SearchSpec,
        *,
        base_values: dict[str, Any],
        metric: str,
        probe_metric: str,
        mode: str,
        seed: int,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        repeats: int = 1,
        first: dict[str, Any] | None = None,
        owner: str = "",
        shared: bool = False,
    ) -> None:
        super().__init__(
            space=DefineByRun(search, base_values),
            metric=metric,
            mode=mode,
            sampler=make_sampler(search, seed),
            study_name=study_name,
            storage=storage,
        )
        self._probe_metric = probe_metric
        self._reported: dict[str, set[int]] = {}  # trial id -> steps already given to Optuna
        self._repeats = repeats
        self._owner = owner
        if shared and self._ot_study.get_trials(deepcopy=False):
            return  # a shared study another driver started: its grid or first point is queued already
        if search.method == "grid":
            for cell in search.grid_cells():
                self._enqueue(cell)
        elif first:
            self._enqueue(first)

    def _enqueue(self, params: dict[str, Any]) -> None:
        for repeat in range(self._repeats):
            self._ot_study.enqueue_trial(params, user_attrs={"repeat": repeat}, skip_if_exists=False)

    # --- Tune's searcher interface ---

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        attrs = ot_trial.user_attrs
        if "repeat" not in attrs:  # proposed by the sampler: its repeats follow it
            ot_trial.set_user_attr("repeat", 0)
            for repeat in range(1, self._repeats):
                self._ot_study.enqueue_trial(ot_trial.params, user_attrs={"repeat": repeat}, skip_if_exists=False)
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        ot_trial.set_user_attr(OWNER_ATTR, self._owner)
        return {**config, "repeat": int(ot_trial.user_attrs.get("repeat", 0))}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self._probe_metric)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or value is None or not math.isfinite(value):
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        reported = self._reported.setdefault(trial_id, set())
        if step not in reported:
            try:
                ot_trial.report(float(value), step)
            except optuna.exceptions.UpdateFinishedTrialError:  # told before the driver stopped; Tune's state is older
                log.debug("optuna: trial %s already finished; its resumed result is not reported again", trial_id)
            reported.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        value = (result or {}).get(self.metric)
        self.on_trial_result(trial_id, result or {})  # Tune skips the searcher for the result that stopped a trial
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # told before the driver stopped; Tune's saved state is older
            return
        if error:
            state, values = TrialState.FAIL, None
        elif (result or {}).get("stage") == "final" and value is not None and math.isfinite(value):
            state, values = TrialState.COMPLETE, float(value)
        else:
            state, values = TrialState.PRUNED, None
        try:
            if state == TrialState.PRUNED:
                tell_pruned(self._ot_study, ot_trial.number)
            else:
                self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # already finished (told before an interruption), or a storage hiccup
            log.warning("optuna: could not record trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study
