"""Ray Tune as the engine that runs a sweep's trials; the record it runs them for is the sweep's own.

``run_search`` runs the trials that the study still owes (those a stopped driver left running first, each from its
own folder) in a fresh Tune run; ``run_points`` runs named fixed configurations (the confirmation stage) that have
no result in their folders yet. Each Tune run starts in an empty experiment folder: nothing of an earlier run's Tune
state is read, so a resumed sweep is simply a new Tune run over the same study and trial folders.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from simmtm.cluster.resources import Resources
from simmtm.tuning.plan import asha_rungs
from simmtm.tuning.record import name_of
from simmtm.tuning.search import Rungs, StudyPruner, SweepSearch
from simmtm.tuning.spec import SweepSpec, probe_key
from simmtm.tuning.study import SweepStudy

__all__ = ["SEARCH_EXPERIMENT", "CONFIRM_EXPERIMENT", "run_search", "run_points", "make_pruner", "trainable"]

log = logging.getLogger(__name__)

SEARCH_EXPERIMENT = "ray"  # <storage>/ray: Tune's experiment folder of the search (disposable)
CONFIRM_EXPERIMENT = "confirm"  # <storage>/confirm: the confirmation's (disposable)
_TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes a multi-worker trial's driver reserves (logical: Ray's "memory" resource)


def trainable(resources: Resources):
    from ray import tune

    from simmtm.tuning.trainable import run_trial  # lazy: torch, only when trials are to run

    if resources.workers == 1:
        return tune.with_resources(run_trial, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker})
    # A multi-worker trial is a driver that launches a TorchTrainer: it holds no CPU (its workers do), only a
    # token of memory, because Tune needs a non-empty resource request.
    return tune.with_resources(run_trial, {"cpu": 0, "memory": _TRIAL_DRIVER_MEMORY})


def run_search(
    study: SweepStudy,
    pruner: StudyPruner,
    searcher: SweepSearch,
    *,
    spec: SweepSpec,
    sweep_entry: Mapping[str, Any],
    storage_root: str,
    planned: int,
    max_concurrent: int,
    callbacks: Sequence[Any] = (),
    reporter: Any = None,
    verbose: int = 1,
    trainable_fn: Any = None,
) -> bool:
    """Run what the study still owes of ``planned`` trials: resumable ones first, then new ones. Return whether
    ``tune.time_budget_s`` ran out (Tune then stops the trials still running). ``trainable_fn``: Tune's trainable
    (default: ``trainable(spec.resources)``; a benchmark passes a synthetic one)."""
    from ray import tune

    remaining = planned - study.finished_count()
    if remaining <= 0:
        log.info("every planned trial has finished; nothing left to search")
        return False
    tuner = tune.Tuner(
        trainable_fn or trainable(spec.resources),
        param_space={"sweep": dict(sweep_entry)},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=pruner,
            num_samples=remaining,
            max_concurrent_trials=max_concurrent,
            time_budget_s=spec.tune.time_budget_s,
            reuse_actors=_reuse_actors(spec.resources, spec.tune.max_failures),
            trial_name_creator=name_of,
            trial_dirname_creator=name_of,
        ),
        run_config=_run_config(
            SEARCH_EXPERIMENT, storage_root, spec.tune.max_failures, callbacks, verbose=verbose, reporter=reporter
        ),
    )
    started = time.monotonic()
    tuner.fit()
    budget = spec.tune.time_budget_s
    return budget is not None and time.monotonic() - started >= budget


def run_points(
    points: Mapping[str, Mapping[str, Any]],
    *,
    resources: Resources,
    sweep_entry: Mapping[str, Any],
    storage_root: str,
    max_concurrent: int,
    max_failures: int = 0,
    callbacks: Sequence[Any] = (),
    trainable_fn: Any = None,
) -> None:
    """Run named fixed configurations (``points``: name -> repeat and values), each to its end."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if not points:
        return
    configs = [{**p, "name": name} for name, p in points.items()]
    tuner = tune.Tuner(
        trainable_fn or trainable(resources),
        param_space=_choices(sweep_entry, configs),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=configs, max_concurrent=max_concurrent),
            num_samples=len(configs),
            reuse_actors=_reuse_actors(resources, max_failures),
            trial_name_creator=name_of,
            trial_dirname_creator=name_of,
        ),
        run_config=_run_config(CONFIRM_EXPERIMENT, storage_root, max_failures, callbacks, verbose=0),
    )
    tuner.fit()


def _reuse_actors(resources: Resources, max_failures: int) -> bool:
    """One-worker trials (search and confirmation runs alike) run in reused actors: no process start and no torch
    import per trial. Not with retries: Tune counts a reused actor that dies while it is being reset for its next trial
    twice (the actor's failure and its reset task's): with max_failures 1 the trial would end ERROR, never retried."""
    return resources.workers == 1 and max_failures == 0


def _choices(sweep_entry: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every key the points set, as a choice over its values (Tune only presets keys that its space holds)."""
    from ray import tune

    space: dict[str, Any] = {"sweep": dict(sweep_entry)}
    for key in sorted({k for p in points for k in p}):
        values: list[Any] = []
        for p in points:
            if key in p and p[key] not in values:
                values.append(p[key])
        space[key] = tune.choice(values)
    return space


def _run_config(name: str, storage_root: str, max_failures: int, callbacks, *, verbose: int, reporter: Any = None):
    from ray import tune

    # Probe results carry the probe score, the final result the sweep's score: no result carries both.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The classic trial table (CLIReporter) shows the searched parameters; the newer output cannot when the
    # searcher, not param_space, defines the space.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    _empty_experiment(f"{storage_root.rstrip('/')}/{name}")
    return tune.RunConfig(
        name=name,
        storage_path=storage_root,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        callbacks=list(callbacks),
        verbose=verbose,
        progress_reporter=reporter,
    )


def _empty_experiment(path: str) -> None:
    """An earlier Tune run's folder goes: a new Tune run never reads it (and must not mix its files into it)."""
    local = path.removeprefix("file://")
    if "://" not in local:
        shutil.rmtree(local, ignore_errors=True)
        return
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(base).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(base)


def make_pruner(study: SweepStudy, spec: SweepSpec, *, metric: str, mode: str, epochs: int) -> StudyPruner:
    """The scheduler: ASHA on the study's rung values (``tune.scheduler.type: asha``), or none (``fifo``)."""
    milestones = asha_rungs(spec, epochs)
    rungs = None
    if milestones is not None:
        rungs = Rungs(milestones, reduction_factor=spec.tune.scheduler.reduction_factor, mode=mode)
    return StudyPruner(study, probe_key(metric), rungs)
