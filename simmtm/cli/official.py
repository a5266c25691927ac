"""``simmtm import-official CONFIG CKPT --out DIR``: an official SimMTM forecasting checkpoint as a simmtm
pre-training run directory, ready for ``simmtm finetune --from DIR`` and ``simmtm.load_pretrained(DIR)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from simmtm.cli import deprecated
from simmtm.config.schema import load_config
from simmtm.errors import UserError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-official",
        help="turn an official SimMTM forecasting checkpoint into a pre-training run directory",
        description="Map the official pre-training state dict (enc_embedding.*, encoder.*, projection.*, pooler.*, "
        "awl.*; bare or wrapped) onto simmtm's model. A key without a counterpart, or a shape that disagrees with "
        "CONFIG, is an error naming the key. See docs/fidelity.md.",
    )
    # CONFIG is optional here only while the deprecated `CKPT --config CONFIG` spelling still works
    p.add_argument(
        "config",
        type=Path,
        nargs="?",
        metavar="CONFIG",
        help="the simmtm config of the official run's shapes (e.g. sweeps/etth1.yaml)",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="the official .pth file (e.g. ckpt_best.pth)")
    p.add_argument("--config", dest="config_flag", type=Path, help=argparse.SUPPRESS)  # deprecated: CONFIG
    p.add_argument("--out", type=Path, required=True, help="the run directory to write (must not exist or be empty)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.seq_len=512 (repeatable)",
    )
    p.set_defaults(func=cmd_import_official)


def _config_path(args: argparse.Namespace) -> Path:
    if args.config_flag is None:
        if args.config is None:
            raise UserError("give the config first: simmtm import-official CONFIG CKPT --out DIR")
        return args.config
    if args.config is not None:
        raise UserError(f"give the config once: simmtm import-official {args.config} CKPT (without --config)")
    deprecated("--config CONFIG", "simmtm import-official CONFIG CKPT", "import-official")
    return args.config_flag


def cmd_import_official(args: argparse.Namespace) -> int:
    from simmtm.weights.official import import_official  # torch: only when the command runs

    config_path = _config_path(args)
    config = load_config(config_path, args.overrides)
    summary = import_official(args.checkpoint, config, args.out)
    print(f"imported {summary['tensors']} tensors into {summary['out']} ({summary['parameters']:,} parameters)")
    if summary["fresh"]:
        parts = sorted({k.split(".")[0] for k in summary["fresh"]})
        print(f"not in the checkpoint, freshly initialised: {', '.join(parts)} (fine-tuning uses the encoder only)")
    print(f"fine-tune it:  simmtm finetune {config_path} --from {summary['out']} --out <dir>")
    return 0
