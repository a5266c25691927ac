"""Fidelity study under a fixed CPU budget: does SimMTM pre-training help, and does the swept r/M help more?

Arms, each over ``--seeds`` (default 0 1 2), all scored once on the test split after fine-tuning with early
stopping on validation:

* ETTh1, horizon 96 (``sweeps/quick.yaml``: L = 96, a small transformer, 99 pre-training steps, <= 100 fine-tune
  steps): random init; SimMTM with the paper's r = 0.5, M = 3, tau = 0.2; SimMTM with the r/M/tau the quick sweep
  (``simmtm sweep sweeps/quick.yaml``, run first by this script) found best on validation;
* cross-domain ETTh2 -> ETTh1: pre-trained on ETTh2 with the paper's defaults, fine-tuned and tested on ETTh1;
* classification (``sweeps/gunpoint.yaml``: GunPoint, ResNet-1D): random init against SimMTM.

``--parts faithful`` is the study with the official recipe (``benchmarks/fidelity_faithful.yaml``, docs/fidelity.md)
at a CPU size, for ``--seeds`` (at least 5), ETTh1 at the config's horizons (averaged), four arms per seed:

* SimMTM: pre-trained with the paper's r = 0.5, M = 3, tau = 0.2, the best pre-training checkpoint fine-tuned;
* generic warm start: the same pre-training (model, data, steps, optimiser, losses) with r = 0.01, so that almost
  no point is masked: each original is rebuilt from near-identical copies of itself, an autoencoder with a
  contrastive term over dropout noise. Whatever masked modelling adds is gone; the warm start itself is not;
* random init, compute-matched: no pre-training, fine-tuned for at least as many optimiser steps per horizon as
  the SimMTM arm of the same seed took in pre-training plus fine-tuning, the fine-tuning schedule stretched over
  them (same first epoch, the halving spread so that its last epoch runs at SimMTM's last lr), every step run and
  the validation-best epoch kept (early stopping as model selection; patience = epochs);
* SimMTM, fine-tuned as long as the random init: the SimMTM arm's pre-training with the random init's fine-tuning
  schedule (more updates in all than the random init): does pre-training help once fine-tuning is not cut short?

Runs go ``--jobs`` at a time (one torch thread each). ``OUT/faithful.json`` keeps every run (test and validation
scores per horizon, optimiser steps, best pre-training epoch, wall time of each command); the table and the paired
differences (arm minus arm, per seed, with a t and a bootstrap 95 % interval) go to ``OUT/faithful.md``.

Every step is a ``simmtm`` command run in a subprocess, its log beside its output; a step whose output already
exists is not run again, so an interrupted study resumes where it stopped. The summary (per seed, mean +/- sd, and
the paired difference to random init) is printed and written to ``OUT/fidelity.json`` and ``OUT/fidelity.md``.

    python benchmarks/fidelity.py --out runs/fidelity                  # the whole study (about an hour on 2 cores)
    python benchmarks/fidelity.py --out runs/fidelity --threads 1      # leave the other core to another job
    python benchmarks/fidelity.py --out runs/fidelity --summary        # only re-print the tables
    python benchmarks/fidelity.py --parts faithful --out runs/fidelity-faithful --seeds 0 1 2 3 4 --jobs 2
    python benchmarks/fidelity.py --out runs/fidelity-long --parts etth1 cross --sweep runs/fidelity/sweep \
        --set pretrain.epochs=12                                        # 4x the pre-training, same swept r/M
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from simmtm.config.schema import load_config
from simmtm.tuning.spec import get_key

ROOT = Path(__file__).resolve().parent.parent
FORECAST = ROOT / "sweeps" / "quick.yaml"
CLASSIFY = ROOT / "sweeps" / "gunpoint.yaml"
FAITHFUL = ROOT / "benchmarks" / "fidelity_faithful.yaml"
SEARCHED = ("pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature")


def simmtm(args: list[str], log: Path, *, append: bool = False) -> float:
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
    took = time.time() - started
    print(f"    {took:.0f} s  ({log.stem})", flush=True)
    return took


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

# --- the study with the official recipe (--parts faithful) -------------------------------------------------------

SIMMTM = "SimMTM (r 0.5, M 3)"
GENERIC = "generic warm start (r 0.01)"
BASELINE = "random init, compute-matched"
SIMMTM_LONG = "SimMTM, fine-tuned as long as the random init"
ARMS = (SIMMTM, GENERIC, BASELINE, SIMMTM_LONG)
# first minus second, per seed
PAIRS = ((SIMMTM, BASELINE), (GENERIC, BASELINE), (SIMMTM, GENERIC), (SIMMTM_LONG, BASELINE))
# The warm start without masked modelling: about one point in a hundred masked, so a series' copies are itself.
GENERIC_PRETRAIN = {"pretrain.mask_ratio": 0.01}

# Student's t 0.975 quantile for 1-30 degrees of freedom (beyond 30 the df-30 value: slightly wide, never narrow).
def paired_interval(diffs: list[float], *, n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean of per-seed differences (first arm minus second) with two 95 % intervals, Student's t and the percentile
    bootstrap over seeds (``simmtm.verdict.stats.paired_difference``, the sweep's confirmation statistics). ``better``:
    differences below zero (a lower error for the first arm)."""
    from simmtm.verdict.stats import paired_difference

    if len(diffs) < 2:
        raise ValueError(f"a paired interval needs at least 2 differences, got {len(diffs)}")
    st = paired_difference(diffs, [0.0] * len(diffs), mode="max", n_boot=n_boot, seed=seed)
    assert st.ci is not None and st.ci_boot is not None and st.sd is not None
    return {"n": st.n, "mean": st.mean, "sd": st.sd, "t_low": st.ci[0], "t_high": st.ci[1],
            "boot_low": st.ci_boot[0], "boot_high": st.ci_boot[1], "better": sum(d < 0 for d in diffs)}


