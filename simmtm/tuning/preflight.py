"""Checks before a sweep runs anything, and how many trials run at once.

Bad input fails here, in one line, before Ray starts or any trial runs: the data and the model (``check_data``), a
study name already taken in a shared database (``check_study_is_new``), an earlier sweep that cannot seed this one
(``check_warm_start``). ``plan_trials`` decides from the nodes that are up how many trials run at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from simmtm.cluster import ray_session
from simmtm.cluster.resources import describe_nodes
from simmtm.config.schema import RunConfig
from simmtm.errors import ConfigError, UserError
from simmtm.tuning.outputs import read_sweep_json
from simmtm.tuning.space import search_distributions
from simmtm.tuning.spec import SweepSpec

__all__ = [
    "check_data",
    "check_study_is_new",
    "check_warm_start",
    "study_exists",
    "TrialPlan",
    "plan_trials",
    "concurrency",
]

log = logging.getLogger(__name__)


def study_exists(storage_url: str, study_name: str) -> bool:
    """Whether the database holds the study with at least one trial (a sweep to resume)."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).exists():
        return False
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return False
    return bool(study.get_trials(deepcopy=False))


def check_data(config: RunConfig, spec: SweepSpec) -> str:
    """Load the data (also as the probes see it) and build the model once, so bad input fails before any trial."""
    # torch: only when a sweep starts (`simmtm sweep --plan` imports this module)
    from simmtm.data.inputs import load_inputs
    from simmtm.train.pretraining import build_simmtm
    from simmtm.tuning.trial import probe_config

    inputs = load_inputs(config)
    build_simmtm(config, seq_len=inputs.seq_len, channels=inputs.series_channels)
    if spec.tune.probe_overrides:
        probe = probe_config(config, steps=1, val_batches=1, overrides=spec.tune.probe_overrides)
        load_inputs(probe, horizon=probe.finetune.horizons[0], labelled=True)
    return inputs.task


def check_study_is_new(storage_url: str, study_name: str, sweep_file: Path) -> None:
    """A fresh sweep must not mix its trials into an existing study of a shared database."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).exists():
        return
    import optuna

    try:
        names = optuna.get_all_study_names(storage_url)
    except Exception as exc:  # unreachable database, bad URL, missing driver
        raise ConfigError(
            f"{sweep_file}: tune.storage: cannot open {storage_url} ({exc.__class__.__name__}: {exc})"
        ) from None
    if study_name in names:
        raise ConfigError(
            f"{sweep_file}: tune.study_name: the database {storage_url} already holds a study '{study_name}'; "
            "set another tune.study_name (or --out), or pass --resume to continue that sweep"
        )


def check_warm_start(
    previous: str | Path, spec: SweepSpec, out: Path, *, metric: str, mode: str, restoring: bool
) -> Path:
    """Fail (UserError, one line) before Ray starts when ``--warm-start`` cannot seed this sweep; return its folder.

    The check copies the earlier trials into a throwaway in-memory study, so every mismatch that would stop the real
    copy in the driver (other parameters, metric or direction; not a sweep folder) stops the run here instead.
    A resumed sweep's study already holds the copies: it must name the same folder, and nothing is copied again.
    """
    previous = Path(previous).resolve()
    if restoring:
        meta = read_sweep_json(out)
        if meta.warm_start != str(previous):
            was = meta.warm_start or "no warm start"
            raise UserError(
                f"--warm-start {previous}: the sweep in {out} was started with {was}; resume it without "
                "--warm-start (its study already holds the copied trials)"
            )
        return previous
    if spec.search.method == "grid":
        raise UserError(
            f"--warm-start {previous}: search.method is grid, which runs every cell anyway; "
            "a warm start needs method tpe or random"
        )
    import optuna

    from simmtm.tuning.warm_start import warm_start_study  # Optuna: only for a warm start

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" on the console
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    if warm_start_study(study, previous, search_distributions(spec.search), metric=metric) == 0:
        log.warning("--warm-start %s: no finished trial to copy; the sweep starts from scratch", previous)
    return previous


@dataclass(frozen=True)
class TrialPlan:
    """How many trials run at once, and the warning when no node can hold a trial yet."""

    max_concurrent: int
    waiting: str | None = None


def plan_trials(
    spec: SweepSpec, nodes: list[dict[str, float]], *, joined: bool, address: str | None = None
) -> TrialPlan:
    """Decide, from the nodes that are up now, whether the sweep can start and how many trials run at once.

    A local Ray (``joined`` False) never grows: ConfigError when no trial could ever start. A joined cluster may
    grow (an autoscaler starts nodes for the pending trials' resource requests, or nodes are still joining), so
    the sweep starts anyway and its first trial waits. Trials at once: ``tune.max_concurrent_trials`` when set,
    else as many as the nodes up now hold, at least 1 (set it on an autoscaling cluster: at start it may have no
    worker node at all).
    """
    try:
        slots = ray_session.check_resources(spec.resources, address=address, nodes=nodes)
    except ConfigError:
        if not joined:
            raise
        waiting = (
            f"resources: a trial needs {spec.resources.per_worker()} but the cluster at {address} has "
            f"{describe_nodes(nodes)} up now; the trials wait for it to grow (an autoscaler starts nodes for "
            "their resource requests)"
        )
        return TrialPlan(concurrency(spec, 0), waiting)
    return TrialPlan(concurrency(spec, slots))


def concurrency(spec: SweepSpec, worker_slots: int) -> int:
    """Trials at once: the configured value, or as many as the cluster's worker slots hold (no idle drivers)."""
    total = spec.tune.planned_trials(spec.search)
    derived = max(1, worker_slots // spec.resources.workers)
    return max(1, min(spec.tune.max_concurrent_trials or derived, total))
