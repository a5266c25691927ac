"""The sweep driver: a Ray Tune experiment with Optuna (TPE, random or grid), ASHA on probe scores, and resume.

``run_sweep(path, out)`` validates the sweep file, connects to Ray (``address``, else the cluster of the Ray job it
runs in, else a fresh local instance), checks that a local Ray can ever hold one trial (a joined cluster may still
grow: its trials wait), optionally seeds the Optuna study from an earlier sweep (``warm_start``), and runs the trials; ``resume=True`` continues an interrupted sweep
with ``Tuner.restore``. Afterwards it writes the tables from Tune's experiment state (not ``get_dataframe``, which
may miss rows after a restore), makes the Optuna study agree with them, scores the test split once for the best
configurations and writes ``best.yaml``.

The sweep directory (read by the analysis notebooks; keep it stable):

- ``sweep.yaml``: the resolved sweep file; ``sweep.json``: metric, mode, study name, storage URL, searched keys,
  the search section, method and seed (and ``warm_start``: the earlier sweep whose finished trials seeded the study);
- ``optuna.db``: the Optuna study (SQLite unless ``tune.storage`` names another database, e.g. PostgreSQL);
- ``trials.csv``, ``best.yaml``, ``best/<trial>/`` (the test-scored fine-tunes), ``timing.json``;
- ``tb/<trial>/`` (per-trial TensorBoard: pre-training losses, probe and final scores), ``tb/hparams/``;
- ``ray/``: Ray's experiment folder (trial checkpoints and state; ``tune.storage_path`` may move it to shared or
  ``s3://`` storage on a multi-node cluster, where ``--out`` then only holds the tables and the database).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from simmtm.config import RunConfig, load_config
from simmtm.errors import ConfigError, UserError
from simmtm.sweep.outputs import WARM_START_ATTR, TrialRow, rank_configurations, write_best_yaml, write_hparams, write_trials_csv
from simmtm.sweep.spec import (SHORT_NAMES, ResourcesSpec, SweepSpec, first_point, flat_config, resolve_metric, sampler_seed,
                               sweep_spec)
from simmtm.sweep.trial import TRIAL_RESERVED_KEYS, probe_key, run_trial, trial_config

__all__ = ["run_sweep", "SweepOutcome", "check_resources", "concurrency", "plan_trials", "TrialPlan", "resolve_address",
           "collect_rows", "EXPERIMENT_NAME"]

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "ray"  # DIR/ray is Ray's experiment folder
_TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes a multi-worker trial's driver reserves (logical: Ray's "memory" resource)
_OUT_FILES = {"sweep.yaml", "sweep.json", "optuna.db", "trials.csv", "best.yaml", "best", "tb", EXPERIMENT_NAME, "timing.json", "timing.jsonl"}


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


# --- entry point -----------------------------------------------------------------------------------------------


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
    overrides: list[str] | None = None,
    verbose: int = 1,
    warm_start: str | Path | None = None,
) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep in ``sweep_file``, writing everything under ``out``.

    ``address``: the Ray cluster to join; None joins the cluster of the Ray job this driver runs in (``RAY_ADDRESS``
    set), else starts a fresh local Ray (see ``resolve_address``). ``warm_start``: an earlier sweep's directory whose
    finished trials seed the new Optuna study (same parameters, metric and mode; not with a grid).
    """
    started = time.time()
    sweep_file, out = Path(sweep_file), Path(out).resolve()
    config = load_config(sweep_file, overrides)
    spec = sweep_spec(config, sweep_file)
    task = _check_data(config, spec)
    try:
        metric, mode = resolve_metric(spec.tune, task)
    except ConfigError as exc:
        raise ConfigError(f"{sweep_file}: {exc}") from None
    resolved = config.model_dump(mode="json")
    restoring = _prepare_out(out, resolved, resume=resume, sweep_file=sweep_file, experiment_dir=_experiment_dir(spec, out))

    storage_url = spec.tune.storage or f"sqlite:///{out / 'optuna.db'}"
    study_name = spec.tune.study_name or out.name
    if not restoring:
        _check_study_is_new(storage_url, study_name, sweep_file)
    if warm_start is not None:
        warm_start = _check_warm_start(warm_start, spec, out, metric=metric, mode=mode, restoring=restoring)
    param_keys = spec.search.keys
    already = _ray_initialized()
    address, where = resolve_address(address, os.environ)
    if not already:
        log.info("ray: %s", where)
    if address is None and not already:
        check_resources(spec.resources, nodes=[_local_node()])  # fail before Ray even starts
    started_ray = _connect(address)
    try:
        plan = plan_trials(spec, _alive_nodes(), joined=address is not None, address=address)
        if plan.waiting:
            log.warning(plan.waiting)
        max_concurrent = plan.max_concurrent
        if not restoring:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
            (out / "sweep.json").write_text(json.dumps({
                "metric": metric, "mode": mode, "study_name": study_name, "storage": storage_url, "params": param_keys,
                "search_space": spec.search.model_dump(mode="json", exclude_none=True), "method": spec.search.method,
                "seed": config.seed, "search_seed": sampler_seed(spec, config.seed), "probe_metric": probe_key(metric), "repeats": spec.tune.repeats,
                "num_samples": spec.tune.resolved_samples(spec.search), "resources": spec.resources.model_dump(),
                **({"warm_start": str(warm_start)} if warm_start is not None else {}),
            }, indent=2) + "\n")
        clock = _TrialClock(out / "timing.jsonl")
        tuner = _tuner(config, spec, out, metric=metric, mode=mode, storage_url=storage_url, study_name=study_name,
                       max_concurrent=max_concurrent, restoring=restoring, clock=clock, verbose=verbose,
                       warm_start=warm_start)
        tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    rows = collect_rows(_experiment_dir(spec, out), param_keys)
    rows += _reconcile_study(storage_url, study_name, rows, param_keys)
    finished = all(r.state in ("COMPLETE", "PRUNED", "FAILED") for r in rows)
    outcome = SweepOutcome(out=out, rows=rows, metric=metric, mode=mode, param_keys=param_keys, finished=finished)
    if finished:
        ranked = rank_configurations(rows, param_keys, mode)
        if ranked:
            outcome.best = ranked[0]
            _score_test(config, ranked[: spec.tune.test_top_k], out, metric=metric)
            write_best_yaml(out / "best.yaml", config.run_dict(), outcome.best, metric=metric, sweep_dir=out)
    write_trials_csv(out / "trials.csv", rows, param_keys)
    write_hparams(out / "tb", rows, param_keys, metric=metric)
    outcome.wall_s = time.time() - started
    outcome.overhead_s = _write_timing(out, rows, wall_s=outcome.wall_s)
    return outcome


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


