"""``simmtm status DIR``: trials finished, running, pruned and failed, the best so far and the time left."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="where a sweep stands (safe to run while it runs)",
        description="Read a sweep directory without changing it: trials by state, the best configuration "
        "so far with its noise band, and about how long the rest will take.",
    )
    p.add_argument("sweep_dir", type=Path, metavar="DIR", help="the --out directory of `simmtm sweep`")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from simmtm.analysis.status import sweep_status  # Ray, pandas, Optuna: only when the command runs

    status = sweep_status(args.sweep_dir)
    if args.json:
        print(json.dumps({**dataclasses.asdict(status), "finished": status.finished}, indent=2, default=str))
    else:
        print("\n".join(status.lines()))
    return 0
