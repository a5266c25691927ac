"""The sweep driver: a Ray Tune experiment with Optuna (TPE, random or grid), ASHA on probe scores, and resume.

``run_sweep(path, out)`` validates the sweep file, checks ``--out`` (``simmtm.rundir``), connects to Ray and checks
that it can hold a trial (``simmtm.ray_session``), optionally seeds the Optuna study from an earlier sweep
(``warm_start``), and runs the trials (``simmtm.sweep.trainable``); ``resume=True`` continues an interrupted sweep
with ``Tuner.restore``. Afterwards it collects the rows, makes the Optuna study agree with them and scores the test
split once for the best configurations (``simmtm.sweep.results``), and writes the tables (``simmtm.sweep.outputs``).

The sweep directory (read by the analysis notebooks; keep it stable):

- ``sweep.yaml``: the resolved sweep file; ``sweep.json``: metric, mode, study name, storage URL, searched keys,
  the search section, method and seed (and ``warm_start``: the earlier sweep whose finished trials seeded the study);
- ``optuna.db``: the Optuna study (SQLite unless ``tune.storage`` names another database, e.g. PostgreSQL);
- ``trials.csv``, ``best.yaml``, ``best/<trial>/`` (the test-scored fine-tunes), ``timing.json``;
- ``tb/<trial>/`` (per-trial TensorBoard: pre-training losses, probe and final scores), ``tb/hparams/``;
- ``confirm/`` and ``confirmation.json``: the confirmation stage (``simmtm.sweep.confirm``): the top configurations
  and the paper's default re-run with fresh paired seeds, its verdict, the seed noise and the probe check;
- ``ray/``: Ray's experiment folder (trial checkpoints and state; ``tune.storage_path`` may move it to shared or
  ``s3://`` storage on a multi-node cluster, where ``--out`` then only holds the tables and the database).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmtm import ray_session
from simmtm.config import RunConfig, load_config
from simmtm.config_keys import get_key
from simmtm.errors import ConfigError, UserError
from simmtm.process_record import RECORD_FILE, stop_recorded
from simmtm.resources import Resources, describe_nodes
from simmtm.rundir import own, prepare_sweep_dir
from simmtm.sweep.confirm import ConfirmOutcome, StageInputs, confirm_sweep
from simmtm.sweep.outputs import (
    SweepMeta,
    TrialRow,
    rank_configurations,
    read_sweep_json,
    read_sweep_yaml,
    write_best_yaml,
    write_hparams,
    write_sweep_json,
    write_sweep_yaml,
    write_trials_csv,
)
from simmtm.sweep.results import collect_rows, reconcile_study, score_test
from simmtm.sweep.resume import Continuation, continue_config, extend_experiment
from simmtm.sweep.spec import (
    PAPER_DEFAULTS,
    SHORT_NAMES,
    SweepSpec,
    TrialSpec,
    first_point,
    first_rung,
    flat_config,
    probe_key,
    resolve_metric,
    sampler_seed,
    search_distributions,
    sweep_spec,
)
from simmtm.sweep.timing import TrialClock, write_timing
from simmtm.sweep.trainable import run_trial
from simmtm.sweep.tune_state import StateSnapshot, refuse_fresh_start, repair_state, snapshot_dir
from simmtm.trackers import Trackers

__all__ = ["run_sweep", "SweepOutcome", "concurrency", "plan_trials", "TrialPlan", "EXPERIMENT_NAME"]

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "ray"  # DIR/ray is Ray's experiment folder
_TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes a multi-worker trial's driver reserves (logical: Ray's "memory" resource)


@dataclass
class SweepOutcome:
    """What a sweep run ended with."""

    out: Path
    rows: list[TrialRow]
    metric: str
    mode: str
    param_keys: list[str]
    finished: bool  # every trial reached a final state
    best: list[TrialRow] = field(default_factory=list)  # the best configuration's repeats
    wall_s: float = 0.0
    overhead_s: float | None = None  # mean orchestration overhead per one-worker trial (driver view - trial's own)
    confirmation: ConfirmOutcome | None = None  # the confirmation stage and probe check (a finished search only)


# --- entry point -----------------------------------------------------------------------------------------------


def run_sweep(
    sweep_file: str | Path | None,
    out: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
    overrides: list[str] | None = None,
    verbose: int = 1,
    warm_start: str | Path | None = None,
) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep in ``sweep_file``, writing everything under ``out``.

    ``resume`` continues the sweep as ``out/sweep.yaml`` saved it (``sweep_file`` may be None); ``overrides`` may then
    only raise ``tune.num_samples`` or set ``tune.time_budget_s`` (``simmtm.sweep.resume``).

    ``address``: the Ray cluster to join; None joins the cluster of the Ray job this driver runs in (``RAY_ADDRESS``
    set), else starts a fresh local Ray (see ``resolve_address``). ``warm_start``: an earlier sweep's directory whose
    finished trials seed the new Optuna study (same parameters, metric and mode; not with a grid).
    """
    started = time.time()
    out = Path(out).resolve()
    resumed = _resumed_config(out, sweep_file, overrides) if resume else None
    if resumed is not None:
        sweep_file, config = resumed.sweep_file, resumed.config
    elif sweep_file is None:
        raise UserError("simmtm sweep: give SWEEP.yaml (--resume --out DIR alone continues from DIR/sweep.yaml)")
    else:
        config = load_config(sweep_file, overrides)
    sweep_file = Path(sweep_file)
    spec = sweep_spec(config, sweep_file)
    task = _check_data(config, spec)
    try:
        metric, mode = resolve_metric(spec.tune, task)
    except ConfigError as exc:
        raise ConfigError(f"{sweep_file}: {exc}") from None
    resolved = config.model_dump(mode="json")
    experiment_dir = _experiment_dir(spec, out)
    owner = sweep_owner(out)
    with own(out):  # one driver per sweep folder; several feed one study only through tune.shared_study
        stop_recorded(out / RECORD_FILE)  # a killed predecessor's Ray, if its watchdog did not get to it
        restoring = prepare_sweep_dir(
            out,
            resolved,
            resume=resume,
            sweep_file=sweep_file,
            earlier=lambda: resolved if resumed is not None else read_sweep_yaml(out),  # resumed: from DIR/sweep.yaml
            can_restore=lambda: _can_restore(experiment_dir),
        )

        storage_url = spec.tune.storage or f"sqlite:///{out / 'optuna.db'}"
        study_name = spec.tune.study_name or out.name
        trackers = Trackers.resolve(  # a missing package fails here
            spec.tune.loggers, study_name=study_name, out=out, log_every_n_steps=spec.tune.log_every_n_steps
        )
        if not restoring and not spec.tune.shared_study:
            _check_study_is_new(storage_url, study_name, sweep_file)
        if warm_start is not None:
            warm_start = _check_warm_start(warm_start, spec, out, metric=metric, mode=mode, restoring=restoring)
        param_keys = spec.search.keys
        already = ray_session.is_connected()
        address, where = ray_session.resolve_address(address, os.environ)
        if not already:
            log.info("ray: %s", where)
        if address is None and not already:
            ray_session.check_resources(spec.resources, nodes=[ray_session.local_node()])  # fail before Ray starts
        started_ray = ray_session.connect(address, record=out / RECORD_FILE)
        try:
            plan = plan_trials(spec, ray_session.alive_nodes(), joined=address is not None, address=address)
            if plan.waiting:
                log.warning(plan.waiting)
            if not restoring:
                out.mkdir(parents=True, exist_ok=True)
                write_sweep_yaml(out, resolved)
                write_sweep_json(
                    out,
                    SweepMeta(
                        metric=metric,
                        mode=mode,
                        study_name=study_name,
                        storage=storage_url,
                        params=param_keys,
                        search_space=spec.search.model_dump(mode="json", exclude_none=True),
                        method=spec.search.method,
                        seed=config.seed,
                        search_seed=sampler_seed(spec, config.seed),
                        probe_metric=probe_key(metric),
                        repeats=spec.tune.repeats,
                        num_samples=spec.tune.resolved_samples(spec.search),
                        resources=spec.resources.model_dump(),
                        warm_start=str(warm_start) if warm_start is not None else None,
                    ),
                )
            else:
                repair_state(experiment_dir, snapshot_dir(out, EXPERIMENT_NAME))  # a kill -9 mid-save: see tune_state
                if resumed is not None and resumed.changes:
                    _extend(out, spec, resumed.changes, resolved, experiment_dir)
            clock = TrialClock(out)
            tuner = _tuner(
                config,
                spec,
                out,
                metric=metric,
                mode=mode,
                storage_url=storage_url,
                study_name=study_name,
                max_concurrent=plan.max_concurrent,
                restoring=restoring,
                clock=clock,
                verbose=verbose,
                warm_start=warm_start,
                owner=owner,
                trackers=trackers,
            )
            with refuse_fresh_start(experiment_dir) if restoring else contextlib.nullcontext():
                tuner.fit()
            rows = collect_rows(experiment_dir, param_keys)
            confirmation = None
            if all(r.state in ("COMPLETE", "PRUNED", "FAILED") for r in rows):
                confirmation = _confirm(
                    config,
                    spec,
                    out,
                    rows,
                    metric=metric,
                    mode=mode,
                    max_concurrent=plan.max_concurrent,
                    trackers=trackers,
                )
        finally:
            if started_ray:
                ray_session.disconnect(record=out / RECORD_FILE)

        rows += reconcile_study(storage_url, study_name, rows, param_keys, owner=owner, shared=spec.tune.shared_study)
        finished = all(r.state in ("COMPLETE", "PRUNED", "FAILED") for r in rows)
        outcome = SweepOutcome(
            out=out,
            rows=rows,
            metric=metric,
            mode=mode,
            param_keys=param_keys,
            finished=finished,
            confirmation=confirmation,
        )
        if finished:
            ranked = rank_configurations(rows, param_keys, mode)
            if ranked:
                outcome.best = ranked[0]
                score_test(ranked[: spec.tune.test_top_k], out, metric=metric)
                verdict = confirmation.verdict if confirmation is not None else None
                write_best_yaml(
                    out / "best.yaml",
                    config.run_dict(),
                    outcome.best,
                    metric=metric,
                    sweep_dir=out,
                    confirmed=verdict if verdict is not None and verdict.status != "insufficient" else None,
                )
        write_trials_csv(out / "trials.csv", rows, param_keys)
        write_hparams(out / "tb", rows, param_keys, metric=metric)
        outcome.wall_s = time.time() - started
        outcome.overhead_s = write_timing(out, rows, wall_s=outcome.wall_s)
        return outcome


