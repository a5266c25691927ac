"""``simmtm analyze DIR`` (the sensitivity report) and ``simmtm recommend DIR`` (what to run next)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simmtm.outdir.rundir import check_report_dir, own
from simmtm.outdir.write_targets import check_output_file, check_output_folder
from simmtm.tuning.outputs import RECOMMENDED_MARK

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="sensitivity report of a sweep directory",
        description="Write report.html, figures/*.png and recommendation.json for a sweep directory "
        "(finished, still running or resumed).",
    )
    p.add_argument("sweep_dir", type=Path, metavar="DIR", help="the --out directory of `simmtm sweep`")
    p.add_argument(
        "--out", type=Path, metavar="REPORT_DIR", help="where to write the report (default: DIR-report beside DIR)"
    )
    p.add_argument(
        "--no-interactive", action="store_true", help="PNG figures only: no plotly views (a much smaller file)"
    )
    _analysis_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "recommend",
        help="recommended r, M (tau, encoder) from a sweep directory",
        description="Recommend parameters with an expected score and its bootstrap interval; flag a best "
        "region at the edge of the searched space; fit how the best M moves with r.",
    )
    p.add_argument("sweep_dir", type=Path, metavar="DIR", help="the --out directory of `simmtm sweep`")
    p.add_argument(
        "--write", type=Path, metavar="BEST_YAML", help="also write the recommended run config (for `simmtm pretrain`)"
    )
    p.add_argument("--json", action="store_true", help="print the recommendation as JSON instead of text")
    p.add_argument("--force", action="store_true", help="let --write replace a file that simmtm did not write")
    _analysis_options(p)
    p.set_defaults(func=cmd_recommend)


def _analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of fANOVA (default 0)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from simmtm.analysis.report import default_report_dir, write_report  # lazy: pandas, matplotlib, Optuna

    out = args.out or default_report_dir(args.sweep_dir)
    check_output_folder(out)
    check_report_dir(out)
    with own(out):
        report = write_report(
            args.sweep_dir, out, interactive=not args.no_interactive, n_boot=args.bootstrap, seed=args.seed
        )
    _print_notes(report.sweep)
    counts = report.sweep.counts()
    print("trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v or k == "COMPLETE"))
    assert report.recommendation is not None  # write_report always recommends (or says why not)
    for line in report.recommendation.summary():
        print(line)
    reasons: dict[str, list[str]] = {}
    for name, why in report.skipped.items():
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        print(f"not drawn: {', '.join(names)} ({why})")
    print(f"report: {report.html}")
    print(f"recommendation: {report.recommendation_json}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from simmtm.analysis.load import load_sweep  # lazy: pandas and Optuna
    from simmtm.analysis.recommend import recommend, write_best_config  # lazy: pandas, scipy and Optuna

    if args.write is not None:
        check_output_file(args.write, option="--write", marker=RECOMMENDED_MARK, force=args.force)
    sweep = load_sweep(args.sweep_dir)
    _print_notes(sweep)
    rec = recommend(sweep, n_boot=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2, default=str))
    else:
        for line in rec.summary():
            print(line)
    if rec.status != "ok":
        if args.write is not None:
            print(f"not written: {args.write}")
        return 1
    if args.write is not None:
        write_best_config(sweep, rec, args.write)
        if not args.json:
            print(f"run config: {args.write}   (simmtm pretrain {args.write} --out runs/{args.write.stem})")
    return 0


def _print_notes(sweep) -> None:
    """What the reader should know about the tables (one unreadable, one lagging) goes to the console."""
    for note in sweep.notes:
        print(f"note: {sweep.path}: {note}", file=sys.stderr)
