"""Search efficiency on a measured grid: the product's searchers and ASHA replayed over the r x M grid of
``benchmarks/sensitivity.py`` (a tabular benchmark), at least 10 sampler seeds a method (issue 13.6).

    python benchmarks/search_replay.py --grid runs/sens/results.jsonl --seeds 0 1 2 3 4 5 6 7 8 9 --samples 12

The grid holds, for every (r, M, training seed), the rung scores the product's probe gave after the rung epochs and
the final scores of both protocols. Each search is the real sweep machinery of ``simmtm sweep``
(``simmtm.tuning.search.SweepSearch`` over the config's search space with an Optuna study in SQLite, Ray Tune's
``ASHAScheduler`` with the driver's settings or FIFO, ``tune.Tuner`` with 2 trials at once), around a trial that
looks its cell up instead of training: it reports the recorded rung score after each rung epoch (ASHA may stop it
there) and then the recorded final score. As in a real sweep every trial of one search uses the same training seed
(the config's ``seed``); search seed s uses the grid's training seed number s mod (seeds in the grid).

Compute is counted in pre-training epochs (a pruned trial's epochs included) and in the trial time the grid
measured (pre-training time pro rata, plus the final protocol for a trial that finished). A search *reaches the
target* when its incumbent (its best finished trial by the searched validation score, which is what the sweep would
recommend) is a cell statistically tied with the grid's best (``simmtm.verdict.stats.tied_with_best`` on the grid's cell
means of ``--target-metric`` over all training seeds, one-sided 95 %). The figure is the compute spent until then,
as a fraction of one full grid pass (every cell once, the cheapest grid a user could run; the measured grid ran
every cell once per seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

R, M = "pretrain.mask_ratio", "pretrain.num_masked"
METHODS = {"TPE + ASHA": ("tpe", "asha"), "TPE": ("tpe", "fifo"), "random": ("random", "fifo")}


def load_grid(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("r")]


def cell_key(r: float, m: int) -> tuple[float, int]:
    return (round(float(r), 6), int(m))


def grid_target(rows: list[dict[str, Any]], protocol: str, metric: str, mode: str) -> dict[str, Any]:
    """The grid's cell means of ``metric``, its best cell and the cells tied with it."""
    from simmtm.verdict.stats import seed_spread, tied_with_best

    cells: dict[tuple[float, int], list[float]] = {}
    for row in rows:
        cells.setdefault(cell_key(row["r"], row["m"]), []).append(row[protocol][metric])
    tied = tied_with_best(cells, mode=mode)
    means = {k: statistics.fmean(v) for k, v in cells.items()}
    best = (min if mode == "min" else max)(means, key=lambda k: means[k])
    return {"cells": cells, "means": means, "best": best, "tied": tied, "noise": seed_spread(cells).sd}


def make_trial(table: dict[str, Any]):
    """A Tune function trainable that replays one cell of the grid (one training seed)."""

    def replay(config: dict[str, Any]) -> None:
        from ray import tune

        row = table["rows"][(cell_key(config[R], config[M]))]
        for epoch in table["rung_epochs"]:
            tune.report({"epoch": epoch, table["probe_metric"]: row["rungs"][str(epoch)], "stage": "probe"})
        tune.report({"epoch": table["epochs"] + 1, table["metric"]: row[table["protocol"]][table["metric"]],
                     "stage": "final"})

    return replay


