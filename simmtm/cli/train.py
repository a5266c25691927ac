"""``simmtm pretrain``, ``simmtm finetune`` and ``simmtm run`` (pre-train, fine-tune and compare with random init)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from simmtm import api
from simmtm.config import RunConfig, load_config
from simmtm.errors import UserError
from simmtm.resources import PLACEMENT_STRATEGIES, Scaling
from simmtm.rundir import check_resumable_config, check_run_all_dir, guard_finetune_dir, own, prepare_pretrain_dir
from simmtm.write_targets import check_output_folder

__all__ = ["register", "check_inputs", "format_metrics", "comparison_table"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train SimMTM from a config",
        description="Pre-train SimMTM, in this process or (--workers N) data-parallel on Ray Train. "
        "Re-running with the same --out resumes.",
    )
    _common(p)
    p.add_argument(
        "--restart", action="store_true", help="discard a previous run in --out (and its Ray storage) and start afresh"
    )
    _distributed(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "finetune",
        help="fine-tune (or probe) a pre-trained encoder",
        description="Fine-tune on the downstream task; without --from this is the random-init baseline.",
    )
    _common(p)
    p.add_argument(
        "--from", dest="pretrained", type=Path, help="a `simmtm pretrain` output directory or checkpoint file"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier fine-tuning run in --out")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "run",
        help="pre-train, fine-tune, and fine-tune a random-init baseline for comparison",
        description="Writes DIR/pretrain, DIR/finetune and (unless --no-baseline) DIR/baseline.",
    )
    _common(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    p.add_argument("--restart", action="store_true", help="discard a previous pre-training in DIR/pretrain")
    p.set_defaults(func=cmd_run)


def _common(p: argparse.ArgumentParser) -> None:
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


def check_inputs(config: RunConfig, *, workers: int = 1, finetuning: bool = False) -> None:
    """Load the data and build the model once, so that bad input fails before any directory is touched."""
    from simmtm import finetune, pretrain

    pretrain.check_inputs(config, world_size=workers)
    if finetuning:
        finetune.check_inputs(config)


def cmd_pretrain(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    check_output_folder(args.out)
    if args.workers is None:
        for flag, value, default in (
            ("--address", args.address, None),
            ("--storage", args.storage, None),
            ("--gpus-per-worker", args.gpus_per_worker, 0.0),
            ("--cpus-per-worker", args.cpus_per_worker, 1.0),
            ("--max-failures", args.max_failures, 2),
            ("--placement", args.placement, "PACK"),
        ):
            if value != default:
                raise UserError(f"{flag} applies to distributed runs only; add --workers N")
        metrics = dict(api.pretrain(config, out=args.out, restart=args.restart, progress=not args.no_progress).metrics)
    else:
        check_inputs(config, workers=args.workers)
        metrics = _pretrain_distributed(config, args)
    print(format_metrics("pre-training", metrics))
    print(f"run directory: {args.out}")
    return 0


def _pretrain_distributed(config: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The same run directory semantics as in process (resume unless --restart), with Ray Train workers."""
    from simmtm import distributed

    scaling = Scaling.from_flags(
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        placement_strategy=args.placement,
    )
    scaling.check(config)  # a bad --workers fails before anything is touched
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
    out = args.out
    with own(out):
        # --restart empties --out (and the default storage in it)
        resume = prepare_pretrain_dir(out, config, restart=args.restart)
        storage = distributed.resolve_storage(out, args.storage)
        if args.restart and args.storage:
            distributed.clear_run(storage, distributed.run_name(out, storage))
        check_resumable_config(out, config, restart=args.restart)
        return distributed.pretrain_distributed(
            config,
            out=out,
            scaling=scaling,
            address=args.address,
            storage=storage,
            max_failures=args.max_failures,
            resume=resume,
        )


def cmd_finetune(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    # bad input or --from fails before anything is written (api.finetune checks before it touches --out)
    result = api.finetune(
        config, out=args.out, pretrained=args.pretrained, overwrite=args.overwrite, progress=not args.no_progress
    )
    metrics = dict(result.metrics)
    print(format_metrics("fine-tuning" if args.pretrained else "random-init baseline", metrics))
    print(f"run directory: {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    check_output_folder(args.out)
    check_inputs(config, finetuning=True)
    progress = not args.no_progress
    pre_dir, ft_dir, base_dir = args.out / "pretrain", args.out / "finetune", args.out / "baseline"
    with own(args.out):  # one owner for the folder and the three runs in it
        check_run_all_dir(args.out)
        for d in (ft_dir, base_dir):
            guard_finetune_dir(d, overwrite=True)
        api.pretrain(config, out=pre_dir, restart=args.restart, progress=progress)
        simmtm = api.finetune(config, out=ft_dir, pretrained=pre_dir, overwrite=True, progress=progress)
        results = {"SimMTM": dict(simmtm.metrics)}
        if not args.no_baseline:
            results["random init"] = dict(api.finetune(config, out=base_dir, overwrite=True, progress=progress).metrics)
        print(comparison_table(results))
        (args.out / "summary.yaml").write_text(
            yaml.safe_dump({k: _headline(v) for k, v in results.items()}, sort_keys=False)
        )
    return 0


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("mse", "mae", "accuracy", "f1")
    out = {k: round(float(metrics[k]), 6) for k in keys if k in metrics}
    for h, m in metrics.get("horizons", {}).items():
        out[f"mse_{h}"] = round(float(m["mse"]), 6)
        out[f"mae_{h}"] = round(float(m["mae"]), 6)
    return out


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    rows = {name: _headline(m) for name, m in results.items()}
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
