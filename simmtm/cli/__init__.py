"""The ``simmtm`` command: one entry point, one small module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func``. A ``UserError``
(bad config, data or path) prints one line and exits with code 2; nothing else is touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from simmtm.errors import UserError

__all__ = ["main"]

# Subcommand modules, in the order `simmtm --help` lists them.
_COMMANDS = (
    "simmtm.cli.train",
    "simmtm.cli.validate",
    "simmtm.cli.data",
    "simmtm.cli.cluster",
    "simmtm.cli.analyze",
    "simmtm.cli.sweep",
    "simmtm.cli.status",
    "simmtm.cli.export",
    "simmtm.cli.official",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from simmtm import __version__

    parser = argparse.ArgumentParser(prog="simmtm", description="SimMTM pre-training that tunes itself.")
    parser.add_argument("--version", action="version", version=f"simmtm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"simmtm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2 for bad input; 3 when training diverged
    except KeyboardInterrupt:
        print(f"simmtm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