def history(run: Path, kind: str) -> list[dict[str, Any]]:
    records = (json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip())
    return [r for r in records if r["kind"] == kind]


def pretrain_record(run: Path) -> dict[str, Any]:
    epochs = history(run, "pretrain_epoch")
    best = min(reversed(epochs), key=lambda e: e["val_loss"])  # ties go to the later epoch, as best.pt does
    return {"steps": epochs[-1]["step"], "epochs": len(epochs), "best_epoch": best["epoch"],
            "val_loss": best["val_loss"]}


def finetune_record(run: Path) -> dict[str, Any]:
    """Test and validation scores per horizon with the optimiser steps each horizon's head took."""
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = history(run, "finetune_epoch")
    horizons = {}
    for h, m in metrics["horizons"].items():
        mine = [e for e in epochs if e["stage"] == f"h{h}"]
        horizons[h] = {**m, "steps": mine[-1]["step"], "steps_per_epoch": mine[0]["step"]}
    return {"mse": metrics["mse"], "mae": metrics["mae"], "val_mse": metrics["val_mse"], "horizons": horizons}


def once(run: Path, args: list[str], read) -> dict[str, Any]:
    """Run one ``simmtm`` command into ``run`` unless it finished before; its record (``read(run)`` and the
    command's wall time) is kept as RUN.json, so a resumed study reads it instead of running again."""
    kept = run.with_suffix(".json")
    if kept.exists():
        return json.loads(kept.read_text())
    if run.exists():  # an interrupted command: start it again
        shutil.rmtree(run)
    wall = simmtm([args[0], str(FAITHFUL), "--out", str(run), "--no-progress", *args[1:]], run.with_suffix(".log"))
    record = {**read(run), "wall_s": round(wall, 1)}
    kept.write_text(json.dumps(record, indent=2) + "\n")
    return record


def matched_finetune(
    pre_steps: int, ft_steps: int, steps_per_epoch: int, epochs: int, lr_decay: float
) -> dict[str, Any]:
    """Fine-tuning overrides that give a random init at least ``pre_steps + ft_steps`` optimiser steps a horizon
    (whole epochs, no early stop before the last: patience = epochs; the validation-best epoch is kept), with the
    official schedule (first epoch at lr/25, then lr * decay^(e-2) in epoch e) stretched so that the last epoch
    runs at the lr of the pre-trained arm's last epoch (``epochs`` at ``lr_decay``)."""
    matched = max(math.ceil((pre_steps + ft_steps) / steps_per_epoch), epochs)
    decay = lr_decay ** ((epochs - 2) / (matched - 2)) if epochs > 2 and matched > 2 else lr_decay
    return {"finetune.epochs": matched, "finetune.patience": matched, "finetune.lr_decay": round(decay, 6)}


