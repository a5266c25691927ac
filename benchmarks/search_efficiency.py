"""Search efficiency: compute each r/M search needs to come close to the best cell of the full r x M grid.

One fixed small problem (``benchmarks/search_problem.yaml``: ETTh1 univariate, L = 96, horizon 96; r on
{0.1, ..., 0.9} x M on {1, ..., 5}, 45 cells, tau fixed). The full grid runs once as the reference (FIFO: every
cell pre-trained and fine-tuned). Then, with ``--seeds`` different sampler seeds (``search.seed``; the training seed
stays the grid's, so a search's trial of a cell gets that cell's grid score): TPE with ASHA (the product's
default), TPE alone, and random search, each ``--samples`` trials, 2 at once. All are real ``simmtm sweep`` runs.

For each search, trials are taken in the order they were started and their compute summed (pre-training epochs
run, a pruned trial's included; and trial wall time) until the first COMPLETE trial whose validation score meets
the target; the figure is that compute as a fraction of the grid's. Two targets: within 1 % of the grid's best
score (the issue's), and at least as good as the grid's k-th best cell (``--top-k``, default 3 of 45), which still
separates the searches when the whole grid lies within 1 % of its best. A search that never meets a target within
its trials is reported as "not reached" (its whole compute is then a lower bound).

    python benchmarks/search_efficiency.py --out runs/search-efficiency            # grid + 3 methods x 3 seeds
    python benchmarks/search_efficiency.py --out runs/search-efficiency --summary  # re-print the tables

Every sweep keeps its own directory under ``--out`` and a finished one is not re-run; an interrupted one resumes.
Results: ``OUT/search_efficiency.json`` and ``OUT/search_efficiency.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import simmtm  # noqa: E402  (the same subprocess runner)

from simmtm.tuning.outputs import read_trials_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = ROOT / "benchmarks" / "search_problem.yaml"
R, M = "pretrain.mask_ratio", "pretrain.num_masked"
METHODS = {  # name: (search.method, scheduler)
    "TPE + ASHA": ("tpe", "asha"),
    "TPE": ("tpe", "fifo"),
    "random": ("random", "fifo"),
}


def sweep_file(out: Path, name: str, method: str, scheduler: str, *, samples: int, seed: int | None) -> Path:
    """Write one variant of the problem's sweep file into ``out`` and return its path."""
    raw = yaml.safe_load(PROBLEM.read_text())
    raw["tune"]["scheduler"]["type"] = scheduler
    if method == "grid":
        r, m = raw["search"]["params"][R], raw["search"]["params"][M]
        steps = round((r["high"] - r["low"]) / r["step"])
        raw["search"] = {"method": "grid", "grid": {
            R: [round(r["low"] + i * r["step"], 6) for i in range(steps + 1)],
            M: list(range(int(m["low"]), int(m["high"]) + 1)),
        }}
        raw["tune"].pop("num_samples", None)
    else:
        raw["search"] = {**raw["search"], "method": method, "seed": seed}
        raw["tune"]["num_samples"] = samples
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_sweep(config: Path, out: Path) -> list[dict[str, str]]:
    """Run (or resume, or reuse) one sweep; its trials.csv rows in trial-id (start) order."""
    marker = out.with_suffix(".done")
    if not marker.exists():
        resume = ["--resume"] if (out / "sweep.json").exists() else []
        simmtm(["sweep", str(config), "--out", str(out), "--quiet-table", *resume], out.with_suffix(".log"), append=True)
        marker.touch()
    return read_trials_csv(out / "trials.csv")


def sweep_wall(out: Path) -> float | None:
    """The sweep's own wall time (start to end, Ray start-up excluded), as the driver recorded it."""
    timing = out / "timing.json"
    return json.loads(timing.read_text()).get("sweep_wall_s") if timing.exists() else None


def cell(row: dict[str, str]) -> tuple[float, int]:
    return round(float(row[R]), 3), int(float(row[M]))


