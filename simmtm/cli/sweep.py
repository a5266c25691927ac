"""``simmtm sweep SWEEP.yaml --out DIR``: search r, M, tau and the encoder with Ray Tune + Optuna."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from simmtm.errors import UserError
from simmtm.tuning.outputs import state_counts
from simmtm.tuning.plan import plan_sweep

if TYPE_CHECKING:
    from simmtm.analysis.surface import SurfaceNoise

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="search pre-training settings (Ray Tune + Optuna, ASHA on a downstream probe)",
        description="Run the sweep in SWEEP.yaml (a run config plus search/tune/resources). Trials are pruned on a "
        "probe's validation score and end with a full fine-tune; the best configurations are scored on "
        "test once. Interrupted sweeps continue with --resume.",
    )
    p.add_argument(
        "config", type=Path, nargs="?", metavar="SWEEP.yaml", help="a sweep file (with --resume: not needed)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="sweep directory (trials.csv, best.yaml, optuna.db, tb/, ray/)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out as its sweep.yaml saved it; --set may then only raise "
        "tune.num_samples or set tune.time_budget_s",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial plan (resources per trial, trials at once, first configurations, ASHA rungs) "
        "and exit without starting Ray",
    )
    p.add_argument(
        "--address",
        help="a running Ray cluster (e.g. auto or ray://head:10001); default: the cluster of the "
        "Ray job this runs in (RAY_ADDRESS set), else a fresh local Ray",
    )
    p.add_argument(
        "--warm-start",
        type=Path,
        metavar="PREVIOUS_DIR",
        help="seed the new study with the finished trials of an earlier sweep (same parameters and metric; "
        "tpe or random); they guide the sampler and stay out of this sweep's tables",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep file, e.g. --set tune.num_samples=16 (repeatable)",
    )
    p.add_argument("--quiet-table", action="store_true", help="no live trial table")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.config is None and not args.resume:
        raise UserError("simmtm sweep: give SWEEP.yaml (only --resume --out DIR continues without it)")
    if args.dry_run:
        config = args.config if args.config is not None else args.out / "sweep.yaml"
        print("\n".join(plan_sweep(config, args.overrides, address=args.address).lines()))
        return 0
    from simmtm.tuning.driver import run_sweep  # lazy: Ray and torch, not for `simmtm --help`

    outcome = run_sweep(
        args.config,
        args.out,
        resume=args.resume,
        address=args.address,
        overrides=args.overrides,
        verbose=0 if args.quiet_table else 1,
        warm_start=args.warm_start,
    )
    counts = state_counts(outcome.rows)
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    print(f"sweep: {len(outcome.rows)} trials ({summary}) in {outcome.wall_s:.0f} s; results in {outcome.out}")
    if not outcome.finished:
        print(
            f"sweep interrupted; continue it with: simmtm sweep --resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    for r in outcome.rows:
        if r.state == "FAILED":
            print(f"  failed {r.trial_id}: {r.error}")
    if not outcome.best:
        print("no trial completed; nothing to recommend", file=sys.stderr)
        return 1
    best = outcome.best[0]
    mean = sum(r.score or 0.0 for r in outcome.best) / len(outcome.best)  # the best rows are COMPLETE: all scored
    params = "  ".join(f"{k}={best.params.get(k)}" for k in outcome.param_keys if best.params.get(k) is not None)
    test = [r.test_score for r in outcome.best if r.test_score is not None]
    test_text = f", test {outcome.metric.removeprefix('val_')} {sum(test) / len(test):.4f}" if test else ""
    seeds = "one seed" if len(outcome.best) == 1 else f"mean of {len(outcome.best)} seeds"
    print(f"best: {params}  ({outcome.metric} {mean:.4f}{test_text}; the search's best configuration, {seeds})")
    r_value, m_value = best.params.get("pretrain.mask_ratio"), best.params.get("pretrain.num_masked")
    if r_value is not None or m_value is not None:
        shown = ["as configured" if v is None else v for v in (r_value, m_value)]
        print(f"search's best r = {shown[0]}, best M = {shown[1]}")
    print(f"run it: simmtm pretrain {outcome.out / 'best.yaml'} --out runs/best")
    if outcome.confirmation is not None:  # the last lines: seed noise, probe check, and the recommendation
        for line in outcome.confirmation.lines():
            print(line)
    confirmed = outcome.confirmation is not None and outcome.confirmation.verdict is not None
    if not confirmed and (surface := _surface(outcome.out)) is not None:  # the seeds a cell tell the noise instead
        print(surface.line(outcome.metric))
    return 0


def _surface(out: Path) -> SurfaceNoise | None:
    """The r x M surface against seed noise, for a sweep with 2+ seeds in some cell (None otherwise)."""
    from simmtm.analysis import load_sweep, sweep_surface_noise  # lazy: pandas and Optuna

    try:
        surface = sweep_surface_noise(load_sweep(out))
    except Exception as exc:  # the sweep's own lines are printed already; this one is extra, and says why it is not
        log.warning("no r x M surface line: %s", exc)
        return None
    return surface if surface is not None and surface.noise_sd is not None else None
