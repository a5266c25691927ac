"""Fidelity study under a fixed CPU budget: does SimMTM pre-training help, and does the swept r/M help more?

Arms, each over ``--seeds`` (default 0 1 2), all scored once on the test split after fine-tuning with early
stopping on validation:

* ETTh1, horizon 96 (``sweeps/quick.yaml``: L = 96, a small transformer, 99 pre-training steps, <= 100 fine-tune
  steps): random init; SimMTM with the paper's r = 0.5, M = 3, tau = 0.2; SimMTM with the r/M/tau the quick sweep
  (``simmtm sweep sweeps/quick.yaml``, run first by this script) found best on validation;
* cross-domain ETTh2 -> ETTh1: pre-trained on ETTh2 with the paper's defaults, fine-tuned and tested on ETTh1;
* classification (``sweeps/gunpoint.yaml``: GunPoint, ResNet-1D): random init against SimMTM.

Every step is a ``simmtm`` command run in a subprocess, its log beside its output; a step whose output already
exists is not run again, so an interrupted study resumes where it stopped. The summary (per seed, mean +/- sd, and
the paired difference to random init) is printed and written to ``OUT/fidelity.json`` and ``OUT/fidelity.md``.

    python benchmarks/fidelity.py --out runs/fidelity                  # the whole study (about an hour on 2 cores)
    python benchmarks/fidelity.py --out runs/fidelity --threads 1      # leave the other core to another job
    python benchmarks/fidelity.py --out runs/fidelity --summary        # only re-print the tables
    python benchmarks/fidelity.py --out runs/fidelity-long --parts etth1 cross --sweep runs/fidelity/sweep \
        --set pretrain.epochs=12                                        # 4x the pre-training, same swept r/M
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from simmtm.sweep.spec import get_key

ROOT = Path(__file__).resolve().parent.parent
FORECAST = ROOT / "sweeps" / "quick.yaml"
CLASSIFY = ROOT / "sweeps" / "gunpoint.yaml"
SEARCHED = ("pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature")


def simmtm(args: list[str], log: Path, *, append: bool = False) -> None:
    """Run one ``simmtm`` command, its output in ``log`` (``append``: after what a resumed run wrote there before);
    a failure stops the study with the log's tail. ``search_efficiency.py`` runs its sweeps through this too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"  $ simmtm {' '.join(args)}", flush=True)
    with log.open("a" if append else "w") as fh:
        done = subprocess.run([sys.executable, "-m", "simmtm", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"`simmtm {' '.join(args)}` failed (exit {done.returncode}); log {log}:\n{tail}")
    print(f"    {time.time() - started:.0f} s", flush=True)


def sets(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def pretrained(out: Path, config: Path, common: dict[str, Any], extra: dict[str, Any]) -> Path:
    done = out.with_suffix(".done")  # beside the run: a re-run of an interrupted pre-training resumes it
    if not done.exists():
        simmtm(["pretrain", str(config), "--out", str(out), "--no-progress", *sets({**common, **extra})], out.with_suffix(".log"))
        done.touch()
    return out


def finetuned(out: Path, config: Path, common: dict[str, Any], source: Path | None) -> dict[str, Any]:
    metrics = out / "metrics.json"
    if not metrics.exists():
        args = ["finetune", str(config), "--out", str(out), "--no-progress", "--overwrite", *sets(common)]
        if source is not None:
            args += ["--from", str(source)]
        simmtm(args, out.with_suffix(".log"))
    return json.loads(metrics.read_text())


def swept_params(out: Path, sweep: Path | None = None) -> dict[str, Any]:
    """The quick sweep's best r/M/tau (validation score): from ``sweep``, else running the sweep into OUT/sweep."""
    best = (sweep or out / "sweep") / "best.yaml"
    if sweep is not None and not best.exists():
        raise SystemExit(f"fidelity: --sweep {sweep}: no best.yaml there (a finished `simmtm sweep` directory?)")
    if not best.exists():
        resume = ["--resume"] if (out / "sweep").exists() else []
        simmtm(["sweep", str(FORECAST), "--out", str(out / "sweep"), "--quiet-table", *resume], out / "sweep.log")
    run = yaml.safe_load(best.read_text())
    return {key: get_key(run, key) for key in SEARCHED}


def study(out: Path, seeds: list[int], threads: int, parts: set[str], *, overrides: dict[str, str] | None = None,
          sweep: Path | None = None) -> dict[str, Any]:
    """Run (or resume) every arm; ``overrides`` (dotted key: value) apply to every run, e.g. a longer pre-training."""
    overrides = overrides or {}
    results: dict[str, Any] = {"seeds": seeds, "threads": threads, "overrides": overrides, "arms": {}}
    arms = results["arms"]

    def record(arm: str, seed: int, metrics: dict[str, Any]) -> None:
        arms.setdefault(arm, {})[str(seed)] = metrics
        (out / "fidelity.json").write_text(json.dumps(results, indent=2) + "\n")

    if parts & {"etth1", "cross"}:
        swept = swept_params(out, sweep) if "etth1" in parts else None
        results["swept"] = swept
        print(f"quick sweep's best: {swept}", flush=True)
        for seed in seeds:
            common = {"seed": seed, "threads": threads, **overrides}
            print(f"== ETTh1 seed {seed}", flush=True)
            record("ETTh1 random init", seed, finetuned(out / f"etth1-random-s{seed}", FORECAST, common, None))
            if "etth1" in parts:
                pre = pretrained(out / f"etth1-paper-pre-s{seed}", FORECAST, common, {})
                record("ETTh1 SimMTM paper r/M", seed, finetuned(out / f"etth1-paper-s{seed}", FORECAST, common, pre))
                pre = pretrained(out / f"etth1-swept-pre-s{seed}", FORECAST, common, swept)
                record("ETTh1 SimMTM swept r/M", seed, finetuned(out / f"etth1-swept-s{seed}", FORECAST, common, pre))
            if "cross" in parts:
                pre = pretrained(out / f"etth2-pre-s{seed}", FORECAST, common, {"data.name": "ETTh2"})
                record("ETTh2 -> ETTh1 SimMTM", seed, finetuned(out / f"etth2-etth1-s{seed}", FORECAST, common, pre))
    if "cls" in parts:
        for seed in seeds:
            common = {"seed": seed, "threads": threads, **overrides}
            print(f"== GunPoint seed {seed}", flush=True)
            record("GunPoint random init", seed, finetuned(out / f"gunpoint-random-s{seed}", CLASSIFY, common, None))
            pre = pretrained(out / f"gunpoint-pre-s{seed}", CLASSIFY, common, {})
            record("GunPoint SimMTM", seed, finetuned(out / f"gunpoint-simmtm-s{seed}", CLASSIFY, common, pre))
    return results


def scores(metrics: dict[str, Any]) -> dict[str, float]:
    if "horizons" in metrics:
        return {"mse": metrics["mse"], "mae": metrics["mae"]}
    return {"accuracy": metrics["accuracy"], "f1": metrics["f1"]}


def summary(results: dict[str, Any]) -> str:
    """Markdown: one row per arm (mean +/- sd over seeds, per-seed values) and the paired gain over random init."""
    lines = ["| arm | metric | mean +/- sd | per seed | paired diff. vs random init (mean, seeds better) |",
             "| --- | --- | ---: | --- | --- |"]
    arms = results["arms"]
    for arm, per_seed in arms.items():
        baseline = arms.get(("GunPoint" if arm.startswith("GunPoint") else "ETTh1") + " random init", {})
        seeds = sorted(per_seed, key=int)
        first = scores(per_seed[seeds[0]])
        for metric in first:
            values = [scores(per_seed[s])[metric] for s in seeds]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cell = f"{statistics.mean(values):.4f} +/- {sd:.4f}"
            diff = "-"
            paired = [s for s in seeds if s in baseline]
            if "random init" not in arm and paired:
                d = [scores(per_seed[s])[metric] - scores(baseline[s])[metric] for s in paired]
                better = sum((x < 0) if metric in ("mse", "mae") else (x > 0) for x in d)
                diff = f"{statistics.mean(d):+.4f} ({better}/{len(d)})"
            lines.append(f"| {arm} | {metric} | {cell} | {', '.join(f'{v:.4f}' for v in values)} | {diff} |")
    if results.get("swept"):
        lines.append("")
        lines.append("Swept r/M/tau (quick sweep's best on validation): "
                     + ", ".join(f"{k.split('.')[-1]} = {v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]} = {v}"
                                 for k, v in results["swept"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fidelity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (the sweep uses its own)")
    parser.add_argument("--parts", nargs="+", default=["etth1", "cross", "cls"], choices=("etth1", "cross", "cls"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run of the study (e.g. pretrain.epochs=12); repeatable")
    parser.add_argument("--sweep", type=Path, help="take the swept r/M/tau from this finished sweep instead of running one")
    parser.add_argument("--summary", action="store_true", help="print the tables of a finished (or partial) study")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.summary:
        results = json.loads((args.out / "fidelity.json").read_text())
    else:
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            parser.error(f"--set takes KEY=VALUE, got {bad[0]!r}")
        overrides = dict(o.split("=", 1) for o in args.overrides)
        results = study(args.out, args.seeds, args.threads, set(args.parts), overrides=overrides,
                        sweep=args.sweep.resolve() if args.sweep else None)
        results["wall_s"] = round(time.time() - started, 1)
        (args.out / "fidelity.json").write_text(json.dumps(results, indent=2) + "\n")
    table = summary(results)
    (args.out / "fidelity.md").write_text(table + "\n")
    print(table)
    if "wall_s" in results:
        print(f"\nwall time this invocation: {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