def _prepare_out(out: Path, resolved: dict[str, Any], *, resume: bool, sweep_file: Path, experiment_dir: str) -> bool:
    """Check --out against --resume; return True when there is a Tune experiment to restore.

    ``experiment_dir``: Ray's experiment folder, under ``out`` or under ``tune.storage_path`` (a path or a URI such as
    ``s3://`` or ``file://``).
    """
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not resume:
        if entries:
            what = "an earlier sweep; pass --resume to continue it" if "sweep.json" in entries else "other files"
            raise UserError(f"--out {out}: already holds {what}, or choose another --out")
        return False
    if not (out / "sweep.yaml").is_file():
        raise UserError(f"--resume: {out} holds no sweep (no sweep.yaml); run without --resume to start one")
    if not entries <= _OUT_FILES:
        raise UserError(f"--out {out}: holds files a sweep does not write ({', '.join(sorted(entries - _OUT_FILES))})")
    earlier = yaml.safe_load((out / "sweep.yaml").read_text())
    changed = _diff(earlier, resolved)
    if changed:
        raise UserError(
            f"--resume: {sweep_file} differs from the sweep in {out} ({', '.join(changed[:5])}); resume with the same "
            "file and --set values, or start a new --out"
        )
    from ray.tune import Tuner

    if Tuner.can_restore(experiment_dir):
        return True
    log.info("%s: the earlier sweep stopped before Tune started (no Tune state in %s); starting it afresh", out, experiment_dir)
    for name in entries - {"sweep.yaml", "sweep.json"}:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return False


