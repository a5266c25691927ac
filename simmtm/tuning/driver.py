"""The sweep driver: an Optuna study (TPE, random or grid) whose trials Ray Tune runs, ASHA on probe scores, resume.

``run_sweep(path, out)`` validates the sweep file, checks ``--out`` (``outdir.rundir``), connects to Ray and checks
that it can hold a trial (``simmtm.cluster.ray_session``), optionally seeds the Optuna study from an earlier sweep
(``warm_start``), and runs the trials (``simmtm.tuning.engine``). The sweep's record is its own: the study and one
folder per trial (``simmtm.tuning.record``); ``resume=True`` runs a fresh Tune run over that record, so Ray's folder
may be deleted between the two. Afterwards it reads the rows from the record, runs the confirmation stage, scores the
test split once for the best configurations (``simmtm.tuning.results``) and writes the tables
(``simmtm.tuning.outputs``).

The sweep directory (read by the analysis notebooks; keep it stable):

- ``sweep.yaml``: the resolved sweep file; ``sweep.json``: metric, mode, study name, storage URL, searched keys,
  the search section, method and seed (and ``warm_start``: the earlier sweep whose finished trials seeded the study);
- ``optuna.db``: the Optuna study (SQLite unless ``tune.storage`` names another database, e.g. PostgreSQL);
- ``trials/<trial>/``: each trial's checkpoint, final result and error (under ``tune.storage_path`` when set);
- ``trials.csv``, ``best.yaml``, ``best/<trial>/`` (the test-scored fine-tunes), ``timing.json``;
- ``tb/<trial>/`` (per-trial TensorBoard: pre-training losses, probe and final scores), ``tb/hparams/``;
- ``confirmation.json``: the confirmation stage (``confirm_stage``): the top configurations and the paper's
  default re-run with fresh paired seeds (``trials/confirm-*``), its verdict, the seed noise and the probe check;
- ``ray/``, ``confirm/``: Ray Tune's experiment folders of the last run (disposable: nothing reads them back).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmtm.cluster import ray_session
from simmtm.config.keys import get_key
from simmtm.config.schema import RunConfig, load_config
from simmtm.errors import ConfigError, UserError
from simmtm.outdir.process_record import RECORD_FILE, stop_recorded
from simmtm.outdir.rundir import own, prepare_sweep_dir
from simmtm.train.trackers import Trackers
from simmtm.tuning import engine
from simmtm.tuning.confirm_stage import ConfirmOutcome, StageInputs, check_noise_from, confirm_sweep
from simmtm.tuning.live import TrialEndHParams
from simmtm.tuning.outputs import (
    FINISHED_STATES,
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
from simmtm.tuning.preflight import (
    TrialPlan,
    check_data,
    check_study_is_new,
    check_warm_start,
    concurrency,
    plan_trials,
    study_exists,
)
from simmtm.tuning.progress import trial_table
from simmtm.tuning.record import TrialStore, name_of, trials_root
from simmtm.tuning.results import named_rows, score_test, study_rows
from simmtm.tuning.resume import continue_config
from simmtm.tuning.search import SweepSearch
from simmtm.tuning.sections import resolve_metric, sweep_spec
from simmtm.tuning.space import sampler_seed, search_distributions
from simmtm.tuning.spec import PAPER_DEFAULTS, SweepSpec, TrialSpec, first_rung, probe_key
from simmtm.tuning.study import SweepStudy, open_storage
from simmtm.tuning.timing import TrialClock, write_timing
from simmtm.tuning.warm_start import warm_start_study

__all__ = ["run_sweep", "SweepOutcome", "concurrency", "plan_trials", "TrialPlan", "sweep_owner"]

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a sweep run ended with."""

    out: Path
    rows: list[TrialRow]
    metric: str
    mode: str
    param_keys: list[str]
    finished: bool  # the search ran its course (every planned trial, or the time budget) and each trial ended
    best: list[TrialRow] = field(default_factory=list)  # the best configuration's repeats
    wall_s: float = 0.0
    overhead_s: float | None = None  # mean orchestration overhead per one-worker trial (driver view - trial's own)
    confirmation: ConfirmOutcome | None = None  # the confirmation stage and probe check (a finished search only)