def run_search(config_path: Path, grid: list[dict[str, Any]], *, method: str, scheduler: str, seed: int,
               samples: int, protocol: str, work: Path) -> list[dict[str, Any]]:
    """One search over the grid; its trials in start order with their cell, epochs run and state."""
    from ray import tune

    from simmtm.config.schema import load_config
    from simmtm.data.registry import resolve
    from simmtm.tuning.driver import EXPERIMENT_NAME
    from simmtm.tuning.search import SweepSearch, open_storage
    from simmtm.tuning.sections import resolve_metric, sweep_spec
    from simmtm.tuning.space import first_point, flat_config
    from simmtm.tuning.spec import probe_key

    config = load_config(config_path, [f"search.method={method}", f"search.seed={seed}",
                                       f"tune.scheduler.type={scheduler}", f"tune.num_samples={samples}"])
    spec = sweep_spec(config, config_path)
    metric, mode = resolve_metric(spec.tune, resolve(config.data).task)
    seeds = sorted({row["seed"] for row in grid})
    train_seed = seeds[seed % len(seeds)]
    rows = {cell_key(r["r"], r["m"]): r for r in grid if r["seed"] == train_seed}
    epochs = config.pretrain.epochs
    rung_epochs = sorted(int(e) for e in next(iter(rows.values()))["rungs"])
    table = {"rows": rows, "rung_epochs": [e for e in rung_epochs if e <= epochs], "epochs": epochs,
             "metric": metric, "probe_metric": probe_key(metric), "protocol": protocol}
    out = work / f"{method}-{scheduler}-{seed}"
    out.mkdir(parents=True)
    searcher = SweepSearch(spec.search, base_values=flat_config(config.run_dict()), metric=metric,
                           probe_metric=probe_key(metric), mode=mode, seed=seed,
                           storage=open_storage(f"sqlite:///{out / 'optuna.db'}"), study_name=out.name,
                           first=first_point(spec, config.run_dict()))
    sched = spec.tune.scheduler
    if scheduler == "asha":  # the driver's settings (simmtm.tuning.driver._tuner)
        asha = tune.schedulers.ASHAScheduler(time_attr="epoch", metric=probe_key(metric), mode=mode, max_t=epochs + 1,
                                             grace_period=min(sched.grace_period, epochs),
                                             reduction_factor=sched.reduction_factor)
    else:
        asha = tune.schedulers.FIFOScheduler()
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tuner = tune.Tuner(
        tune.with_resources(make_trial(table), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=samples,
                                    max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=str(out), verbose=0),
    )
    results = tuner.fit()
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        cfg = result.config
        last = frame.iloc[-1] if frame is not None and len(frame) else None
        finished = last is not None and last.get("stage") == "final"
        trials.append({
            "trial_id": result.metrics.get("trial_id") if result.metrics else None,
            "cell": cell_key(cfg[R], cfg[M]),
            "epochs": epochs if finished else int(last["epoch"]) if last is not None else 0,
            "finished": finished,
            "score": float(last[metric]) if finished else None,
            "start": float(frame["timestamp"].iloc[0]) if frame is not None and len(frame) else math.inf,
        })
    trials.sort(key=lambda t: (t["start"], t["trial_id"] or ""))
    return trials


