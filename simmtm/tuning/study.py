"""A sweep's Optuna study, through Optuna's public API only: the record of what was tried and how it scored.

Every trial the sweep runs is an Optuna trial first (``SweepStudy.ask``): its number names its folder
(``simmtm.tuning.record``), its probe scores are the study's intermediate values (``report``: the rung values that
pruning compares against, after a resume too), and it ends COMPLETE with the full fine-tune's validation score,
PRUNED (no value: a probe score must never rank against a fine-tune), or FAIL with the reason as user attribute
``reason`` (``finish``). A trial still RUNNING in the study when its driver died is handed out again, with the same
number and parameters, before anything new is asked (``resumable``).

Sampling is deterministic per trial number: the sampler that proposes trial ``n`` is seeded from the sweep's seed
and ``n``, so a resumed sweep proposes what an uninterrupted one would have, given the same finished trials.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from simmtm.config.schema import RunConfig
from simmtm.tuning.outputs import FINISHED_STATES, OWNER_ATTR, WARM_START_ATTR
from simmtm.tuning.record import trial_name
from simmtm.tuning.space import first_point, flat_config, sampler_seed
from simmtm.tuning.spec import SearchSpec, SweepSpec, condition_holds

__all__ = ["SweepStudy", "Asked", "DefineByRun", "make_sampler", "open_storage"]
__all__ += ["REASON_ATTR", "NAME_ATTR", "WALL_ATTR", "OPTUNA_STATES"]

log = logging.getLogger(__name__)

REASON_ATTR = "reason"  # why a trial failed (user attribute)
NAME_ATTR = "trial_id"  # the trial's name: its folder, its trials.csv row, its tb/ run (user attribute)
WALL_ATTR = "wall_s"  # the trial's time in Tune, set when it ends (user attribute)
# Each of our trial states (``simmtm.tuning.outputs.STATES``) as the study records it.
OPTUNA_STATES = {
    TrialState.COMPLETE: "COMPLETE",
    TrialState.PRUNED: "PRUNED",
    TrialState.FAIL: "FAILED",
    TrialState.RUNNING: "RUNNING",
    TrialState.WAITING: "PENDING",
}
_FINISHED = tuple(s for s, name in OPTUNA_STATES.items() if name in FINISHED_STATES)


class DefineByRun:
    """Optuna's define-by-run space for the searched keys; conditional keys only when their ``when`` holds."""

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
    """TPE or random, seeded. Grid cells are enqueued.

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
    """An Optuna storage object for a database URL.

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


@dataclass(frozen=True)
class Asked:
    """A trial to run: its Optuna number, searched values and repeat index."""

    number: int
    params: dict[str, Any]
    repeat: int

    @property
    def name(self) -> str:
        return trial_name(self.number)


def _resumable(trial: FrozenTrial) -> bool:
    """A trial that was running when its driver stopped (RUNNING with its parameters): run again, as it was."""
    return bool(trial.params)


def _unproposed(trial: FrozenTrial) -> bool:
    """A trial a driver asked for and died before its parameters were drawn (RUNNING, no parameters). In a shared
    study another driver may be drawing it now; it carries no owner yet, so ``SweepStudy.trials`` leaves it out."""
    return not trial.params and OWNER_ATTR not in trial.user_attrs