@dataclass(frozen=True)
class _Sweep:
    """One sweep as this driver runs it: the resolved file and where its record lives."""

    config: RunConfig
    spec: SweepSpec
    file: Path
    out: Path
    metric: str
    mode: str
    storage_url: str  # the Optuna database
    study_name: str
    root: str  # where trial folders and Tune's folders go: --out, or tune.storage_path
    changes: dict[str, Any] = field(default_factory=dict)  # --resume --set: what a resume changed

    @property
    def store(self) -> TrialStore:
        return TrialStore(trials_root(self.root))

    def trial_spec(self, trackers: Trackers | None, *, confirm: bool = False) -> TrialSpec:
        spec = TrialSpec.of_sweep(
            self.config, self.spec, metric=self.metric, tb_dir=str(self.out / "tb"), storage_path=self.root,
            trackers=trackers,
        )  # fmt: skip
        return spec.model_copy(update={"score_test": True}) if confirm else spec


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
    only raise ``tune.num_samples`` or set ``tune.time_budget_s`` (``simmtm.tuning.resume``).

    ``address``: the Ray cluster to join; None joins the cluster of the Ray job this driver runs in (``RAY_ADDRESS``
    set), else starts a fresh local Ray (see ``resolve_address``). ``warm_start``: an earlier sweep's directory whose
    finished trials seed the new Optuna study (same parameters, metric and mode; not with a grid).
    """
    started = time.time()
    sweep = _resolve(Path(out).resolve(), sweep_file, overrides, resume)
    out = sweep.out
    with own(out):  # one driver per sweep folder; several feed one study only through tune.shared_study
        stop_recorded(out / RECORD_FILE)  # a killed predecessor's Ray, if its watchdog did not get to it
        resolved = sweep.config.model_dump(mode="json")
        restoring = prepare_sweep_dir(
            out,
            resolved,
            resume=resume,
            sweep_file=sweep.file,
            earlier=lambda: resolved if resume else read_sweep_yaml(out),  # resumed: from DIR/sweep.yaml
            can_restore=lambda: study_exists(sweep.storage_url, sweep.study_name),
        )
        tune = sweep.spec.tune
        trackers = Trackers.resolve(  # a missing package fails here
            tune.loggers, study_name=sweep.study_name, out=out, log_every_n_steps=tune.log_every_n_steps
        )
        if not restoring and not sweep.spec.tune.shared_study:
            check_study_is_new(sweep.storage_url, sweep.study_name, sweep.file)
        if warm_start is not None:
            warm_start = check_warm_start(
                warm_start, sweep.spec, out, metric=sweep.metric, mode=sweep.mode, restoring=restoring
            )
        if not restoring:
            check_noise_from(sweep.spec.tune.confirm, metric=sweep.metric)
        with _ray(sweep, address) as plan:
            _write_meta(sweep, resolved, restoring=restoring, warm_start=warm_start)
            study = _open_study(sweep, restoring=restoring, warm_start=warm_start)
            searched = _search(sweep, study, plan, trackers, verbose=verbose)
            rows = study_rows(study, sweep.store, sweep.trial_spec(None), sweep.spec.search.keys)
            finished = searched and all(r.state in FINISHED_STATES for r in rows)
            confirmation = _confirm(sweep, rows, plan, trackers) if finished else None
        return _finish(sweep, rows, confirmation, started, finished=finished)


def _resolve(out: Path, sweep_file: str | Path | None, overrides: list[str] | None, resume: bool) -> _Sweep:
    """The sweep file as this run reads it (a resume: as ``out/sweep.yaml`` saved it, with its allowed --set)."""
    changes: dict[str, Any] = {}
    if resume:
        resumed = continue_config(out, overrides)
        if sweep_file is not None and Path(sweep_file).resolve() != resumed.sweep_file:
            log.info(
                "--resume continues the sweep as %s saved it; %s is not read again", resumed.sweep_file, sweep_file
            )
        sweep_file, config, changes = resumed.sweep_file, resumed.config, resumed.changes
    elif sweep_file is None:
        raise UserError("simmtm sweep: give SWEEP.yaml (--resume --out DIR alone continues from DIR/sweep.yaml)")
    else:
        config = load_config(sweep_file, overrides)
    sweep_file = Path(sweep_file)
    spec = sweep_spec(config, sweep_file)
    task = check_data(config, spec)
    try:
        metric, mode = resolve_metric(spec.tune, task)
    except ConfigError as exc:
        raise ConfigError(f"{sweep_file}: {exc}") from None
    return _Sweep(
        config=config,
        spec=spec,
        file=sweep_file,
        out=out,
        metric=metric,
        mode=mode,
        storage_url=spec.tune.storage or f"sqlite:///{out / 'optuna.db'}",
        study_name=spec.tune.study_name or out.name,
        root=spec.tune.storage_path or str(out),
        changes=changes,
    )


def sweep_owner(out: Path) -> str:
    """Names this driver in the Optuna trials it runs (user attribute ``owner``): host and sweep folder."""
    import socket

    return f"{socket.gethostname()}:{out}"


@contextlib.contextmanager
def _ray(sweep: _Sweep, address: str | None) -> Iterator[TrialPlan]:
    """Connected to Ray (started locally when no cluster is named), with the plan of how many trials run at once."""
    already = ray_session.is_connected()
    address, where = ray_session.resolve_address(address, os.environ)
    if not already:
        log.info("ray: %s", where)
    if address is None and not already:
        ray_session.check_resources(sweep.spec.resources, nodes=[ray_session.local_node()])  # fail before Ray starts
    started_ray = ray_session.connect(address, record=sweep.out / RECORD_FILE)
    try:
        plan = plan_trials(sweep.spec, ray_session.alive_nodes(), joined=address is not None, address=address)
        if plan.waiting:
            log.warning(plan.waiting)
        yield plan
    finally:
        if started_ray:
            ray_session.disconnect(record=sweep.out / RECORD_FILE)


def _write_meta(sweep: _Sweep, resolved: dict[str, Any], *, restoring: bool, warm_start: Path | None) -> None:
    """sweep.yaml and sweep.json: written at the start, rewritten when a resume raised tune.num_samples."""
    spec, config = sweep.spec, sweep.config
    if restoring:
        if sweep.changes:
            write_sweep_yaml(sweep.out, resolved)
            meta = read_sweep_json(sweep.out)
            write_sweep_json(sweep.out, dataclasses.replace(meta, num_samples=spec.tune.resolved_samples(spec.search)))
            log.info("resuming with %s", ", ".join(f"{k}={v}" for k, v in sweep.changes.items()))
        return
    sweep.out.mkdir(parents=True, exist_ok=True)
    write_sweep_yaml(sweep.out, resolved)
    meta = SweepMeta(
        metric=sweep.metric,
        mode=sweep.mode,
        study_name=sweep.study_name,
        storage=sweep.storage_url,
        params=spec.search.keys,
        search_space=spec.search.model_dump(mode="json", exclude_none=True),
        method=spec.search.method,
        seed=config.seed,
        search_seed=sampler_seed(spec, config.seed),
        probe_metric=probe_key(sweep.metric),
        repeats=spec.tune.repeats,
        num_samples=spec.tune.resolved_samples(spec.search),
        resources=spec.resources.model_dump(),
        warm_start=str(warm_start) if warm_start is not None else None,
    )
    write_sweep_json(sweep.out, meta)


def _open_study(sweep: _Sweep, *, restoring: bool, warm_start: Path | None) -> SweepStudy:
    """The sweep's study; a new one gets its grid or first point queued and, with ``--warm-start``, the copies."""
    spec = sweep.spec
    study = SweepStudy.of_sweep(
        open_storage(sweep.storage_url),
        sweep.study_name,
        spec,
        sweep.config,
        mode=sweep.mode,
        owner=sweep_owner(sweep.out),
        repeats=spec.tune.repeats,
        start=not restoring,
    )
    if restoring:
        log.info("resuming the sweep in %s: %d trial(s) continue", sweep.out, len(study.resumable()))
        return study
    if warm_start is not None:  # checked before Ray started; a resumed sweep has its copies already
        warm_start_study(study.study, warm_start, search_distributions(spec.search), metric=sweep.metric)
    return study