def _check_study_is_new(storage_url: str, study_name: str, sweep_file: Path) -> None:
    """A fresh sweep must not mix its trials into an existing study of a shared database."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).exists():
        return
    import optuna

    try:
        names = optuna.get_all_study_names(storage_url)
    except Exception as exc:  # unreachable database, bad URL, missing driver
        raise ConfigError(f"{sweep_file}: tune.storage: cannot open {storage_url} ({exc.__class__.__name__}: {exc})") from None
    if study_name in names:
        raise ConfigError(f"{sweep_file}: tune.study_name: the database {storage_url} already holds a study '{study_name}'; "
                          "set another tune.study_name (or --out), or pass --resume to continue that sweep")


def _check_warm_start(previous: str | Path, spec: SweepSpec, out: Path, *, metric: str, mode: str, restoring: bool) -> Path:
    """Fail (UserError, one line) before Ray starts when ``--warm-start`` cannot seed this sweep; return its folder.

    The check copies the earlier trials into a throwaway in-memory study, so every mismatch that would stop the real
    copy in ``_tuner`` (other parameters, metric or direction; not a sweep folder) stops the run here instead.
    A resumed sweep's study already holds the copies: it must name the same folder, and nothing is copied again.
    """
    previous = Path(previous).resolve()
    if restoring:
        meta = json.loads((out / "sweep.json").read_text())
        if meta.get("warm_start") != str(previous):
            was = meta.get("warm_start") or "no warm start"
            raise UserError(f"--warm-start {previous}: the sweep in {out} was started with {was}; resume it without "
                            "--warm-start (its study already holds the copied trials)")
        return previous
    if spec.search.method == "grid":
        raise UserError(f"--warm-start {previous}: search.method is grid, which runs every cell anyway; "
                        "a warm start needs method tpe or random")
    import optuna

    from simmtm.analysis.warm_start import warm_start_study
    from simmtm.sweep.search import search_distributions

    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    if warm_start_study(study, previous, search_distributions(spec.search), metric=metric) == 0:
        log.warning("--warm-start %s: no finished trial to copy; the sweep starts from scratch", previous)
    return previous


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _connect(address: str | None) -> bool:
    """Connect to Ray; return True when this call started it (and so must shut it down)."""
    import ray

    from simmtm.data.registry import worker_env

    if ray.is_initialized():
        return False
    env = worker_env()
    ray.init(
        address=address or "local",  # never join a cluster by accident: a teammate's `ray start` is not ours
        include_dashboard=False if address is None else None,
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=True,
    )
    return True


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def _local_node() -> dict[str, float]:
    """What a fresh local Ray would see on this machine."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(resources: ResourcesSpec, *, address: str | None = None, nodes: list[dict[str, float]] | None = None) -> int:
    """How many workers of ``resources`` the cluster holds at once; ConfigError if it can never hold one trial.

    ``nodes``: each node's resources; None asks the connected Ray cluster (its alive nodes).
    """
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpw, gpw = resources.cpus_per_worker, resources.gpus_per_worker
    fits = 0
    for node in nodes:
        by_cpu = math.floor(node.get("CPU", 0) / cpw + 1e-9)
        by_gpu = math.floor(node.get("GPU", 0) / gpw + 1e-9) if gpw > 0 else by_cpu
        fits += min(by_cpu, by_gpu)
    if fits < resources.workers:
        where = f"the cluster at {address}" if address else "this machine's local Ray"
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise ConfigError(
            f"resources: a trial needs {resources.workers} worker(s) x ({cpw:g} CPU, {gpw:g} GPU) but {where} has "
            f"{have}; it could never start (lower resources.workers / cpus_per_worker / gpus_per_worker)"
        )
    return fits


@dataclass(frozen=True)
class TrialPlan:
    """How many trials run at once, and the warning when no node can hold a trial yet."""

    max_concurrent: int
    waiting: str | None = None