class SweepStudy:
    """The study of one sweep (its driver's trials, in a shared study), read and written through public calls."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        *,
        search: SearchSpec,
        base_values: dict[str, Any],
        seed: int,
        mode: str,
        owner: str = "",
        shared: bool = False,
        repeats: int = 1,
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per told trial on the console
        self.storage = storage
        self.name = study_name
        self.search = search
        self.space = DefineByRun(search, base_values)
        self.seed = seed
        self.owner = owner
        self.shared = shared
        self.repeats = repeats
        direction: Literal["minimize", "maximize"] = "minimize" if mode == "min" else "maximize"
        self.study = optuna.create_study(
            study_name=study_name, storage=storage, direction=direction, load_if_exists=True
        )
        self.study_id = storage.get_study_id_from_name(study_name)
        self._ids: dict[int, int] = {}  # trial number -> storage id
        running = self.trials(states=(TrialState.RUNNING,))  # one read: the resumable and the unproposed
        resumed = [
            Asked(t.number, dict(t.params), int(t.user_attrs.get("repeat", 0))) for t in filter(_resumable, running)
        ]
        self._queue = [self._propose_for(t.number) for t in filter(_unproposed, running)] + resumed  # killed asking

    @classmethod
    def of_sweep(
        cls,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        spec: SweepSpec,
        config: RunConfig,
        *,
        mode: str,
        owner: str = "",
        repeats: int = 1,
        start: bool = True,
    ) -> SweepStudy:
        """The study of the sweep ``spec`` over ``config`` (its search, the run's values, the sampler's seed), as
        the driver runs it and ``simmtm sweep --dry-run`` shows it; ``start``: queue the grid's cells or the first
        point (``enqueue_start``)."""
        study = cls(
            storage,
            study_name,
            search=spec.search,
            base_values=flat_config(config.run_dict()),
            seed=sampler_seed(spec, config.seed),
            mode=mode,
            owner=owner,
            shared=spec.tune.shared_study,
            repeats=repeats,
        )
        if start:
            first = first_point(spec, config.run_dict())
            study.enqueue_start(spec.search.grid_cells() if spec.search.method == "grid" else [first] if first else [])
        return study

    # --- what belongs to this sweep ---

    def trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        """This sweep's trials: in a shared study only its own (user attribute ``owner``); never warm-start copies."""
        found = self.study.get_trials(deepcopy=False, states=states)
        return [
            t
            for t in found
            if WARM_START_ATTR not in t.user_attrs and (not self.shared or t.user_attrs.get(OWNER_ATTR) == self.owner)
        ]

    def resumable(self) -> list[FrozenTrial]:
        """Trials that were running when their driver stopped: run again, with their number and parameters."""
        return list(filter(_resumable, self.trials(states=(TrialState.RUNNING,))))

    def finished_count(self) -> int:
        return len(self.trials(states=_FINISHED))

    def enqueue_start(self, cells: Sequence[dict[str, Any]]) -> None:
        """Queue the grid's cells or the first point, each with its repeats (a new study only)."""
        if self.study.get_trials(deepcopy=False):
            return  # a resumed sweep, or a shared study another driver started: queued already
        for params in cells:
            for repeat in range(self.repeats):
                self.study.enqueue_trial(params, user_attrs={"repeat": repeat}, skip_if_exists=False)

    # --- asking and telling ---

    def ask(self) -> Asked:
        """The next trial: a resumable one first, else a queued one (repeats, grid cells), else the sampler's."""
        if self._queue:
            asked = self._queue.pop(0)
            self.storage.set_trial_user_attr(self._id(asked.number), OWNER_ATTR, self.owner)
            return asked
        number = self.storage.get_n_trials(self.study_id)  # the number this trial most likely gets: its seed
        return self._propose(self._seeded(number).ask())

    def _seeded(self, number: int) -> optuna.Study:
        """The study with the sampler of trial ``number`` (seeded by the sweep's seed and the number)."""
        sampler = make_sampler(self.search, self.seed * 100_003 + number)
        return optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler)

    def _propose_for(self, number: int) -> Asked:
        """Draw the parameters of trial ``number``, already in the study, as ``ask`` would have."""
        log.info("optuna: trial %d was asked for by a driver that stopped before drawing it: drawing it now", number)
        return self._propose(optuna.trial.Trial(self._seeded(number), self._id(number)))

    def _propose(self, trial: optuna.Trial) -> Asked:
        """Draw the trial's searched values (its repeats follow it) and name it."""
        self.space(trial)
        attrs = trial.user_attrs
        if "repeat" not in attrs:  # proposed by the sampler: its repeats follow it
            trial.set_user_attr("repeat", 0)
            for repeat in range(1, self.repeats):
                self.study.enqueue_trial(trial.params, user_attrs={"repeat": repeat}, skip_if_exists=False)
        trial.set_user_attr(NAME_ATTR, trial_name(trial.number))
        trial.set_user_attr(OWNER_ATTR, self.owner)
        return Asked(trial.number, dict(trial.params), int(trial.user_attrs.get("repeat", 0)))

    def report(self, number: int, step: int, value: float) -> None:
        """A probe score as the trial's intermediate value at ``step`` (the pre-training epoch)."""
        if not math.isfinite(value):
            return
        try:
            self.storage.set_trial_intermediate_value(self._id(number), step, float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            log.debug("optuna: trial %s finished already; its late probe is not recorded", number)

    def finish(
        self, number: int, state: TrialState, value: float | None = None, *, reason: str = "", wall_s: Any = None
    ) -> None:
        """End a trial as COMPLETE (with its value), PRUNED (no value) or FAIL (with the reason); ``wall_s``: its
        time in Tune (user attribute ``wall_s``)."""
        trial_id = self._id(number)
        if self.storage.get_trial(trial_id).state.is_finished():
            return
        if reason:
            self.storage.set_trial_user_attr(trial_id, REASON_ATTR, reason[:500])
        if isinstance(wall_s, (int, float)):
            self.storage.set_trial_user_attr(trial_id, WALL_ATTR, float(wall_s))
        if state == TrialState.COMPLETE:
            self.study.tell(number, value)
        elif state == TrialState.PRUNED:
            # study.tell would copy the last probe score into ``value``, where COMPLETE trials hold final scores.
            self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        else:
            self.study.tell(number, state=TrialState.FAIL)

    def stop_running(self, reason: str) -> int:
        """End this sweep's running trials as PRUNED with ``reason`` (its time budget ran out); return how many."""
        running = self.resumable()
        for t in running:
            self.finish(t.number, TrialState.PRUNED, reason=reason)
        self._queue.clear()
        return len(running)

    def _id(self, number: int) -> int:
        if number not in self._ids:
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self._ids[number]