def _confirm(
    config: RunConfig,
    spec: SweepSpec,
    out: Path,
    rows: list[TrialRow],
    *,
    metric: str,
    mode: str,
    max_concurrent: int,
    trackers: Trackers | None,
) -> ConfirmOutcome:
    """The confirmation stage after a finished search (``tune.confirm``), on the search's trainable and resources."""
    sched = spec.tune.scheduler
    storage = spec.tune.storage_path or str(out)
    stage = StageInputs(
        out=out,
        metric=metric,
        mode=mode,
        param_keys=spec.search.keys,
        base_seed=config.seed,
        confirm=spec.tune.confirm,
        search_dir=_experiment_dir(spec, out),
        storage_path=storage,
        rung_epoch=first_rung(sched.grace_period, spec.tune.probe_every, config.pretrain.epochs),
        prunes=sched.type == "asha",
        rung=spec.tune.prune_on,
        max_concurrent=max_concurrent,
    )
    trial_spec = TrialSpec.of_sweep(
        config,
        spec,
        metric=metric,
        tb_dir=str(out / "tb"),
        storage_path=f"{storage.rstrip('/')}/confirm",
        trackers=trackers,
    )
    default = {k: PAPER_DEFAULTS.get(k, get_key(config.run_dict(), k)) for k in spec.search.keys}
    return confirm_sweep(
        stage,
        rows,
        trainable=_trainable(spec.resources),
        sweep_entry=trial_spec.model_dump(mode="json"),
        default=default,
        trial_name=_trial_name,
        collect=collect_rows,
        callbacks=trackers.callbacks(stage="confirm") if trackers is not None else (),
    )


