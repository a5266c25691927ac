"""The sweep file schema: a run config plus ``search``, ``tune`` and ``resources``.

Searched parameters are addressed by their dotted config key (``pretrain.mask_ratio``); every bound, choice and grid
value is checked by putting it into the run config and validating that, so a sweep can never propose a value the
run would reject. ``simmtm.tuning.sections`` turns any problem into one ``ConfigError`` line that names the file
and the key; ``simmtm.tuning.space`` holds what Optuna sees of the search.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simmtm.cluster.resources import Resources
from simmtm.config.keys import SHORT_NAMES, apply_params, get_key, known_keys, set_key
from simmtm.config.schema import SWEEP_SECTIONS, RunConfig, parse_config
from simmtm.train.trackers import Trackers

if TYPE_CHECKING:
    pass

__all__ = [
    "ParamSpec",
    "SearchSpec",
    "SchedulerSpec",
    "TuneSpec",
    "ResourcesSpec",
    "SweepSpec",
    "TrialSpec",
    "probe_key",
    "searchable_keys",
    "get_key",
    "set_key",
    "condition_holds",
    "PAPER_DEFAULTS",
    "SHORT_NAMES",
    "apply_params",
]

# The first trial of a TPE/random sweep: the paper's settings (Dong et al. 2023) for r, M and tau; any other
# searched key starts from the schema default.
PAPER_DEFAULTS = {"pretrain.mask_ratio": 0.5, "pretrain.num_masked": 3, "pretrain.temperature": 0.2}

# Keys a sweep may not search: they decide where and how a trial runs, not what it learns.
NOT_SEARCHABLE = {"device", "threads", "data.name", "data.path", "data.task", "data.num_workers"}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ParamSpec(_Spec):
    """One searched parameter: a float or int range, or categorical choices, optionally conditional."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)  # discretisation of a float/int range
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None  # only searched when these keys have these values (a value or a list)

    @model_validator(mode="after")
    def _coherent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes 'choices' only, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices' (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got low={self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole-number bounds (got low={self.low}, high={self.high})")
        if self.step is not None:
            self._check_step(self.low, self.high, self.step)
        return self

    def _check_step(self, low: float, high: float, step: float) -> None:
        # Optuna would not refuse these: it rounds an int step, and silently moves `high` down to the last multiple
        # of the step (a step wider than the range leaves the single value `low`).
        if self.type == "int" and step != int(step):
            raise ValueError(f"an int parameter needs a whole-number step (got step={step})")
        if step > high - low:
            raise ValueError(f"step ({step}) is wider than the range {low}..{high}: it would leave only {low}")
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, n):
            raise ValueError(
                f"high - low ({high - low:g}) is not a multiple of step ({step}); "
                f"Optuna would lower high to {low + math.floor(n) * step:g}"
            )

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a float or int range (validated: both set)."""
        assert self.low is not None and self.high is not None, "a categorical parameter has no bounds"
        return self.low, self.high

    def values_to_check(self) -> list[Any]:
        """Values whose validity against the run config decides whether the range is legal."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(v) for v in self.bounds]


class SearchSpec(_Spec):
    """What is searched and how: TPE (Optuna's default), random, or a full grid."""

    method: Literal["tpe", "random", "grid"] = "tpe"
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | None = None  # method: grid; every combination is run (times tune.repeats)
    first: Literal["paper", "config", "none"] = (
        "paper"  # the first TPE/random trial: paper defaults, the run config's own values, or none
    )
    seed: int | None = (
        None  # the sampler's seed; None: the run's seed. Changing it re-draws the search, not the training
    )
    # TPE: trials drawn at random before its model of the surface takes over (Optuna's n_startup_trials; None: its
    # default of 10, which a sweep of 12 trials would spend almost entirely at random)
    startup_trials: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _method_matches(self) -> SearchSpec:
        if self.method == "grid":
            if not self.grid:
                raise ValueError("method: grid needs a 'grid' mapping of dotted keys to value lists")
            if self.params:
                raise ValueError("method: grid takes its values from 'grid', not 'params' (remove 'params')")
            for key, values in self.grid.items():
                if not values:
                    raise ValueError(f"grid.{key}: needs at least one value")
                if len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"grid.{key}: repeated values {values}")
        else:
            if self.grid:
                raise ValueError(f"'grid' is only read with method: grid (method is {self.method})")
            if not self.params:
                raise ValueError(f"method: {self.method} needs at least one entry under 'params'")
        return self

    @property
    def keys(self) -> list[str]:
        """The searched dotted keys, in file order."""
        return list(self.grid or {}) if self.method == "grid" else list(self.params)

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every combination of the grid values (method: grid)."""
        grid = self.grid or {}
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


class SchedulerSpec(_Spec):
    """Early stopping on the probe score: ASHA (asynchronous successive halving) or none (fifo)."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # pre-training epochs before a trial can be stopped
    reduction_factor: float = Field(2.0, gt=1)