def compute_to_target(trials: list[dict[str, Any]], grid_rows: dict[tuple[float, int], dict[str, Any]],
                      target: dict[str, Any], *, protocol: str, mode: str, epochs: int) -> dict[str, Any]:
    """Walk the search's trials in start order; the compute spent when its incumbent first is a tied cell."""
    spent_epochs, spent_s, best = 0, 0.0, None
    sign = 1.0 if mode == "min" else -1.0
    for n, t in enumerate(trials, 1):
        row = grid_rows[t["cell"]]
        spent_epochs += t["epochs"]
        spent_s += row["pretrain_s"] * t["epochs"] / epochs + (row[f"{protocol}_s"] if t["finished"] else 0.0)
        if t["finished"] and (best is None or sign * t["score"] < sign * best["score"]):
            best = t
        if best is not None and best["cell"] in target["tied"]:
            return {"reached": True, "trials": n, "epochs": spent_epochs, "seconds": spent_s, "incumbent": best["cell"]}
    return {"reached": False, "trials": len(trials), "epochs": spent_epochs, "seconds": spent_s,
            "incumbent": best["cell"] if best else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=Path, required=True, help="results.jsonl of benchmarks/sensitivity.py")
    p.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "sensitivity.yaml")
    p.add_argument("--protocol", choices=("probe", "full"), default="probe", help="the trial's final score")
    p.add_argument("--target-metric", default=None, help="grid score that defines the tie set (default: the search's)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    import ray

    from simmtm.config.schema import load_config
    from simmtm.data.registry import resolve
    from simmtm.tuning.sections import resolve_metric, sweep_spec

    grid = load_grid(a.grid)
    config = load_config(a.config, [])
    spec = sweep_spec(config, a.config)
    metric, mode = resolve_metric(spec.tune, resolve(config.data).task)
    target_metric = a.target_metric or metric
    target_mode = "min" if target_metric.endswith(("mse", "mae", "log_loss")) else "max"
    target = grid_target(grid, a.protocol, target_metric, target_mode)
    n_cells = len(target["means"])
    pass_epochs = n_cells * config.pretrain.epochs
    seeds = sorted({row["seed"] for row in grid})
    by_seed = {s: {cell_key(r["r"], r["m"]): r for r in grid if r["seed"] == s} for s in seeds}
    pass_s = statistics.fmean(
        sum(r["pretrain_s"] + r[f"{a.protocol}_s"] for r in rows.values()) for rows in by_seed.values()
    )
    print(f"grid: {n_cells} cells x {len(seeds)} seeds; target: {len(target['tied'])} cells tied with the best "
          f"r = {target['best'][0]:g}, M = {target['best'][1]} by {a.protocol} {target_metric} "
          f"(seed noise {target['noise']:.4f}); one grid pass = {pass_epochs} epochs, {pass_s:.0f} trial-s", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {"grid": str(a.grid), "protocol": a.protocol, "target_metric": target_metric,
                           "tied": sorted(target["tied"]), "best": target["best"], "noise": target["noise"],
                           "pass_epochs": pass_epochs, "pass_s": pass_s, "searches": []}
    try:
        with tempfile.TemporaryDirectory() as work:
            for name, (method, scheduler) in METHODS.items():
                for seed in a.seeds:
                    started = time.time()
                    trials = run_search(a.config, grid, method=method, scheduler=scheduler, seed=seed,
                                        samples=a.samples, protocol=a.protocol, work=Path(work))
                    train_seed = seeds[seed % len(seeds)]
                    hit = compute_to_target(trials, by_seed[train_seed], target, protocol=a.protocol, mode=mode,
                                            epochs=config.pretrain.epochs)
                    pruned = sum(not t["finished"] for t in trials)
                    out["searches"].append({"method": name, "seed": seed, "train_seed": train_seed,
                                            "pruned": pruned, **hit,
                                            "search_epochs": sum(t["epochs"] for t in trials)})
                    print(f"{name:10s} seed {seed}: {'reached' if hit['reached'] else 'missed '} after "
                          f"{hit['trials']} trials, {hit['epochs']} epochs ({hit['epochs'] / pass_epochs:.0%} of a "
                          f"grid pass); {pruned} pruned; incumbent {hit['incumbent']} [{time.time() - started:.0f}s]",
                          flush=True)
    finally:
        ray.shutdown()
    print("\n".join(summary(out)))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=list))
    return 0


def summary(out: dict[str, Any]) -> list[str]:
    lines = ["", "| search | seeds | reached | trials to reach (median) | epochs to reach, share of a grid pass "
             "(median [IQR]) | trial time to reach (median) | whole search, epochs (mean) | pruned (mean) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in METHODS:
        rows = [s for s in out["searches"] if s["method"] == name]
        if not rows:
            continue
        frac = sorted(s["epochs"] / out["pass_epochs"] for s in rows)
        q = statistics.quantiles(frac, n=4) if len(frac) > 1 else [frac[0]] * 3
        lines.append(
            f"| {name} | {len(rows)} | {sum(s['reached'] for s in rows)}/{len(rows)} | "
            f"{statistics.median(s['trials'] for s in rows):g} | {q[1]:.0%} [{q[0]:.0%}-{q[2]:.0%}] | "
            f"{statistics.median(s['seconds'] / out['pass_s'] for s in rows):.0%} | "
            f"{statistics.fmean(s['search_epochs'] for s in rows) / out['pass_epochs']:.0%} | "
            f"{statistics.fmean(s['pruned'] for s in rows):.1f} |"
        )
    lines.append("(a search that missed counts its whole compute: a lower bound)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
