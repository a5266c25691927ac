"""``simmtm config FILE [--set KEY=VALUE ...]``: print the resolved run config, the one a run would save."""

from __future__ import annotations

import argparse
from pathlib import Path

from simmtm.config.schema import config_yaml, load_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the resolved config of a file plus its --set overrides, and exit",
        description="Print the run config that `simmtm pretrain FILE --set ...` would save in its run folder "
        "(config.yaml): every key with its default filled in, the sweep sections (search, tune, resources) left out.",
    )
    p.add_argument("config", type=Path, metavar="CONFIG", help="a run or sweep YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set pretrain.mask_ratio=0.3 (repeatable)",
    )
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    print(config_yaml(load_config(args.config, args.overrides)), end="")
    return 0
