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
    d = dsub.add_parser(
        "download",
        help="fetch named data sets (SHA-256 checked, retried, resumable); a missing set is also fetched on first use",
    )
    d.add_argument("names", nargs="+", metavar="NAME")
    d.add_argument("--dir", type=Path, help="data directory (default: $SIMMTM_DATA_DIR, else the user cache)")
    d.set_defaults(func=cmd_download)


def cmd_list(args: argparse.Namespace) -> int:
    from simmtm.data import DATASETS, data_dir  # torch: only when the command runs

    root = data_dir()
    print(f"data directory: {root}")
    for spec in DATASETS.values():
        present = all((root / f).exists() for f in spec.files)
        print(f"  {spec.name:<14} {spec.task:<15} {'present' if present else 'missing':<8} {spec.description}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from simmtm.data import data_dir, download, get_dataset  # torch: only when the command runs

    specs = [get_dataset(name) for name in args.names]  # an unknown name fails before any download
    for spec in specs:
        for path in download(spec, args.dir or data_dir(), progress=True):
            print(path)
    return 0
