"""Does the confirmation verdict carry to the test split? The recommended and the default configuration, fresh seeds.

For each data set: the quickstart's sweep (``sweeps/quick.yaml`` with ``data.name`` set; search, then the
confirmation stage), then the confirmed pair (the winner, else the best candidate, against the paper's default)
pre-trained and fine-tuned again with ``--seeds`` fresh paired training seeds (none of them used by the sweep: the
search trains with seed 0, the confirmation with 1000-1002), each scored once on validation and once on test. Per
data set it prints the verdict and the paired difference (default minus candidate, positive: the candidate is better)
with its 95 % t interval on each split, and whether the validation verdict carries to test.

Resumable: a finished sweep is not run again (an interrupted one resumes), and every finished run is a line of
``OUT/runs.jsonl`` that a re-run skips. Several copies may share one ``--out`` once the sweeps have finished: each
claims a run (a ``claim`` file with its process id) before starting it, so they split the runs between them. Run it
in the background on a shared machine:

    nice -n 10 .venv/bin/python benchmarks/verdict_holdout.py --out runs/verdict-holdout \
        --datasets ETTh1 ETTh2 --seeds 101 102 103 104 105 > runs/verdict-holdout.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simmtm import api
from simmtm.verdict.stats import paired_difference


def _sweep(config: str, dataset: str, out: Path) -> dict[str, Any]:
    """The sweep's confirmation verdict (running or resuming the sweep first when it has none)."""
    if not (out / "confirmation.json").is_file():
        cmd = [sys.executable, "-m", "simmtm", "sweep", config, "--out", str(out), "--set", f"data.name={dataset}"]
        if (out / "sweep.json").is_file():
            cmd = [sys.executable, "-m", "simmtm", "sweep", "--out", str(out), "--resume"]
        subprocess.run([*cmd, "--quiet-table"], check=True)
    verdict = json.loads((out / "confirmation.json").read_text())["verdict"]
    if verdict is None or verdict.get("best_candidate") is None:
        raise SystemExit(f"{out}: the confirmation has no candidate to compare: {verdict}")
    return verdict


def _run(config: str, dataset: str, params: dict[str, Any], seed: int, out: Path) -> dict[str, float]:
    """Pre-train and fine-tune one configuration with one training seed; its validation and test scores."""
    overrides = {"data.name": dataset, "seed": seed, **params}
    pre = api.pretrain(config, out=out / "pre", overrides=overrides)  # an interrupted one resumes
    ft = api.finetune(config, out=out / "ft", pretrained=pre.run_dir, overrides=overrides, overwrite=True)
    return {"val_mse": float(ft.metrics["val_mse"]), "test_mse": float(ft.metrics["mse"])}


def _claim(folder: Path) -> bool:
    """Take the run in ``folder`` unless a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / "claim"
    if claim.is_file():
        try:
            os.kill(int(claim.read_text()), 0)
            return False  # a live copy runs it
        except (ProcessLookupError, ValueError):
            pass  # its holder died: take it over (pre-training resumes from its checkpoint)
    claim.write_text(str(os.getpid()))
    return True


def _finished(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _paired_seeds(rows: list[dict[str, Any]]) -> list[int]:
    return sorted(
        {r["seed"] for r in rows if r["which"] == "candidate"} & {r["seed"] for r in rows if r["which"] == "default"}
    )


def _difference(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Candidate against default over the seeds both finished; positive: the candidate is better (lower)."""
    seeds = _paired_seeds(rows)
    score = {(r["which"], r["seed"]): r[key] for r in rows}
    d = paired_difference([score["candidate", s] for s in seeds], [score["default", s] for s in seeds], mode="min")
    return {
        "n": d.n,
        "mean": d.mean,
        "ci": d.ci,
        "sd": d.sd,
        "better": d.significant,
        "worse": d.ci is not None and d.ci[1] < 0,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sweeps/quick.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/verdict-holdout"))
    ap.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTh2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[101, 102, 103, 104, 105])
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    summary = {}
    for dataset in args.datasets:
        t0 = time.time()
        verdict = _sweep(args.config, dataset, args.out / dataset / "sweep")
        print(f"{dataset}: sweep verdict ({time.time() - t0:.0f} s): {verdict['sentence']}", flush=True)
        pair = {"candidate": verdict["winner"] or verdict["best_candidate"], "default": verdict["default"]}
        for seed in args.seeds:  # seed-major: an interrupted study still holds complete pairs
            for which, params in pair.items():
                folder = args.out / dataset / f"seed{seed}-{which}"
                finished = _finished(log)
                if any(r["dataset"] == dataset and r["seed"] == seed and r["which"] == which for r in finished):
                    continue
                if not _claim(folder):
                    continue
                t0 = time.time()
                scores = _run(args.config, dataset, params, seed, folder)
                row = {
                    "dataset": dataset,
                    "seed": seed,
                    "which": which,
                    "params": params,
                    **scores,
                    "wall_s": round(time.time() - t0, 1),
                }
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        rows = [r for r in _finished(log) if r["dataset"] == dataset]
        if len(_paired_seeds(rows)) < 2:
            continue  # other copies still run its pairs
        summary[dataset] = {
            "verdict": verdict["status"],
            "sentence": verdict["sentence"],
            "candidate": pair["candidate"],
            "validation": _difference(rows, "val_mse"),
            "test": _difference(rows, "test_mse"),
        }
        print(json.dumps({dataset: summary[dataset]}, indent=1), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
