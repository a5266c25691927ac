"""``simmtm cluster check [FILE...]``: check Ray cluster launcher files offline before ``ray up``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simmtm.cluster.cluster_check import check_cluster, cluster_files, sweep_files
from simmtm.errors import UserError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="Ray cluster files: check them before `ray up`")
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    c = csub.add_parser(
        "check",
        help="validate cluster files offline (Ray's schema + this project's rules)",
        description="Validate Ray cluster launcher files without cloud credentials: Ray's own config preparation "
        "and schema, then this project's rules (driver resource on the head, shared storage, declared GPUs, "
        "every GPU node type holds one trial of each sweep).",
    )
    c.add_argument(
        "files",
        type=Path,
        nargs="*",
        metavar="FILE",
        help="cluster files (default: ./cluster.yaml and ./cluster/*.yaml)",
    )
    c.add_argument(
        "--sweeps",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="sweep files or folders whose trials each GPU node type must hold "
        "(default: the sweeps/ folder next to each cluster file)",
    )
    c.set_defaults(func=cmd_check)


def _sweep_paths(paths: list[Path] | None) -> list[Path] | None:
    if paths is None:
        return None
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sweep_files(path))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--sweeps: {path}: no such file or folder")
    return found


def cmd_check(args: argparse.Namespace) -> int:
    files = args.files or cluster_files(Path("."))
    if not files:
        raise UserError("no cluster.yaml (or cluster/*.yaml) here; name the cluster file to check")
    sweeps = _sweep_paths(args.sweeps)
    failed = 0
    for path in files:
        result = check_cluster(path, sweeps=sweeps)
        if result.ok:
            print(f"ok   {path}: {result.summary()}")
        else:
            failed += 1
            for error in result.errors:
                print(f"FAIL {path}: {error}", file=sys.stderr)
        for note in result.notes:
            print(f"note {path}: {note}")
    if failed:
        raise UserError(f"{failed} of {len(files)} cluster file(s) invalid")
    return 0
