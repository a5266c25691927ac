"""``simmtm validate CONFIG...``: check config files (and their data) without running anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simmtm.config.schema import load_config
from simmtm.errors import UserError
from simmtm.tuning.sections import validate_sweep_sections

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check config files without running",
        description="Check configs: schema, and with --data also the data they name.",
    )
    p.add_argument("configs", type=Path, nargs="+", metavar="CONFIG")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", action="store_true", help="also load the data and build the model")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    for path in args.configs:
        try:
            config = load_config(path, args.overrides)
            validate_sweep_sections(config, path)
            if args.data:
                from simmtm.train.pretraining import check_inputs  # torch: with --data only (loads the data)

                check_inputs(config)
        except UserError as exc:
            failures += 1
            print(f"FAIL {exc}", file=sys.stderr)
            continue
        print(f"ok   {path}")
    if failures:
        raise UserError(f"{failures} of {len(args.configs)} config(s) invalid")
    return 0
