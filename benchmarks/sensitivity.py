"""Does r x M matter here? Pre-train every (r, M, seed) of a grid once, score the encoder two ways, and compare the
surface's spread with the seed noise (issue 13.6).

    python benchmarks/sensitivity.py --config benchmarks/sensitivity.yaml --out runs/sens \
        --r 0.1 0.5 0.9 --m 1 3 --seeds 0 1                       # scout the corners
    python benchmarks/sensitivity.py --out runs/sens --summary    # the tables again, from results.jsonl

Each job pre-trains ``(r, M, seed)`` with the config's pre-training budget (one thread), then scores the encoder
with both downstream protocols on the config's first horizon (or the classification task):

- ``probe``: the frozen-encoder linear probe (``finetune.mode: probe``): only a linear head learns;
- ``full``: full fine-tuning (``finetune.mode: full``), the paper's protocol.

Both use the same seed as the pre-training. ``--baseline`` adds random-init rows (no pre-training) per seed, the
floor against which pre-training is measured. Rows are appended to OUT/results.jsonl as jobs finish: an
interrupted run continues where it stopped (finished jobs are skipped).

The summary, per protocol and split (validation, test), is ``simmtm.analysis.surface_noise`` (what the report
prints for a sweep): the cell means, the seed noise (pooled within-cell SD), the surface's spread (best cell mean
minus worst) and their ratio, a one-way ANOVA over cells, the share of the between-cell variation r and M explain,
and the cells tied with the best.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROTOCOLS = ("probe", "full")


def job_key(job: dict[str, Any]) -> str:
    if job["r"] is None:
        return f"random_s{job['seed']}"
    return f"r{job['r']:g}_m{job['m']}_s{job['seed']}"


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    keys = ("val_mse", "mse", "val_mae", "mae", "val_accuracy", "accuracy", "val_f1", "f1", "val_log_loss", "log_loss")
    return {k: float(metrics[k]) for k in keys if k in metrics}


def run_job(args: tuple[str, list[str], dict[str, Any], str, dict[str, Any]]) -> dict[str, Any]:
    """Pre-train (unless a baseline row), record the sweep's rung score after every epoch, and score the encoder
    with both protocols; the row for results.jsonl."""
    import warnings

    import simmtm
    from simmtm.api import resolve_config
    from simmtm.train import pretraining
    from simmtm.tuning.trial import probe_score

    config, overrides, job, work, rung = args
    warnings.simplefilter("ignore")
    started = time.time()
    base = [*overrides, f"seed={job['seed']}", "threads=1"]
    row: dict[str, Any] = {**job, "key": job_key(job)}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        pretrained = None
        if job["r"] is not None:
            cfg, _ = resolve_config(
                config, [*base, f"pretrain.mask_ratio={job['r']}", f"pretrain.num_masked={job['m']}"]
            )
            rungs: dict[int, float] = {}

            def report(metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
                # the rung score a sweep trial reports after this epoch (tune.probe_steps/probe_val_batches)
                if state is not None and rung["metric"] and int(metrics["epoch"]) in rung["epochs"]:
                    rungs[int(metrics["epoch"])] = probe_score(
                        cfg, state, metric=rung["metric"], steps=rung["steps"], val_batches=rung["val_batches"]
                    )

            metrics = pretraining.run(cfg, report, run_dir=Path(tmp) / "pre")
            pretrained = Path(tmp) / "pre"
            row["pretrain_val_loss"] = float(metrics["val_loss"])
            row["rungs"] = {str(k): v for k, v in rungs.items()}
            row["pretrain_s"] = round(time.time() - started, 1)
        for protocol in PROTOCOLS:
            t0 = time.time()
            ft = simmtm.finetune(
                config,
                out=Path(tmp) / protocol,
                pretrained=pretrained,
                overrides=[*base, f"finetune.mode={protocol}"],
            )
            row[protocol] = _scores(dict(ft.metrics))
            row[f"{protocol}_s"] = round(time.time() - t0, 1)
    row["wall_s"] = round(time.time() - started, 1)
    return row


def _rung_settings(config: str, overrides: list[str], steps: int | None, epochs: list[int] | None) -> dict[str, Any]:
    """The rung score's settings from the config's tune section (the sweep's own defaults where it has none)."""
    from simmtm.api import resolve_config
    from simmtm.data.registry import resolve
    from simmtm.tuning.sections import resolve_metric
    from simmtm.tuning.spec import TuneSpec

    cfg, raw = resolve_config(config, overrides)
    tune = TuneSpec.model_validate(raw.get("tune") or {})
    task = resolve(cfg.data).task
    metric, _ = resolve_metric(tune, task)
    if epochs is None:
        epochs = list(range(tune.probe_every, cfg.pretrain.epochs + 1, tune.probe_every))
    return {"metric": metric if epochs else None, "epochs": epochs, "steps": steps or tune.probe_steps,
            "val_batches": tune.probe_val_batches}


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def summarize(rows: list[dict[str, Any]], *, metric: str | None = None) -> list[str]:
    """The markdown tables of the summary (see the module docstring)."""
    import numpy as np

    from simmtm.analysis.surface import surface_noise

    grid = [r for r in rows if r.get("r") is not None]
    base = [r for r in rows if r.get("r") is None]
    if not grid:
        return ["no grid rows yet"]
    sample = grid[0]["probe"]
    metric = metric or ("mse" if "mse" in sample or "val_mse" in sample else "accuracy")
    mode = "min" if metric in ("mse", "mae", "log_loss") else "max"
    rs = sorted({r["r"] for r in grid})
    ms = sorted({r["m"] for r in grid})
    lines = [f"metric: {metric} ({'lower' if mode == 'min' else 'higher'} is better); {len(grid)} grid runs, "
             f"{len(base)} random-init runs"]
    for protocol in PROTOCOLS:
        for split in ("val_", ""):
            key = f"{split}{metric}"
            cells: dict[tuple[float, int], list[float]] = {}
            for r in grid:
                if r[protocol].get(key) is not None:
                    cells.setdefault((r["r"], r["m"]), []).append(r[protocol][key])
            if not cells:
                continue
            s = surface_noise(cells, mode=mode)
            name = "frozen-encoder probe" if protocol == "probe" else "full fine-tune"
            lines += ["", f"### {name}, {'validation' if split else 'test'} {metric}", ""]
            lines.append("| r \\ M | " + " | ".join(str(m) for m in ms) + " |")
            lines.append("| --- |" + " ---: |" * len(ms))
            for r in rs:
                row = []
                for m in ms:
                    if (r, m) not in cells:
                        row.append("")
                        continue
                    mark = "**" if (r, m) == s.best else ("*" if (r, m) in s.tied else "")
                    row.append(f"{mark}{np.mean(cells[(r, m)]):.4f}{mark}")
                lines.append(f"| {r:g} | " + " | ".join(row) + " |")
            base_scores = [b[protocol][key] for b in base if b[protocol].get(key) is not None]
            lines += [
                "",
                s.line(key),
                f"between-cell variation explained by r {s.share_r or 0:.0%}, by M {s.share_m or 0:.0%}; "
                f"best cell r = {s.best[0]:g}, M = {s.best[1]}; bold: best, *: tied with it (one-sided 95 %)",
            ]
            if base_scores:
                lines.append(f"random init (no pre-training): {np.mean(base_scores):.4f} "
                             f"(SD {np.std(base_scores, ddof=1) if len(base_scores) > 1 else float('nan'):.4f}, "
                             f"{len(base_scores)} seeds)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "benchmarks" / "sensitivity.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--r", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline", action="store_true", help="random-init rows too, one per seed")
    p.add_argument("--workers", type=int, default=2, help="jobs at once (one thread each)")
    p.add_argument("--rung-steps", type=int, default=None, help="probe steps of the rung score (default: tune.probe_steps)")
    p.add_argument("--rung-epochs", type=int, nargs="*", default=None,
                   help="epochs after which the rung score is recorded (default: every tune.probe_every epochs)")
    p.add_argument("--summary", action="store_true", help="print the tables from results.jsonl and exit")
    p.add_argument("--metric", default=None, help="mse, mae, accuracy or f1 (default: mse or accuracy)")
    a = p.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if a.summary:
        print("\n".join(summarize(read_rows(results), metric=a.metric)))
        return 0
    done = {r["key"] for r in read_rows(results)}
    jobs = [{"r": r, "m": m, "seed": s} for s, r, m in itertools.product(a.seeds, a.r, a.m)]
    if a.baseline:
        jobs += [{"r": None, "m": None, "seed": s} for s in a.seeds]
    todo = [j for j in jobs if job_key(j) not in done]
    (out / "command.json").write_text(json.dumps({"argv": sys.argv, "config": a.config, "set": a.overrides}))
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run on {a.workers} workers",
          flush=True)
    rung = _rung_settings(a.config, a.overrides, a.rung_steps, a.rung_epochs)
    work = out / "work"
    work.mkdir(exist_ok=True)
    started = time.time()
    with mp.get_context("spawn").Pool(a.workers) as pool, results.open("a") as fh:
        for i, row in enumerate(pool.imap_unordered(run_job, [(a.config, a.overrides, j, str(work), rung) for j in todo]), 1):
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            short = {p: {k: round(v, 4) for k, v in row[p].items()} for p in PROTOCOLS}
            print(f"[{i}/{len(todo)} {time.time() - started:.0f}s] {row['key']} {row['wall_s']}s {short}", flush=True)
    print("\n".join(summarize(read_rows(results), metric=a.metric)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