def plan_trials(spec: SweepSpec, nodes: list[dict[str, float]], *, joined: bool, address: str | None = None) -> TrialPlan:
    """Decide, from the nodes that are up now, whether the sweep can start and how many trials run at once.

    A local Ray (``joined`` False) never grows: ConfigError when no trial could ever start. A joined cluster may
    grow (an autoscaler starts nodes for the pending trials' resource requests, or nodes are still joining), so
    the sweep starts anyway and its first trial waits. Trials at once: ``tune.max_concurrent_trials`` when set,
    else as many as the nodes up now hold, at least 1 (set it on an autoscaling cluster: at start it may have no
    worker node at all).
    """
    try:
        slots = check_resources(spec.resources, address=address, nodes=nodes)
    except ConfigError:
        if not joined:
            raise
        r = spec.resources
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        waiting = (f"resources: a trial needs {r.workers} worker(s) x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} "
                   f"GPU) but the cluster at {address} has {have} up now; the trials wait for it to grow (an autoscaler "
                   "starts nodes for their resource requests)")
        return TrialPlan(concurrency(spec, 0), waiting)
    return TrialPlan(concurrency(spec, slots))


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def resolve_address(address: str | None, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The Ray cluster to join (None: start a fresh local Ray) and a line saying which, and why, for the log.

    ``--address`` wins. Without it, a driver that runs inside a Ray job (``ray job submit``: Ray sets
    ``RAY_ADDRESS`` to the cluster's address and ``RAY_JOB_CONFIG_JSON_ENV_VAR``) or on a node with ``RAY_ADDRESS``
    set joins that cluster, as ``--address auto`` would. ``RAY_ADDRESS`` holding a Jobs API URL (``http://...``,
    as set on a laptop for ``ray job submit``) names no cluster to join and is ignored.
    """
    if address:
        return address, f"joining the Ray cluster at {address} (--address)"
    env = environ.get("RAY_ADDRESS", "").strip()
    if env and env != "local" and not env.startswith(("http://", "https://")):
        return env, f"joining the Ray cluster at {env} (RAY_ADDRESS is set)"
    if environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return "auto", "joining the cluster of the Ray job this driver runs in (auto)"
    note = f" (RAY_ADDRESS={env} is a Jobs API URL, not a cluster to join)" if env.startswith(("http://", "https://")) else ""
    return None, f"starting a local Ray on this machine{note}"


def concurrency(spec: SweepSpec, worker_slots: int) -> int:
    """Trials at once: the configured value, or as many as the cluster's worker slots hold (no idle drivers)."""
    total = spec.tune.resolved_samples(spec.search) * spec.tune.repeats
    derived = max(1, worker_slots // spec.resources.workers)
    return max(1, min(spec.tune.max_concurrent_trials or derived, total))


# --- the Tune experiment -----------------------------------------------------------------------------------------


def _experiment_dir(spec: SweepSpec, out: Path) -> str:
    base = spec.tune.storage_path or str(out)
    return f"{base.rstrip('/')}/{EXPERIMENT_NAME}"


def _trainable(resources: ResourcesSpec):
    from ray import tune

    if resources.workers == 1:
        return tune.with_resources(run_trial, {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker})
    # A multi-worker trial is a driver that launches a TorchTrainer: it holds no CPU (its workers do), only a
    # token of memory, because Tune needs a non-empty resource request.
    return tune.with_resources(run_trial, {"cpu": 0, "memory": _TRIAL_DRIVER_MEMORY})


def _tuner(config: RunConfig, spec: SweepSpec, out: Path, *, metric: str, mode: str, storage_url: str, study_name: str,
           max_concurrent: int, restoring: bool, clock: Any, verbose: int, warm_start: Path | None = None):
    from ray import tune

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
        spec.search, base_values=flat_config(config.run_dict()), metric=metric, probe_metric=probe_key(metric), mode=mode,
        seed=sampler_seed(spec, config.seed), storage=open_storage(storage_url), study_name=study_name, repeats=spec.tune.repeats,
        first=first_point(spec, config.run_dict()),
    )
    if warm_start is not None:  # checked in run_sweep; a resumed sweep does not get here (no second copy)
        from simmtm.analysis.warm_start import warm_start_study
        from simmtm.sweep.search import search_distributions

        warm_start_study(searcher.study, warm_start, search_distributions(spec.search), metric=metric)
    sched = spec.tune.scheduler
    if sched.type == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", metric=probe_key(metric), mode=mode, max_t=config.pretrain.epochs + 1,
            grace_period=min(sched.grace_period, config.pretrain.epochs), reduction_factor=sched.reduction_factor,
        )
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    r = spec.resources
    sweep = trial_config(
        config.run_dict(), metric=metric, probe_every=spec.tune.probe_every, probe_steps=spec.tune.probe_steps,
        probe_val_batches=spec.tune.probe_val_batches, probe_overrides=spec.tune.probe_overrides,
        max_failures=spec.tune.max_failures,
        tb_dir=str(out / "tb"), workers=r.workers,
        cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker, storage_path=path,
    )
    return tune.Tuner(
        trainable,
        param_space={"sweep": sweep},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,
            num_samples=spec.tune.resolved_samples(spec.search) * spec.tune.repeats,
            max_concurrent_trials=max_concurrent, time_budget_s=spec.tune.time_budget_s,
            # One-worker trials run in a reused actor: no process start and no torch import per trial.
            reuse_actors=spec.resources.workers == 1,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME, storage_path=spec.tune.storage_path or str(out),
            failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[clock], verbose=verbose, progress_reporter=_trial_table(spec, metric, mode) if verbose else None,
        ),
    )