def pretrained_arm(out: Path, tag: str, seed: int, common: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    pre = out / f"{tag}-pre-s{seed}"
    pre_record = once(pre, ["pretrain", *sets({**common, **extra})], pretrain_record)
    record = once(out / f"{tag}-ft-s{seed}", ["finetune", "--from", str(pre), *sets(common)], finetune_record)
    return {**record, "pretrain": pre_record, "overrides": extra}


def faithful_seed(
    out: Path, seed: int, threads: int, arm: str, simmtm_record: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One arm of one seed; the compute-matched random init takes its budget from the seed's ``simmtm_record``."""
    common = {"seed": seed, "threads": threads}
    if arm == SIMMTM:
        return pretrained_arm(out, "simmtm", seed, common, {})
    if arm == GENERIC:
        return pretrained_arm(out, "generic", seed, common, GENERIC_PRETRAIN)
    recipe = load_config(FAITHFUL).finetune
    horizons = simmtm_record["horizons"].values()
    extra = matched_finetune(simmtm_record["pretrain"]["steps"], max(h["steps"] for h in horizons),
                             min(h["steps_per_epoch"] for h in horizons), recipe.epochs, recipe.lr_decay)
    if arm == BASELINE:
        record = once(out / f"random-ft-s{seed}", ["finetune", *sets({**common, **extra})], finetune_record)
        return {**record, "overrides": extra}
    # SIMMTM_LONG: the SimMTM arm's pre-training, fine-tuned with the random init's longer schedule
    pre = out / f"simmtm-pre-s{seed}"
    record = once(out / f"simmtm-long-ft-s{seed}", ["finetune", "--from", str(pre), *sets({**common, **extra})],
                  finetune_record)
    return {**record, "pretrain": simmtm_record["pretrain"], "overrides": extra}


def faithful_study(out: Path, seeds: list[int], threads: int, jobs: int) -> dict[str, Any]:
    """Every arm of every seed, ``jobs`` commands at a time: per seed the SimMTM arm, then its compute-matched
    random init and its long fine-tuning (whose budget it sets), and the generic warm start beside them."""
    results: dict[str, Any] = {"config": str(FAITHFUL.relative_to(ROOT)), "seeds": seeds, "threads": threads,
                               "jobs": jobs, "arms": {arm: {} for arm in ARMS}}
    lock = threading.Lock()

    def record(arm: str, seed: int, entry: dict[str, Any]) -> dict[str, Any]:
        with lock:
            results["arms"][arm][str(seed)] = entry
            (out / "faithful.json").write_text(json.dumps(results, indent=2) + "\n")
        return entry

    def pretrained_then_matched(seed: int) -> None:
        simmtm_record = record(SIMMTM, seed, faithful_seed(out, seed, threads, SIMMTM))
        for arm in (BASELINE, SIMMTM_LONG):
            record(arm, seed, faithful_seed(out, seed, threads, arm, simmtm_record))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = []
        for seed in seeds:
            futures.append(pool.submit(pretrained_then_matched, seed))
            futures.append(pool.submit(lambda s=seed: record(GENERIC, s, faithful_seed(out, s, threads, GENERIC))))
        for future in futures:
            future.result()  # a failed command stops the study here, with its log's tail
    return results


def encoder_updates(entry: dict[str, Any]) -> int:
    """Optimiser steps the encoder of one run's longest horizon took: pre-training plus fine-tuning."""
    return entry.get("pretrain", {}).get("steps", 0) + max(h["steps"] for h in entry["horizons"].values())


def faithful_summary(results: dict[str, Any]) -> str:
    """Markdown: each arm (test MSE/MAE averaged over horizons; per horizon; steps), then the paired differences."""
    arms = {arm: per_seed for arm, per_seed in results["arms"].items() if per_seed}
    horizons = sorted({h for per_seed in arms.values() for e in per_seed.values() for h in e["horizons"]}, key=int)
    lines = ["| arm | seeds | MSE (mean over horizons) mean +/- sd | MAE mean +/- sd | "
             + " | ".join(f"MSE h{h}" for h in horizons)
             + " | encoder updates (pre-train + fine-tune) | per seed MSE |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in horizons) + " | ---: | --- |"]
    for arm, per_seed in arms.items():
        seeds = sorted(per_seed, key=int)
        cells = []
        for metric in ("mse", "mae"):
            values = [per_seed[s][metric] for s in seeds]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.fmean(values):.4f} +/- {sd:.4f}")
        cells += [f"{statistics.fmean(per_seed[s]['horizons'][h]['mse'] for s in seeds):.4f}" for h in horizons]
        updates = sorted({encoder_updates(per_seed[s]) for s in seeds})
        cells.append(str(updates[0]) if len(updates) == 1 else f"{updates[0]}-{updates[-1]}")
        cells.append(", ".join(f"{per_seed[s]['mse']:.4f}" for s in seeds))
        lines.append(f"| {arm} | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", "| paired difference (per seed) | metric | seeds | mean | sd | 95 % t interval | 95 % bootstrap "
              "interval | seeds where the first is better |", "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for first, second in PAIRS:
        common = sorted(set(arms.get(first, {})) & set(arms.get(second, {})), key=int)
        if len(common) < 2:
            continue
        for metric in ("mse", "mae"):
            st = paired_interval([arms[first][s][metric] - arms[second][s][metric] for s in common])
            lines.append(f"| {first} - {second} | {metric} | {st['n']} | {st['mean']:+.4f} | {st['sd']:.4f} | "
                         f"[{st['t_low']:+.4f}, {st['t_high']:+.4f}] | [{st['boot_low']:+.4f}, {st['boot_high']:+.4f}] "
                         f"| {st['better']}/{st['n']} |")
    return "\n".join(lines)


def faithful_main(out: Path, seeds: list[int], threads: int, jobs: int, *, summary_only: bool) -> None:
    """Run (or resume) the faithful study, noting the commit, the wall time and the machine's load average every
    minute (other jobs may share the machine); then write and print its tables."""
    path = out / "faithful.json"
    if summary_only:
        results = json.loads(path.read_text())
    else:
        started, loads, stop = time.time(), [], threading.Event()
        earlier = json.loads(path.read_text()).get("invocations", []) if path.exists() else []  # a resumed study
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()  # the code as it was when the study started

        def sample_load() -> None:
            while True:
                loads.append(round(os.getloadavg()[0], 2))
                if stop.wait(60):
                    return

        sampler = threading.Thread(target=sample_load, daemon=True)
        sampler.start()
        try:
            results = faithful_study(out, seeds, threads, jobs)
        finally:
            stop.set()
        this = {"commit": commit.stdout.strip() + ("+dirty" if dirty else ""), "cpus": os.cpu_count(),
                "jobs": jobs, "threads": threads, "started_utc": time.strftime("%H:%M", time.gmtime(started)),
                "finished_utc": time.strftime("%H:%M", time.gmtime()), "wall_s": round(time.time() - started, 1),
                "load_avg_1min": loads}
        results["invocations"] = earlier + [this]
        path.write_text(json.dumps(results, indent=2) + "\n")
    text = faithful_summary(results)
    for run in results.get("invocations", []):
        loads = run["load_avg_1min"]
        text += (f"\n\ncommit {run['commit']}, {run['cpus']} CPUs, {run['jobs']} run(s) at a time of "
                 f"{run['threads']} thread(s), {run['started_utc']}-{run['finished_utc']} UTC, wall time "
                 f"{run['wall_s'] / 60:.1f} min, 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
                 f"(median {statistics.median(loads):.1f}, sampled every minute)")
    (out / "faithful.md").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fidelity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (the sweep uses its own)")
    parser.add_argument("--parts", nargs="+", default=["etth1", "cross", "cls"],
                        choices=("etth1", "cross", "cls", "faithful"),
                        help="faithful: the official-recipe study (runs alone)")
    parser.add_argument("--jobs", type=int, default=1, help="faithful: commands run at a time (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run of the study (e.g. pretrain.epochs=12); repeatable")
    parser.add_argument("--sweep", type=Path, help="take the swept r/M/tau from this finished sweep instead of running one")
    parser.add_argument("--summary", action="store_true", help="print the tables of a finished (or partial) study")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if "faithful" in args.parts:
        if args.parts != ["faithful"] or args.overrides or args.sweep:
            parser.error("--parts faithful runs alone, from benchmarks/fidelity_faithful.yaml (no --set, no --sweep)")
        faithful_main(args.out, args.seeds, args.threads, args.jobs, summary_only=args.summary)
        return
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