# --- resuming --------------------------------------------------------------------------------------------------


def _resumed_config(out: Path, sweep_file: str | Path | None, overrides: list[str] | None) -> Continuation:
    """The sweep as DIR/sweep.yaml saved it, with the ``--set`` values a resume may change (``sweep.resume``)."""
    resumed = continue_config(out, overrides)
    if sweep_file is not None and Path(sweep_file).resolve() != resumed.sweep_file:
        log.info("--resume continues the sweep as %s saved it; %s is not read again", resumed.sweep_file, sweep_file)
    return resumed


def _extend(out: Path, spec: SweepSpec, changes: dict[str, Any], resolved: dict[str, Any], experiment_dir: str) -> None:
    """A resume with a larger tune.num_samples or a new time budget: into Tune's state, sweep.yaml and sweep.json."""
    import dataclasses

    total = spec.tune.resolved_samples(spec.search) * spec.tune.repeats if "tune.num_samples" in changes else None
    extend_experiment(experiment_dir, total_trials=total, time_budget_s=changes.get("tune.time_budget_s"))
    write_sweep_yaml(out, resolved)
    meta = read_sweep_json(out)
    write_sweep_json(out, dataclasses.replace(meta, num_samples=spec.tune.resolved_samples(spec.search)))
    log.info("resuming with %s", ", ".join(f"{k}={v}" for k, v in changes.items()))


