"""``simmtm pretrain``, ``simmtm finetune`` and ``simmtm run`` (pre-train, fine-tune and compare with random init)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from simmtm import api
from simmtm.cli import deprecated
from simmtm.cluster.resources import PLACEMENT_STRATEGIES
from simmtm.cluster.single_run import headline
from simmtm.config.schema import load_config

__all__ = ["register", "format_metrics", "comparison_table"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train SimMTM from a config",
        description="Pre-train SimMTM, in this process or (--workers N) data-parallel on Ray Train. "
        "Re-running with the same --out resumes.",
    )
    _common(p, overwrite="discard a previous run in --out (and its Ray storage) and start afresh")
    _distributed(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "finetune",
        help="fine-tune (or probe) a pre-trained encoder",
        description="Fine-tune on the downstream task; without --from this is the random-init baseline.",
    )
    _common(p, overwrite="replace an earlier fine-tuning run in --out")
    p.add_argument(
        "--from", dest="pretrained", type=Path, help="a `simmtm pretrain` output directory or checkpoint file"
    )
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "run",
        help="pre-train, fine-tune, and fine-tune a random-init baseline for comparison",
        description="Writes DIR/pretrain, DIR/finetune and (unless --no-baseline) DIR/baseline.",
    )
    _common(p, overwrite="discard a previous pre-training in DIR/pretrain")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    p.set_defaults(func=cmd_run)


def _common(p: argparse.ArgumentParser, *, overwrite: str) -> None:
    p.add_argument("config", type=Path, help="a run or sweep YAML file")
    p.add_argument("--out", type=Path, required=True, help="output directory (everything the run writes goes here)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set pretrain.mask_ratio=0.3 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--restart", action="store_true", help=argparse.SUPPRESS)  # deprecated: --overwrite


def _overwrite(args: argparse.Namespace) -> bool:
    if args.restart:
        deprecated("--restart", "--overwrite", args.command)
    return bool(args.overwrite or args.restart)


def _distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (Ray Train; without --workers the run stays in this process, without Ray)")
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-parallel Ray Train workers; pretrain.batch_size is the global batch",
    )
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs each worker reserves (default 0: CPU)"
    )
    g.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        metavar="C",
        help="CPUs each worker reserves and its torch threads (default 1)",
    )
    g.add_argument(
        "--address",
        metavar="ADDR",
        help="join this Ray cluster (e.g. 10.0.0.1:6379 or auto); default: start a local Ray instance",
    )
    g.add_argument(
        "--storage",
        metavar="PATH",
        help="where Ray keeps checkpoints: a local path, or on a multi-node cluster a "
        "path all nodes share (NFS, s3://, gs://); default OUT/ray",
    )
    g.add_argument(
        "--max-failures",
        type=int,
        default=2,
        metavar="K",
        help="restart the worker group from the last checkpoint up to K times (default 2)",
    )
    g.add_argument(
        "--placement",
        default="PACK",
        choices=PLACEMENT_STRATEGIES,
        help="placement of the workers on nodes (default PACK; STRICT_SPREAD: one worker per node)",
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    result = api.pretrain(
        config,
        out=args.out,
        overwrite=_overwrite(args),
        progress=not args.no_progress,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        placement=args.placement,
        address=args.address,
        storage=args.storage,
        max_failures=args.max_failures,
    )
    print(format_metrics("pre-training", dict(result.metrics)))
    print(f"run directory: {args.out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    # bad input or --from fails before anything is written (api.finetune checks before it touches --out)
    result = api.finetune(
        config, out=args.out, pretrained=args.pretrained, overwrite=_overwrite(args), progress=not args.no_progress
    )
    print(format_metrics("fine-tuning" if args.pretrained else "random-init baseline", dict(result.metrics)))
    print(f"run directory: {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    result = api.run(
        config,
        out=args.out,
        baseline=not args.no_baseline,
        overwrite=_overwrite(args),
        progress=not args.no_progress,
    )
    scores = {"SimMTM": dict(result.finetune.metrics)}
    if result.baseline is not None:
        scores["random init"] = dict(result.baseline.metrics)
    print(comparison_table(scores))
    return 0


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    rows = {name: headline(m) for name, m in results.items()}
    cols = list(dict.fromkeys(k for r in rows.values() for k in r))
    width = max(len(n) for n in rows) + 2
    lines = ["".ljust(width) + "".join(c.rjust(11) for c in cols)]
    for name, r in rows.items():
        lines.append(name.ljust(width) + "".join(f"{r[c]:11.4f}" if c in r else " " * 11 for c in cols))
    return "\n".join(lines)


def format_metrics(title: str, metrics: dict[str, Any]) -> str:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    body = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items())
    lines = [f"{title}: {body}"]
    for h, m in metrics.get("horizons", {}).items():
        lines.append(
            f"  horizon {h}: mse={m['mse']:.4f} mae={m['mae']:.4f} "
            f"(val mse {m['val_mse']:.4f}, best epoch {m['best_epoch']})"
        )
    return "\n".join(lines)
