"""Sweeps at scale, simulated: the real sweep machinery with instant synthetic trials, at 100 to 5,000 trials.

    python benchmarks/sweep_scale.py --sizes 100 1000                 # Tune + analysis at each size
    python benchmarks/sweep_scale.py --sizes 100 1000 5000 --tune-max 1000   # 5,000: analysis only (study written directly)
    python benchmarks/sweep_scale.py --sizes 50 --json /tmp/s.json    # a quick check
    python benchmarks/sweep_scale.py --sizes 100 1000 --work /tmp/ss --analysis-only   # re-analyse a run's folders

Per size N, in a fresh folder under --work (default a temporary one):

1. **Tune** (sizes <= --tune-max): the sweep's own engine (``simmtm.tuning.engine.run_search``, as the driver calls
   it) around a synthetic trainable of this file: the sweep's study (Optuna TPE over sweeps/quick.yaml's r, M, tau;
   SQLite), ASHA on the study's probe scores (quick.yaml's scheduler, 4 epochs), ``tune.Tuner`` with reused actors,
   then ``study_rows`` (the study and trial folders) and ``write_trials_csv``. The trainable sleeps for nothing: it reports
   a probe score per epoch and a final score computed from (r, M, tau), so all time measured is orchestration.
   Printed: wall time, per-trial overhead (wall / N), the per-trial time of the first and the last 10 % of trials
   (a sampler whose cost grows with the study shows here), and the time of the post-sweep table writing.
2. **Analysis**: ``load_sweep`` + ``recommend`` (``simmtm recommend``) and ``write_report`` (``simmtm analyze``,
   without the interactive page) on that folder (or, above --tune-max, on a study of N trials written directly
   into SQLite, with its trials.csv and sweep.json).

The summary fits log(time) = a + k log(N) over the sizes: k ~ 1 grows linearly, k ~ 2 quadratically.

The real entry (``simmtm.tuning.run_sweep``) is not driven here: it always runs ``simmtm.tuning.trial.run_trial``;
the engine's ``trainable_fn`` takes the synthetic trainable instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 4  # pre-training epochs of a synthetic trial; ASHA's rung at epoch 2 stops about half
METRIC = "val_mse"


def synthetic_score(params: dict) -> float:
    """A smooth bowl over (r, M, tau) with its minimum at r = 0.5, M = 3, tau = 0.2."""
    r, m, tau = params["pretrain.mask_ratio"], params["pretrain.num_masked"], params["pretrain.temperature"]
    return 0.4 + 0.05 * (r - 0.5) ** 2 + 0.002 * (m - 3) ** 2 + 0.01 * math.log(tau / 0.2) ** 2


def synthetic_trial(config: dict) -> None:
    """Instant trial: a probe score per epoch (falling towards the final score), then the final result."""
    from ray import tune

    params = {k: v for k, v in config.items() if k.startswith("pretrain.")}
    final = synthetic_score(params)
    started = time.time()
    for epoch in range(1, EPOCHS + 1):
        tune.report({"epoch": epoch, f"probe_{METRIC}": final + 0.1 / epoch, "stage": "probe", "trial_start": started})
    result = {"epoch": EPOCHS + 1, METRIC: final, f"probe_{METRIC}": final, "stage": "final",
              "trial_wall_s": time.time() - started, "trial_start": started}
    if "name" in config:  # a confirmation run: its result goes to its folder, as the real trial's does
        from simmtm.tuning.record import TrialStore, trials_root

        TrialStore(trials_root(config["sweep"]["storage_path"])).write_result(config["name"], result)
    tune.report(result)


def sweep_config(trials: int):
    from simmtm.config.schema import load_config
    from simmtm.tuning.sections import sweep_spec

    config = load_config(ROOT / "sweeps" / "quick.yaml", [f"tune.num_samples={trials}"])
    return config, sweep_spec(config, ROOT / "sweeps" / "quick.yaml")


def write_meta(out: Path, config, spec, storage_url: str, study_name: str) -> None:
    """sweep.json and sweep.yaml as the driver writes them (the analysis reads them)."""
    import yaml

    from simmtm.tuning.space import sampler_seed

    resolved = config.model_dump(mode="json")
    (out / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (out / "sweep.json").write_text(json.dumps({
        "metric": METRIC, "mode": "min", "study_name": study_name, "storage": storage_url, "params": spec.search.keys,
        "search_space": spec.search.model_dump(mode="json", exclude_none=True), "method": spec.search.method,
        "seed": config.seed, "search_seed": sampler_seed(spec, config.seed), "probe_metric": f"probe_{METRIC}",
        "repeats": 1, "num_samples": spec.tune.resolved_samples(spec.search), "resources": spec.resources.model_dump(),
    }, indent=2) + "\n")


def _study(out: Path, config, spec):
    from simmtm.tuning.space import flat_config, sampler_seed
    from simmtm.tuning.study import SweepStudy, open_storage

    return SweepStudy(open_storage(f"sqlite:///{out / 'optuna.db'}"), out.name, search=spec.search,
                      base_values=flat_config(config.run_dict()), seed=sampler_seed(spec, config.seed), mode="min")


def run_tune(out: Path, trials: int, *, concurrent: int) -> dict:
    from ray import tune

    from simmtm.tuning import engine
    from simmtm.tuning.outputs import write_trials_csv
    from simmtm.tuning.record import TrialStore, trials_root
    from simmtm.tuning.results import study_rows
    from simmtm.tuning.search import SweepSearch
    from simmtm.tuning.space import first_point
    from simmtm.tuning.spec import TrialSpec

    config, spec = sweep_config(trials)
    out.mkdir(parents=True, exist_ok=True)
    write_meta(out, config, spec, f"sqlite:///{out / 'optuna.db'}", out.name)
    study = _study(out, config, spec)
    study.enqueue_start([first_point(spec, config.run_dict())])
    store = TrialStore(trials_root(str(out)))
    pruner = engine.make_pruner(study, spec, metric=METRIC, mode="min", epochs=EPOCHS)
    searcher = SweepSearch(study, pruner, store, metric=METRIC, mode="min")
    trial_spec = TrialSpec.of_sweep(config, spec, metric=METRIC, tb_dir=None, storage_path=str(out))
    start = time.perf_counter()
    engine.run_search(study, pruner, searcher, spec=spec, sweep_entry=trial_spec.model_dump(mode="json"),
                      storage_root=str(out), planned=trials, max_concurrent=concurrent, verbose=0,
                      trainable_fn=tune.with_resources(synthetic_trial, {"cpu": 1}))  # logical: --concurrent CPUs
    fit_s = time.perf_counter() - start
    starts = sorted(t.datetime_start.timestamp() for t in study.trials() if t.datetime_start)
    tenth = max(1, len(starts) // 10)
    first = (starts[tenth] - starts[0]) / tenth if len(starts) > tenth else math.nan
    last = (starts[-1] - starts[-1 - tenth]) / tenth if len(starts) > tenth else math.nan
    start = time.perf_counter()
    rows = study_rows(study, store, trial_spec, spec.search.keys)
    write_trials_csv(out / "trials.csv", rows, spec.search.keys)
    tables_s = time.perf_counter() - start
    states = {s: sum(r.state == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAILED")}
    return {"fit_s": fit_s, "per_trial_s": fit_s / trials, "first_tenth_s": first, "last_tenth_s": last,
            "tables_s": tables_s, "states": states}


def write_study(out: Path, trials: int, *, seed: int = 0) -> None:
    """A finished study of ``trials`` trials straight into SQLite (random r, M, tau; ~half pruned), plus trials.csv."""
    import random

    import optuna

    from simmtm.tuning.outputs import TrialRow, write_trials_csv
    from simmtm.tuning.space import search_distributions

    config, spec = sweep_config(trials)
    out.mkdir(parents=True, exist_ok=True)
    storage_url, study_name = f"sqlite:///{out / 'optuna.db'}", out.name
    write_meta(out, config, spec, storage_url, study_name)
    dists = search_distributions(spec.search)
    study = optuna.create_study(study_name=study_name, storage=storage_url, direction="minimize")
    rng = random.Random(seed)
    made, rows = [], []
    for i in range(trials):
        params = {"pretrain.mask_ratio": rng.uniform(0.1, 0.9), "pretrain.num_masked": rng.randint(1, 5),
                  "pretrain.temperature": math.exp(rng.uniform(math.log(0.05), 0.0))}
        score = synthetic_score(params) + rng.gauss(0, 0.002)
        pruned = i % 2 == 1
        tid = f"t{i:05d}"
        made.append(optuna.trial.create_trial(
            params=params, distributions=dists, value=None if pruned else score,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            intermediate_values={1: score + 0.1, 2: score + 0.05}, user_attrs={"trial_id": tid, "repeat": 0}))
        rows.append(TrialRow(trial_id=tid, state="PRUNED" if pruned else "COMPLETE", params=params,
                             score=None if pruned else score, val_score=score + 0.05, epochs=2 if pruned else EPOCHS + 1))
    study.add_trials(made)
    write_trials_csv(out / "trials.csv", rows, spec.search.keys)


def run_confirm(out: Path, trials: int, *, concurrent: int) -> dict:
    """The confirmation stage (``simmtm.tuning.confirm_stage.confirm_sweep``, as the driver calls it) after the search in
    ``out``, with the synthetic trainable: quick.yaml's top 1 and the paper's default, 3 paired seeds each (6 runs).
    What grows with N is ranking the search's configurations and reading its rung scores (the probe check); the
    confirmation runs themselves are a fixed number. Printed: the whole stage and those two parts."""
    import shutil

    from ray import tune

    from simmtm.tuning import engine
    from simmtm.tuning.confirm_stage import StageInputs, confirm_sweep, rung_scores
    from simmtm.tuning.outputs import rank_configurations
    from simmtm.tuning.record import TrialStore, trials_root
    from simmtm.tuning.results import named_rows, study_rows
    from simmtm.tuning.spec import PAPER_DEFAULTS, TrialSpec

    config, spec = sweep_config(trials)
    store = TrialStore(trials_root(str(out)))
    shutil.rmtree(out / "trials", ignore_errors=True)  # a fresh stage, not a resumed one
    trial_spec = TrialSpec.of_sweep(config, spec, metric=METRIC, tb_dir=None, storage_path=str(out))
    rows = study_rows(_study(out, config, spec), store, trial_spec, spec.search.keys)
    start = time.perf_counter()
    rank_configurations(rows, spec.search.keys, "min")
    rank_s = time.perf_counter() - start
    start = time.perf_counter()
    rung_scores(rows, 2)
    rungs_s = time.perf_counter() - start
    stage = StageInputs(out=out, metric=METRIC, mode="min", param_keys=spec.search.keys, base_seed=config.seed,
                        confirm=spec.tune.confirm, rung_epoch=2, prunes=True, rung="probe", max_concurrent=concurrent)

    def run_points(points):
        engine.run_points(points, resources=spec.resources, sweep_entry=trial_spec.model_dump(mode="json"),
                          storage_root=str(out), max_concurrent=concurrent,
                          trainable_fn=tune.with_resources(synthetic_trial, {"cpu": 1}))
        return named_rows(store, points, trial_spec, spec.search.keys)

    start = time.perf_counter()
    outcome = confirm_sweep(stage, rows, run_points=run_points, default={k: PAPER_DEFAULTS[k] for k in spec.search.keys})
    stage_s = time.perf_counter() - start
    seeds = max((c.finished() for c in outcome.configs), key=len, default={})
    return {"stage_s": stage_s, "rank_s": rank_s, "rungs_s": rungs_s, "runs": len(outcome.configs) * len(seeds),
            "pairs": len(outcome.probe_pairs)}


def run_analysis(out: Path, *, bootstrap: int) -> dict:
    from simmtm.analysis.load import load_sweep
    from simmtm.analysis.recommend import recommend
    from simmtm.analysis.report import write_report

    cpu, start = time.process_time(), time.perf_counter()
    sweep = load_sweep(out)
    load_s = time.perf_counter() - start
    recommend(sweep, n_boot=bootstrap, seed=0)
    recommend_s = time.perf_counter() - start
    start = time.perf_counter()
    write_report(out, out / "report", interactive=False, n_boot=bootstrap, seed=0)
    analyze_s = time.perf_counter() - start
    # CPU seconds of all three (one process): steadier than wall times on a shared machine
    return {"load_s": load_s, "recommend_s": recommend_s, "analyze_s": analyze_s, "cpu_s": time.process_time() - cpu}


def slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(size)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return math.nan
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tune-max", type=int, default=1000, help="largest size run through Tune (above: analysis only)")
    parser.add_argument("--concurrent", type=int, default=4, help="trials at once")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the analysis (its default)")
    parser.add_argument("--work", type=Path, help="keep the sweep folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--confirm", action="store_true",
                        help="also time the confirmation stage after each Tune search (on --analysis-only folders too)")
    parser.add_argument("--analysis-only", action="store_true",
                        help="only analyse the folders an earlier run left under --work (no Ray; reports rewritten)")
    args = parser.parse_args()
    if args.analysis_only and not args.work:
        parser.error("--analysis-only needs the --work folder of an earlier run")
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    print(f"# sweep scale, {os.cpu_count()} CPUs, load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"folders under {work}")
    results = {}
    if not args.analysis_only or args.confirm:
        ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    try:
        for n in args.sizes:
            out = work / f"n{n}"
            row: dict = {"load": os.getloadavg()[0]}
            if args.analysis_only:
                pass
            elif n <= args.tune_max:
                row["tune"] = run_tune(out, n, concurrent=args.concurrent)
            else:
                write_study(out, n)
            if args.confirm and (out / "optuna.db").is_file():
                row["confirm"] = c = run_confirm(out, n, concurrent=args.concurrent)
                print(f"N={n:>5}  confirmation stage {c['stage_s']:6.1f} s ({c['runs']} runs; ranking "
                      f"{c['rank_s']:.3f} s, rung scores read {c['rungs_s']:.2f} s; {c['pairs']} probe pairs)", flush=True)
            row["analysis"] = run_analysis(out, bootstrap=args.bootstrap)
            results[n] = row
            t, a = row.get("tune", {}), row["analysis"]
            tune_text = (f"fit {t['fit_s']:8.1f} s  per trial {1e3 * t['per_trial_s']:7.1f} ms (first 10 % "
                         f"{1e3 * t['first_tenth_s']:6.1f}, last 10 % {1e3 * t['last_tenth_s']:6.1f})  tables {t['tables_s']:6.2f} s  "
                         f"{t['states']}" if t else "tune: not run")
            print(f"N={n:>5}  {tune_text}  | load {a['load_s']:6.2f} s  recommend {a['recommend_s']:6.2f} s  "
                  f"analyze {a['analyze_s']:6.2f} s  (CPU {a['cpu_s']:6.2f} s; load avg {row['load']:.1f})", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        ray.shutdown()
    sizes = list(results)
    print("# growth order k (time ~ N^k, log-log least squares over the sizes run):")
    for name, get in [("tune fit", lambda r: r.get("tune", {}).get("fit_s")),
                      ("tables (study_rows + trials.csv)", lambda r: r.get("tune", {}).get("tables_s")),
                      ("load_sweep", lambda r: r["analysis"]["load_s"]),
                      ("recommend (incl. load)", lambda r: r["analysis"]["recommend_s"]),
                      ("analyze (report)", lambda r: r["analysis"]["analyze_s"]),
                      ("analysis CPU (all three)", lambda r: r["analysis"].get("cpu_s")),
                      ("confirmation stage", lambda r: r.get("confirm", {}).get("stage_s")),
                      ("confirmation: rung scores read", lambda r: r.get("confirm", {}).get("rungs_s"))]:
        pairs = [(n, get(results[n])) for n in sizes if get(results[n])]
        print(f"  {name:<36} k = {slope([p[0] for p in pairs], [p[1] for p in pairs]):.2f}  over N = {[p[0] for p in pairs]}")


if __name__ == "__main__":
    main()