def _trial_table(spec: SweepSpec, metric: str, mode: str):
    """Tune's live trial table: the searched parameters (short names), epoch, probe score and final score."""
    from ray.tune import CLIReporter

    params = {k: SHORT_NAMES.get(k, k.split(".")[-1]) for k in spec.search.keys}
    if spec.tune.repeats > 1:
        params["repeat"] = "repeat"
    metrics = {"epoch": "epoch", probe_key(metric): "probe", metric: metric}
    return CLIReporter(parameter_columns=params, metric_columns=metrics, max_report_frequency=10,
                       sort_by_metric=False, max_progress_rows=40, max_error_rows=10)


def _trial_name(trial) -> str:
    return trial.trial_id


class _TrialClock(Callback):
    """Times each trial from the driver's side, appending to ``DIR/timing.jsonl`` (it survives a restore)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_seen": set()}

    def _log(self, trial, event: str) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"trial_id": trial.trial_id, "event": event, "time": time.time()}) + "\n")

    def _note_new(self, trials) -> None:
        for trial in trials:  # Tune has no "trial added" hook: note each trial at the step that created it
            if trial.trial_id not in self._seen:
                self._seen.add(trial.trial_id)
                if trial.status in ("PENDING", "RUNNING") and not trial.has_reported_at_least_once:
                    self._log(trial, "add")

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._note_new(trials)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._note_new(trials)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "start")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "end")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "end")


def _write_timing(out: Path, rows: list[TrialRow], *, wall_s: float) -> float | None:
    """Write ``timing.json``; return the mean orchestration overhead of the COMPLETE trials that ran start to end
    in one driver session: from the trial's creation (Tune only creates a trial when a slot is free) to its end,
    minus the trial function's own wall time (which starts after its imports)."""
    events: dict[str, dict[str, float]] = {}
    log_path = out / "timing.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            e = json.loads(line)
            events.setdefault(e["trial_id"], {})[e["event"]] = e["time"]
    per_trial = {}
    for r in rows:
        ev, own = events.get(r.trial_id, {}), r.extra.get("trial_wall_s")
        if r.state == "COMPLETE" and own and "add" in ev and "end" in ev and ev["end"] > ev["add"]:
            driver_s = ev["end"] - ev["add"]
            per_trial[r.trial_id] = {"driver_s": round(driver_s, 3), "trial_s": round(own, 3),
                                     "overhead_s": round(driver_s - own, 3),
                                     "actor_start_s": round(ev.get("start", ev["add"]) - ev["add"], 3)}
    overheads = [v["overhead_s"] for v in per_trial.values()]
    mean = sum(overheads) / len(overheads) if overheads else None
    (out / "timing.json").write_text(json.dumps(
        {"sweep_wall_s": round(wall_s, 2), "mean_overhead_s": mean, "trials": per_trial}, indent=2) + "\n")
    return mean


# --- after the trials ------------------------------------------------------------------------------------------


def collect_rows(experiment_dir: str, param_keys: list[str]) -> list[TrialRow]:
    """One row per Tune trial, from Tune's saved experiment state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_dir)
    rows = []
    for trial in analysis.trials:
        rows.append(_row(trial, param_keys))
    return rows


def _row(trial, param_keys: list[str]) -> TrialRow:
    config = trial.config
    last = dict(trial.last_result or {})
    metric = config["sweep"]["metric"]
    final = last.get("stage") == "final"
    status = trial.status
    if status == "ERROR":
        state = "FAILED"
    elif status == "TERMINATED":
        state = "COMPLETE" if final else "PRUNED"
    elif status in ("RUNNING", "PAUSED"):
        state = "RUNNING"
    else:
        state = "PENDING"
    probe = last.get(probe_key(metric), last.get(f"last_{probe_key(metric)}"))
    params = {k: config.get(k) for k in param_keys}
    row = TrialRow(
        trial_id=trial.trial_id, state=state, params=params, repeat=int(config.get("repeat", 0)),
        score=float(last[metric]) if final and metric in last else None,
        val_score=float(probe) if probe is not None else None,
        epochs=int(last["epoch"]) if "epoch" in last else None,
        wall_s=float(last["time_total_s"]) if "time_total_s" in last else None,
        error=_error_line(trial) if state == "FAILED" else "",
    )
    row.extra["trial_wall_s"] = last.get("trial_wall_s")
    row.extra["checkpoint"] = trial.checkpoint or _train_checkpoint(last)
    row.extra["config"] = {k: v for k, v in config.items() if k not in TRIAL_RESERVED_KEYS or k == "repeat"}
    return row


def _train_checkpoint(last: dict[str, Any]):
    """A multi-worker trial's checkpoint lives in its Train run; TuneReportCallback passes on its path."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    path = last.get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    from ray.tune import Checkpoint

    return Checkpoint(path)