def _search(sweep: _Sweep, study: SweepStudy, plan: TrialPlan, trackers: Trackers, *, verbose: int) -> bool:
    """Run the search; return whether it ran its course: every planned trial finished, or the time budget ran out
    (a Ctrl-C between two trials leaves each trial so far finished, not the search)."""
    spec = sweep.spec
    planned = spec.tune.planned_trials(spec.search)
    pruner = engine.make_pruner(study, spec, metric=sweep.metric, mode=sweep.mode, epochs=sweep.config.pretrain.epochs)
    searcher = SweepSearch(study, pruner, sweep.store, metric=sweep.metric, mode=sweep.mode)
    spent = engine.run_search(
        study,
        pruner,
        searcher,
        spec=spec,
        sweep_entry=sweep.trial_spec(trackers).model_dump(mode="json"),
        storage_root=sweep.root,
        planned=planned,
        max_concurrent=plan.max_concurrent,
        callbacks=[
            TrialClock(sweep.out),
            TrialEndHParams(sweep.out / "tb", spec.search.keys, metric=sweep.metric),
            *trackers.callbacks(name=name_of),
        ],
        reporter=trial_table(spec, sweep.metric, sweep.mode) if verbose else None,
        verbose=verbose,
    )
    if spent:  # the budget ends the search: the trials it cut short end as stopped early (PRUNED), with the reason
        cut = study.stop_running(f"tune.time_budget_s ({spec.tune.time_budget_s:g} s) ran out")
        log.info("tune.time_budget_s ran out: %d trial(s) stopped early", cut)
    return spent or study.finished_count() >= planned