def compute_until(rows: list[dict[str, str]], reached) -> dict[str, Any]:
    """Epochs and trial seconds summed over trials in start order up to the first COMPLETE one that ``reached``."""
    epochs = seconds = 0.0
    for n, row in enumerate(rows, start=1):
        epochs += float(row["epochs"] or 0)
        seconds += float(row["wall_s"] or 0)
        if row["state"] == "COMPLETE" and row["score"] and reached(float(row["score"])):
            return {"reached": True, "trials": n, "epochs": epochs, "seconds": seconds}
    return {"reached": False, "trials": len(rows), "epochs": epochs, "seconds": seconds}


def study(out: Path, seeds: list[int], samples: int, top_k: int) -> dict[str, Any]:
    print("== reference: the full grid", flush=True)
    grid_rows = run_sweep(sweep_file(out, "grid", "grid", "fifo", samples=0, seed=None), out / "grid")
    complete = [r for r in grid_rows if r["state"] == "COMPLETE" and r["score"]]
    scores = sorted(float(r["score"]) for r in complete)
    best, worst = scores[0], scores[-1]
    grid = {
        "cells": len(grid_rows), "complete": len(complete), "best": best, "worst": worst,
        "best_cell": cell(min(complete, key=lambda r: float(r["score"]))),
        "kth_best": scores[top_k - 1], "top_k": top_k, "within_1pct": sum(s <= best * 1.01 for s in scores),
        "epochs": sum(float(r["epochs"] or 0) for r in grid_rows), "seconds": sum(float(r["wall_s"] or 0) for r in grid_rows),
        "sweep_wall_s": sweep_wall(out / "grid"),
        "scores": {f"{c[0]:.1f},{c[1]}": float(r["score"]) for r in complete for c in [cell(r)]},
    }
    results: dict[str, Any] = {"grid": grid, "seeds": seeds, "samples": samples, "searches": {}}
    targets = {"1pct": lambda s: s <= best * 1.01, "topk": lambda s: s <= grid["kth_best"]}
    for name, (method, scheduler) in METHODS.items():
        for seed in seeds:
            slug = f"{name.lower().replace(' + ', '-').replace(' ', '-')}-s{seed}"
            print(f"== {name}, sampler seed {seed}", flush=True)
            rows = run_sweep(sweep_file(out, slug, method, scheduler, samples=samples, seed=seed), out / slug)
            agree = [abs(float(r["score"]) - grid["scores"][f"{c[0]:.1f},{c[1]}"]) for r in rows
                     if r["state"] == "COMPLETE" and r["score"] for c in [cell(r)] if f"{c[0]:.1f},{c[1]}" in grid["scores"]]
            entry = {"trials": len(rows), "complete": sum(r["state"] == "COMPLETE" for r in rows),
                     "pruned": sum(r["state"] == "PRUNED" for r in rows),
                     "epochs": sum(float(r["epochs"] or 0) for r in rows), "seconds": sum(float(r["wall_s"] or 0) for r in rows),
                     "best": min((float(r["score"]) for r in rows if r["state"] == "COMPLETE" and r["score"]), default=None),
                     "max_abs_diff_to_grid": max(agree, default=None), "sweep_wall_s": sweep_wall(out / slug)}
            for target, reached in targets.items():
                hit = compute_until(rows, reached)
                hit["epochs_frac"] = hit["epochs"] / grid["epochs"]
                hit["seconds_frac"] = hit["seconds"] / grid["seconds"]
                entry[target] = hit
            results["searches"].setdefault(name, {})[str(seed)] = entry
            (out / "search_efficiency.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _frac(hits: list[dict[str, Any]], key: str) -> str:
    """Median (and mean) fraction of the grid's compute; an unreached target counts its whole search (a lower bound)."""
    values = [h[key] for h in hits]
    return f"{statistics.median(values):.0%} ({statistics.mean(values):.0%})"


def summary(results: dict[str, Any]) -> str:
    g = results["grid"]
    lines = [
        f"Reference grid: {g['cells']} cells ({g['complete']} complete), {g['epochs']:.0f} pre-training epochs, "
        f"{g['seconds'] / 60:.1f} trial-minutes; best val MSE {g['best']:.5f} at r = {g['best_cell'][0]}, "
        f"M = {g['best_cell'][1]}; worst {g['worst']:.5f} (spread {g['worst'] / g['best'] - 1:.2%}); "
        f"{g['within_1pct']} of {g['complete']} cells lie within 1 % of the best; {g['top_k']}-th best {g['kth_best']:.5f}. "
        f"Grid sweep wall time (2 trials at once): {(g.get('sweep_wall_s') or float('nan')) / 60:.1f} min.",
        "",
        "Fractions are of the grid's compute: median over sampler seeds (mean in brackets); a search that never met the",
        "target counts its whole compute (so those figures are lower bounds).",
        "",
        "| search | seeds | trials (pruned, mean) | whole search, wall (mean) | best found vs grid best (mean gap) | target | reached | "
        "trials to reach (median) | pre-training epochs to reach | trial time to reach |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, per_seed in results["searches"].items():
        entries = list(per_seed.values())
        pruned = statistics.mean(e["pruned"] for e in entries)
        trials = statistics.mean(e["trials"] for e in entries)
        walls = [e["sweep_wall_s"] for e in entries if e.get("sweep_wall_s")]
        wall = f"{statistics.mean(walls):.0f} s" if walls else "-"
        gaps = [e["best"] / g["best"] - 1 for e in entries if e.get("best") is not None]
        gap = f"+{statistics.mean(gaps):.2%}" if gaps else "-"
        for target, label in (("1pct", "within 1 % of grid best"), ("topk", f"one of the grid's top {g['top_k']}")):
            hits = [e[target] for e in entries]
            reached = sum(h["reached"] for h in hits)
            lines.append(
                f"| {name} | {len(entries)} | {trials:.0f} ({pruned:.1f}) | {wall} | {gap} | {label} | {reached}/{len(hits)} | "
                f"{statistics.median(h['trials'] for h in hits):.0f} | {_frac(hits, 'epochs_frac')} | {_frac(hits, 'seconds_frac')} |")
    diffs = [e["max_abs_diff_to_grid"] for s in results["searches"].values() for e in s.values() if e["max_abs_diff_to_grid"] is not None]
    if diffs:
        lines += ["", f"A search's score of a cell against the grid's score of that cell: largest difference {max(diffs):.2e}."]
    return "\n".join(lines)


def heatmap(results: dict[str, Any]) -> str:
    """The grid's val MSE as a text table (r rows, M columns), for the docs."""
    scores = results["grid"]["scores"]
    rs = sorted({float(k.split(",")[0]) for k in scores})
    ms = sorted({int(k.split(",")[1]) for k in scores})
    lines = ["| r \\ M | " + " | ".join(str(m) for m in ms) + " |", "| --- |" + " ---: |" * len(ms)]
    for r in rs:
        cells = [scores.get(f"{r:.1f},{m}") for m in ms]
        lines.append(f"| {r:.1f} | " + " | ".join("-" if v is None or math.isnan(v) else f"{v:.5f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "search-efficiency")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds of each search method")
    parser.add_argument("--samples", type=int, default=15, help="trials of each search (the grid has 45)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--summary", action="store_true", help="print the tables of a finished (or partial) study")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.summary:
        results = json.loads((args.out / "search_efficiency.json").read_text())
    else:
        results = study(args.out, args.seeds, args.samples, args.top_k)
        results["wall_s"] = round(time.time() - started, 1)
        (args.out / "search_efficiency.json").write_text(json.dumps(results, indent=2) + "\n")
    text = summary(results) + "\n\nGrid val MSE (r rows, M columns):\n\n" + heatmap(results)
    (args.out / "search_efficiency.md").write_text(text + "\n")
    print(text)
    if "wall_s" in results:
        print(f"\nwall time this invocation: {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