def _error_line(trial) -> str:
    try:
        err = trial.get_error()
    except Exception:  # the error file is gone (a cleaned-up node)
        err = None
    text = str(err) if err is not None else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):  # the exception line of the deepest traceback
        if ("Error" in line or "Exception" in line or "Diverged" in line) and ":" in line:
            return line
    return lines[-1] if lines else "failed (no error recorded)"


ORPHAN_REASON = "the driver stopped before Tune recorded this trial"


def _reconcile_study(storage_url: str, study_name: str, rows: list[TrialRow], param_keys: list[str]) -> list[TrialRow]:
    """Make the Optuna study agree with Tune's trials (after an interruption the two can drift apart).

    Each Optuna trial carries the Tune trial id it ran as. A finished Tune trial whose Optuna trial is still
    RUNNING is told its state. An Optuna trial without a Tune trial (asked in the instant before the driver died,
    never saved by Tune, never to run; possibly even before it got its Tune trial id, then it is named
    ``optuna-<number>``) is marked FAIL with the reason and returned as a FAILED row, so that trials.csv and the
    study list the same trials.
    """
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return []
    by_tune = {r.trial_id: r for r in rows}
    orphans = []
    for t in study.get_trials(deepcopy=False):
        tune_id = t.user_attrs.get("tune_trial_id")
        if tune_id is None and t.state == TrialState.RUNNING and WARM_START_ATTR not in t.user_attrs:
            # Asked from Optuna, then the driver died before the searcher could tag it with its Tune trial id:
            # name it after its Optuna number so the study and trials.csv still list the same trials.
            tune_id = f"optuna-{t.number}"
            study._storage.set_trial_user_attr(t._trial_id, "tune_trial_id", tune_id)
        row = by_tune.get(tune_id)
        if row is None and tune_id is not None:
            if t.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(t._trial_id, "reason", ORPHAN_REASON)
                study.tell(t.number, state=TrialState.FAIL)
            orphans.append(TrialRow(trial_id=tune_id, state="FAILED", params={k: t.params.get(k) for k in param_keys},
                                    repeat=int(t.user_attrs.get("repeat", 0)), error=t.user_attrs.get("reason", ORPHAN_REASON)))
        elif row is None or t.state != TrialState.RUNNING:
            continue
        elif row.state == "COMPLETE":
            study.tell(t.number, row.score)
        elif row.state == "PRUNED":
            study.tell(t.number, state=TrialState.PRUNED)
        elif row.state == "FAILED":
            study._storage.set_trial_user_attr(t._trial_id, "reason", row.error)
            study.tell(t.number, state=TrialState.FAIL)
    return orphans


def _score_test(config: RunConfig, ranked: list[list[TrialRow]], out: Path, *, metric: str) -> None:
    """Score the test split once for each repeat of the top configurations (re-using an earlier score)."""
    from simmtm import finetune
    from simmtm.checkpoint import ray_checkpoint_state
    from simmtm.sweep.trial import trial_run_config

    test_metric = metric.removeprefix("val_")
    for group in ranked:
        for row in group:
            run_dir = out / "best" / row.trial_id
            done = run_dir / "metrics.json"
            if done.is_file():
                row.test_score = float(json.loads(done.read_text())[test_metric])
                continue
            if not row.extra.get("checkpoint"):
                log.warning("trial %s has no checkpoint; its test score is left empty", row.trial_id)
                continue
            state = ray_checkpoint_state(row.extra["checkpoint"])
            state.pop("sweep_final", None)
            run_cfg = trial_run_config({"sweep": {"run": config.run_dict()}, **row.extra["config"]}, pin_threads=False)
            log.info("scoring the test split once for trial %s", row.trial_id)
            metrics = finetune.run(run_cfg, pretrained=state, run_dir=run_dir)
            row.test_score = float(metrics[test_metric])
            if not math.isclose(float(metrics[metric]), row.score or math.nan, rel_tol=1e-3):
                log.warning("trial %s: re-run fine-tune gives %s=%.6g, the trial reported %.6g", row.trial_id, metric,
                            metrics[metric], row.score)