class ConfirmSpec(_Spec):
    """The search's top ``top_k`` and the paper's default re-run with ``seeds`` fresh paired seeds (0: off; auto: rounds
    until the interval's half-width is ``target_half_width``, else narrower than the difference, or ``max_seeds``).
    ``noise_from``: an earlier sweep's folder whose stored seed noise plans the seeds when this search has no repeats
    (default: the ``--warm-start`` folder, if any)."""

    top_k: int = Field(2, ge=1)
    seeds: Annotated[int, Field(ge=0)] | Literal["auto"] = 3
    max_seeds: int = Field(10, ge=3)
    target_half_width: float | None = Field(None, gt=0)
    noise_from: str | None = Field(None, min_length=1)


Tracker = Literal["tensorboard", "wandb", "mlflow"]


def _default_loggers() -> list[Tracker]:
    return ["tensorboard"]


class TuneSpec(_Spec):
    """How many trials, how many at once, and how each is scored along the way."""

    num_samples: int | None = Field(None, ge=1)  # configurations (tpe/random; default 8); grid: every cell
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the cluster's resources allow
    time_budget_s: float | None = Field(None, gt=0)
    repeats: int = Field(1, ge=1)  # seeds per configuration (seed, seed+1, ...)
    probe_every: int = Field(1, ge=1)  # pre-training epochs between probe scores
    probe_steps: int = Field(50, ge=1)  # optimiser steps of each probe's head
    probe_val_batches: int = Field(1, ge=1)  # the probe's per-epoch validation cap (its score uses the full split)
    probe_overrides: dict[str, Any] = Field(
        default_factory=dict
    )  # dotted keys set for probes only (e.g. data.features: S)
    metric: str | None = None  # None: val_mse (forecasting) or val_accuracy (classification)
    mode: Literal["min", "max"] | None = None  # None: min for mse/mae/log_loss, max for accuracy/f1
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    # The rung score ASHA prunes on: a linear probe (frozen encoder) or a short fine-tune of the same length.
    prune_on: Literal["probe", "finetune"] = "probe"
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    max_failures: int = Field(0, ge=0)  # retries of a failed trial (a NaN loss is deterministic: default none)
    test_top_k: int = Field(1, ge=0)  # configurations whose test score is computed once, after the sweep
    study_name: str | None = None  # None: the name of --out
    storage: str | None = None  # an Optuna database URL; None: sqlite:///DIR/optuna.db
    # Several drivers (each with its own --out) feed one study in `storage` on purpose; see README "Shared studies".
    shared_study: bool = False

    @model_validator(mode="after")
    def _shared_needs_storage(self) -> TuneSpec:
        if self.shared_study and (self.storage is None or self.study_name is None):
            raise ValueError(
                "shared_study: true needs tune.storage (the database every driver uses) and "
                "tune.study_name (the study they share)"
            )
        return self

    storage_path: str | None = None  # Ray's experiment storage; None: DIR (use shared storage or s3:// on a cluster)
    # experiment trackers (simmtm.train.trackers): TensorBoard is always written; wandb and mlflow add Ray's callbacks
    loggers: list[Tracker] = Field(default_factory=_default_loggers)
    # wandb/mlflow: optimiser steps between the per-step pre-training losses a trial sends them (1: every step)
    log_every_n_steps: int = Field(1, ge=1)

    def resolved_samples(self, search: SearchSpec) -> int:
        """Configurations to try: num_samples, or the grid's cell count."""
        if search.method == "grid":
            return len(search.grid_cells())
        return self.num_samples or 8

    def planned_trials(self, search: SearchSpec) -> int:
        """Trials the search runs: each configuration ``repeats`` times."""
        return self.resolved_samples(search) * self.repeats


# What one trial occupies: ``workers`` data-parallel processes with these CPUs and GPUs each.
ResourcesSpec = Resources