# --- checks before any trial -------------------------------------------------------------------------------------


def _check_data(config: RunConfig, spec: SweepSpec) -> str:
    """Load the data (also as the probes see it) and build the model once, so bad input fails before any trial."""
    from simmtm.inputs import load_inputs
    from simmtm.pretrain import build_model
    from simmtm.sweep.trial import probe_config

    inputs = load_inputs(config)
    build_model(config, inputs)
    if spec.tune.probe_overrides:
        probe = probe_config(config, steps=1, val_batches=1, overrides=spec.tune.probe_overrides)
        load_inputs(probe, horizon=probe.finetune.horizons[0], labelled=True)
    return inputs.task


def sweep_owner(out: Path) -> str:
    """Names this driver in the Optuna trials it runs (user attribute ``owner``): host and sweep folder."""
    return f"{socket.gethostname()}:{out}"


def _check_study_is_new(storage_url: str, study_name: str, sweep_file: Path) -> None:
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


def _check_warm_start(
    previous: str | Path, spec: SweepSpec, out: Path, *, metric: str, mode: str, restoring: bool
) -> Path:
    """Fail (UserError, one line) before Ray starts when ``--warm-start`` cannot seed this sweep; return its folder.

    The check copies the earlier trials into a throwaway in-memory study, so every mismatch that would stop the real
    copy in ``_tuner`` (other parameters, metric or direction; not a sweep folder) stops the run here instead.
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

    from simmtm.sweep.warm_start import warm_start_study

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
    total = spec.tune.resolved_samples(spec.search) * spec.tune.repeats
    derived = max(1, worker_slots // spec.resources.workers)
    return max(1, min(spec.tune.max_concurrent_trials or derived, total))


# --- the Tune experiment -----------------------------------------------------------------------------------------


def _can_restore(experiment_dir: str) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(experiment_dir)


def _experiment_dir(spec: SweepSpec, out: Path) -> str:
    base = spec.tune.storage_path or str(out)
    return f"{base.rstrip('/')}/{EXPERIMENT_NAME}"


def _trainable(resources: Resources):
    from ray import tune

    if resources.workers == 1:
        return tune.with_resources(run_trial, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker})
    # A multi-worker trial is a driver that launches a TorchTrainer: it holds no CPU (its workers do), only a
    # token of memory, because Tune needs a non-empty resource request.
    return tune.with_resources(run_trial, {"cpu": 0, "memory": _TRIAL_DRIVER_MEMORY})


def _tuner(
    config: RunConfig,
    spec: SweepSpec,
    out: Path,
    *,
    metric: str,
    mode: str,
    storage_url: str,
    study_name: str,
    max_concurrent: int,
    restoring: bool,
    clock: Any,
    verbose: int,
    warm_start: Path | None = None,
    trackers: Trackers | None = None,
    owner: str = "",
):
    from ray import tune

    from simmtm.sweep.live import TrialEndHParams

    # Save Tune's experiment state every 2 s (instead of >= 10 s), so that a driver killed with -9 loses little;
    # a forced snapshot follows every trial checkpoint anyway (CheckpointConfig(num_to_keep=1)).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Probe results carry the probe score, the final result the sweep's score: no result carries both.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The classic trial table (CLIReporter) shows the searched parameters; the newer output cannot when the
    # searcher, not param_space, defines the space.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    trainable = _trainable(spec.resources)
    path = _experiment_dir(spec, out)
    if restoring:
        log.info("resuming the sweep in %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)

    from simmtm.sweep.search import SweepSearch, open_storage

    searcher = SweepSearch(
        spec.search,
        base_values=flat_config(config.run_dict()),
        metric=metric,
        probe_metric=probe_key(metric),
        mode=mode,
        seed=sampler_seed(spec, config.seed),
        storage=open_storage(storage_url),
        study_name=study_name,
        repeats=spec.tune.repeats,
        first=first_point(spec, config.run_dict()),
        owner=owner,
        shared=spec.tune.shared_study,
    )
    if warm_start is not None:  # checked in run_sweep; a resumed sweep does not get here (no second copy)
        from simmtm.sweep.warm_start import warm_start_study

        warm_start_study(searcher.study, warm_start, search_distributions(spec.search), metric=metric)
    sched = spec.tune.scheduler
    if sched.type == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            metric=probe_key(metric),
            mode=mode,
            max_t=config.pretrain.epochs + 1,
            grace_period=min(sched.grace_period, config.pretrain.epochs),
            reduction_factor=sched.reduction_factor,
        )
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    trial_spec = TrialSpec.of_sweep(
        config, spec, metric=metric, tb_dir=str(out / "tb"), storage_path=path, trackers=trackers
    )
    return tune.Tuner(
        trainable,
        param_space={"sweep": trial_spec.model_dump(mode="json")},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.tune.resolved_samples(spec.search) * spec.tune.repeats,
            max_concurrent_trials=max_concurrent,
            time_budget_s=spec.tune.time_budget_s,
            # One-worker trials run in a reused actor: no process start and no torch import per trial. Not with
            # retries: Tune counts a reused actor that dies while it is being reset for its next trial twice (the
            # actor's failure and its reset task's), so with tune.max_failures 1 the trial ends ERROR, never retried.
            reuse_actors=spec.resources.workers == 1 and spec.tune.max_failures == 0,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=spec.tune.storage_path or str(out),
            failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                clock,
                StateSnapshot(snapshot_dir(out, EXPERIMENT_NAME)),
                TrialEndHParams(out / "tb", spec.search.keys, metric=metric),
                *(trackers.callbacks() if trackers is not None else []),
            ],
            verbose=verbose,
            progress_reporter=_trial_table(spec, metric, mode) if verbose else None,
        ),
    )


def _trial_table(spec: SweepSpec, metric: str, mode: str):
    """Tune's live trial table: the searched parameters (short names), epoch, probe score and final score."""
    from ray.tune import CLIReporter

    params = {k: SHORT_NAMES.get(k, k.split(".")[-1]) for k in spec.search.keys}
    if spec.tune.repeats > 1:
        params["repeat"] = "repeat"
    metrics = {"epoch": "epoch", probe_key(metric): "probe", metric: metric}
    return CLIReporter(
        parameter_columns=params,
        metric_columns=metrics,
        max_report_frequency=10,
        sort_by_metric=False,
        max_progress_rows=40,
        max_error_rows=10,
    )


def _trial_name(trial) -> str:
    return trial.trial_id
