"""Which rung score should ASHA prune on? The linear probe against a short fine-tune, measured on a sweep file.

For ``--configs`` configurations (the paper's r = 0.5, M = 3, tau = 0.2 first, then draws from the sweep file's
r / M / tau ranges, seeded) the script pre-trains at the sweep file's full budget and, at the ASHA rung (the
scheduler's grace period), scores the in-memory encoder two ways with the sweep's own probe settings
(``tune.probe_steps``, ``tune.probe_overrides``):

- ``probe``: the frozen-encoder linear probe (``tune.prune_on: probe``);
- ``finetune``: a short full fine-tune of the same length (``tune.prune_on: finetune``).

After pre-training ends, the full fine-tune gives the final score. Printed and saved (``--out`` JSON): each score
and its wall time per configuration, and Spearman's rho of each rung score with the final score (95 % interval).

    python benchmarks/rung_scores.py sweeps/quick.yaml --configs 8 --out runs/rung_scores.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

from simmtm.config.schema import load_config
from simmtm.train import finetuning as finetune
from simmtm.train import pretraining as pretrain
from simmtm.tuning.sections import sweep_spec
from simmtm.tuning.spec import PAPER_DEFAULTS, apply_params
from simmtm.tuning.trial import probe_config
from simmtm.verdict.probe_check import check_probe


def _draw(spec, rng: random.Random) -> dict:
    out = {}
    for key, p in spec.search.params.items():
        if p.type == "int":
            out[key] = rng.randint(int(p.low), int(p.high))
        elif p.log:
            import math

            out[key] = round(math.exp(rng.uniform(math.log(p.low), math.log(p.high))), 4)
        else:
            out[key] = round(rng.uniform(p.low, p.high), 3)
    return out


def _rung_score(run_cfg, state, spec, *, mode: str, metric: str) -> tuple[float, float]:
    started = time.time()
    cfg = probe_config(run_cfg, steps=spec.tune.probe_steps, val_batches=spec.tune.probe_val_batches,
                       overrides=spec.tune.probe_overrides)
    cfg.finetune.mode = mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = finetune.run(cfg, pretrained=state, score_test=False)
    return float(out[metric]), time.time() - started


def measure(sweep_file: Path, n_configs: int, seed: int) -> dict:
    config = load_config(sweep_file)
    spec = sweep_spec(config, sweep_file)
    rung = min(spec.tune.scheduler.grace_period, config.pretrain.epochs)
    metric = spec.tune.metric or "val_mse"
    rng = random.Random(seed)
    configs = [dict(PAPER_DEFAULTS)] + [_draw(spec, rng) for _ in range(n_configs - 1)]
    rows = []
    for params in configs:
        run_cfg = load_config(sweep_file)
        raw = apply_params(run_cfg.run_dict(), {**params, "threads": 1})  # as a sweep trial runs: one core
        from simmtm.config.schema import parse_config

        run_cfg = parse_config(raw, source="rung_scores")
        at_rung: dict = {}

        def report(metrics, state=None):
            if state is not None and int(metrics["epoch"]) == rung:
                at_rung["state"] = state

        started = time.time()
        last = {}

        def keep(metrics, state=None):
            report(metrics, state)
            if state is not None:
                last["state"] = state

        pretrain.run(run_cfg, keep)
        pre_s = time.time() - started
        print(f"pre-trained {params} in {pre_s:.0f} s", file=sys.stderr, flush=True)
        probe, probe_s = _rung_score(run_cfg, at_rung["state"], spec, mode="probe", metric=metric)
        short, short_s = _rung_score(run_cfg, at_rung["state"], spec, mode="full", metric=metric)
        started = time.time()
        final = float(finetune.run(run_cfg, pretrained=last["state"], score_test=False)[metric])
        row = {"params": params, "probe": probe, "finetune": short, "final": final, "pretrain_s": round(pre_s, 1),
               "probe_s": round(probe_s, 1), "finetune_rung_s": round(short_s, 1), "final_s": round(time.time() - started, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    finals = [r["final"] for r in rows]
    checks = {k: check_probe([r[k] for r in rows], finals, prunes=True, rung=k).to_dict() for k in ("probe", "finetune")}
    return {"sweep": str(sweep_file), "rung_epoch": rung, "configs": rows, "checks": checks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--configs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = measure(args.sweep, args.configs, args.seed)
    for name, check in result["checks"].items():
        print(check["line"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
