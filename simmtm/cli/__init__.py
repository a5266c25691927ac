"""The ``simmtm`` command: one entry point, one small module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func``. A ``UserError``
(bad config, data or path) prints one line and exits with code 2; nothing else is touched. The global flags
(``-v``, ``-q``) work anywhere on the line: every subcommand's parser takes them too (``_CommandParser``).

May import every package (``simmtm.api`` included); nothing imports it but ``simmtm.__main__``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from simmtm import __version__
from simmtm.errors import UserError

__all__ = ["main", "deprecated"]

# Subcommand modules, in the order `simmtm --help` lists them.
_COMMANDS = (
    "simmtm.cli.train",
    "simmtm.cli.validate",
    "simmtm.cli.config",
    "simmtm.cli.data",
    "simmtm.cli.cluster",
    "simmtm.cli.analyze",
    "simmtm.cli.sweep",
    "simmtm.cli.status",
    "simmtm.cli.export",
    "simmtm.cli.official",
)


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    verbose, quiet = (argparse.SUPPRESS, argparse.SUPPRESS) if suppress else (0, False)
    parser.add_argument("-v", "--verbose", action="count", default=verbose, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=quiet, help="warnings and errors only")


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser (and its own subcommands'): it takes the global flags too, so that they work after the
    command (``simmtm validate FILE -v``). Their default is SUPPRESS: a flag not given here leaves the value the
    top-level parser read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_flags(self, suppress=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simmtm", description="SimMTM pre-training that tunes itself.")
    parser.add_argument("--version", action="version", version=f"simmtm {__version__}")
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def deprecated(old: str, new: str, command: str) -> None:
    """The one-line notice of an old spelling that still works for this release."""
    print(f"simmtm {command}: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)


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