class SweepSpec(_Spec):
    search: SearchSpec
    tune: TuneSpec = Field(default_factory=TuneSpec)
    resources: Resources = Field(default_factory=Resources)


def probe_key(metric: str) -> str:
    """The name under which probe scores are reported (``probe_val_mse``): ASHA prunes on it."""
    return f"probe_{metric}"


def first_rung(grace_period: int, probe_every: int, epochs: int) -> int:
    """The pre-training epoch of the first rung score ASHA compares (and the probe check reads): the first probed
    epoch at or after the grace period. Trials probe every ``probe_every`` epochs and at their last; ASHA counts a
    report at any epoch >= its milestone, so with grace 1 and probes every 5 epochs the first rung is epoch 5."""
    grace = max(1, min(grace_period, epochs))
    return min(epochs, -(-grace // probe_every) * probe_every)


_TUNE_DEFAULTS = TuneSpec()


class TrialSpec(_Spec):
    """What every trial of a sweep shares (all but its searched values and repeat index), frozen.

    The driver builds it once from the sweep file (``of_sweep``); it travels to the trials as plain data and is
    validated again where a trial starts. Its defaults are the sweep file's (``TuneSpec``), for tests and tools
    that run a trial by hand.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: dict[str, Any]  # the base run config (sweep sections left out)
    metric: str
    probe_every: int = Field(_TUNE_DEFAULTS.probe_every, ge=1)
    probe_steps: int = Field(_TUNE_DEFAULTS.probe_steps, ge=1)
    probe_val_batches: int = Field(_TUNE_DEFAULTS.probe_val_batches, ge=1)
    probe_overrides: dict[str, Any] = Field(default_factory=dict)
    prune_on: Literal["probe", "finetune"] = _TUNE_DEFAULTS.prune_on
    max_failures: int = Field(_TUNE_DEFAULTS.max_failures, ge=0)
    resources: Resources = Field(default_factory=Resources)
    tb_dir: str | None = None  # per-trial TensorBoard scores under tb_dir/<trial id>; None: none
    storage_path: str | None = None  # the sweep's storage root: trial folders in <root>/trials; None: none (by hand)
    trackers: Trackers | None = None  # W&B/MLflow runs that take the per-step pre-training losses; None: none
    score_test: bool = False  # the final fine-tune also scores the test split once (confirmation runs)

    @classmethod
    def of_sweep(
        cls,
        config: RunConfig,
        spec: SweepSpec,
        *,
        metric: str,
        tb_dir: str | None,
        storage_path: str | None,
        trackers: Trackers | None = None,
    ) -> TrialSpec:
        tune = spec.tune
        return cls(
            run=config.run_dict(),
            metric=metric,
            probe_every=tune.probe_every,
            probe_steps=tune.probe_steps,
            probe_val_batches=tune.probe_val_batches,
            probe_overrides=tune.probe_overrides,
            prune_on=tune.prune_on,
            max_failures=tune.max_failures,
            resources=spec.resources,
            tb_dir=tb_dir,
            storage_path=storage_path,
            trackers=trackers if trackers is not None and trackers.active else None,
        )

    @property
    def probe_metric(self) -> str:
        return probe_key(self.metric)

    def run_config(self, params: Mapping[str, Any], repeat: int, *, pin_threads: bool = True) -> RunConfig:
        """The run config one trial trains with: base run + searched values, seed shifted by the repeat index.

        ``pin_threads``: each worker uses as many torch threads as it holds CPUs (no oversubscription when several
        trials share a machine).
        """
        raw = apply_params(self.run, params)
        raw["seed"] = int(raw.get("seed", 0)) + repeat
        if pin_threads:
            raw["threads"] = max(1, int(self.resources.cpus_per_worker))
        return parse_config(raw, source="trial config")


# --- dotted keys ---------------------------------------------------------------------------------------------


def searchable_keys() -> list[str]:
    """Leaf keys of the run config that a sweep may search."""
    sections = {"data", "model", "pretrain", "finetune"}
    leaves = [k for k in known_keys(RunConfig) if k not in sections and k.split(".")[0] not in SWEEP_SECTIONS]
    return [k for k in leaves if k not in NOT_SEARCHABLE]


def condition_holds(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """True when every ``when`` key has (one of) the required value(s) in ``values``."""
    for key, wanted in (when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if values.get(key) not in allowed:
            return False
    return True