def _confirm(sweep: _Sweep, rows: list[TrialRow], plan: TrialPlan, trackers: Trackers) -> ConfirmOutcome:
    """The confirmation stage after a finished search (``tune.confirm``), on the search's trainable and resources."""
    spec, config = sweep.spec, sweep.config
    sched = spec.tune.scheduler
    stage = StageInputs(
        out=sweep.out,
        metric=sweep.metric,
        mode=sweep.mode,
        param_keys=spec.search.keys,
        base_seed=config.seed,
        confirm=spec.tune.confirm,
        rung_epoch=first_rung(sched.grace_period, spec.tune.probe_every, config.pretrain.epochs),
        prunes=sched.type == "asha",
        rung=spec.tune.prune_on,
        max_concurrent=plan.max_concurrent,
        warm_start=read_sweep_json(sweep.out).warm_start,
    )
    trial_spec = sweep.trial_spec(trackers, confirm=True)
    store = sweep.store

    def run_points(points: dict[str, dict[str, Any]]) -> list[TrialRow]:
        todo = {name: p for name, p in points.items() if store.read_result(name) is None}
        engine.run_points(
            todo,
            resources=spec.resources,
            sweep_entry=trial_spec.model_dump(mode="json"),
            storage_root=sweep.root,
            max_concurrent=plan.max_concurrent,
            max_failures=spec.tune.max_failures,
            callbacks=trackers.callbacks(stage="confirm", name=name_of),
        )
        return named_rows(store, points, trial_spec, spec.search.keys)

    default = {k: PAPER_DEFAULTS.get(k, get_key(config.run_dict(), k)) for k in spec.search.keys}
    return confirm_sweep(stage, rows, run_points=run_points, default=default)


def _finish(
    sweep: _Sweep, rows: list[TrialRow], confirmation: ConfirmOutcome | None, started: float, *, finished: bool
) -> SweepOutcome:
    """Score the test split for the best configurations; write best.yaml, trials.csv, TensorBoard's tab, timing."""
    out, keys = sweep.out, sweep.spec.search.keys
    outcome = SweepOutcome(
        out=out, rows=rows, metric=sweep.metric, mode=sweep.mode, param_keys=keys, finished=finished,
        confirmation=confirmation,
    )  # fmt: skip
    ranked = rank_configurations(rows, keys, sweep.mode) if finished else []
    if ranked:
        outcome.best = ranked[0]
        score_test(ranked[: sweep.spec.tune.test_top_k], out, sweep.store, metric=sweep.metric)
        verdict = confirmation.verdict if confirmation is not None else None
        write_best_yaml(
            out / "best.yaml",
            sweep.config.run_dict(),
            outcome.best,
            metric=sweep.metric,
            sweep_dir=out,
            confirmed=verdict if verdict is not None and verdict.status != "insufficient" else None,
        )
    write_trials_csv(out / "trials.csv", rows, keys)
    write_hparams(out / "tb", rows, keys, metric=sweep.metric)
    outcome.wall_s = time.time() - started
    outcome.overhead_s = write_timing(out, rows, wall_s=outcome.wall_s)
    return outcome
