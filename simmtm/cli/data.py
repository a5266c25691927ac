"""``simmtm data list`` and ``simmtm data download NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list or download named data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("list", help="named data sets and whether they are present")
    d.set_defaults(func=cmd_list)
    d = dsub.add_parser("download", help="fetch a named data set and verify its SHA-256")
    d.add_argument("names", nargs="+", metavar="NAME")
    d.add_argument("--dir", type=Path, help="data directory (default: $SIMMTM_DATA_DIR, else the user cache)")
    d.set_defaults(func=cmd_download)


def cmd_list(args: argparse.Namespace) -> int:
    from simmtm.data import DATASETS, data_dir

    root = data_dir()
    print(f"data directory: {root}")
    for spec in DATASETS.values():
        present = all((root / f).exists() for f in spec.files)
        print(f"  {spec.name:<14} {spec.task:<15} {'present' if present else 'missing':<8} {spec.description}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from simmtm.data import download

    for name in args.names:
        for path in download(name, args.dir, progress=True):
            print(path)
    return 0
