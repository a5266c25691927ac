"""``simmtm import-official CKPT --config CONFIG --out DIR``: an official SimMTM forecasting checkpoint as a simmtm
pre-training run directory, ready for ``simmtm finetune --from DIR`` and ``simmtm.load_pretrained(DIR)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from simmtm.config import load_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-official",
        help="turn an official SimMTM forecasting checkpoint into a pre-training run directory",
        description="Map the official pre-training state dict (enc_embedding.*, encoder.*, projection.*, pooler.*, "
        "awl.*; bare or wrapped) onto simmtm's model. A key without a counterpart, or a shape that disagrees with "
        "--config, is an error naming the key. See docs/fidelity.md.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="the official .pth file (e.g. ckpt_best.pth)")
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the simmtm config of the official run's shapes (e.g. sweeps/etth1.yaml)",
    )
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


def cmd_import_official(args: argparse.Namespace) -> int:
    from simmtm.official import import_official  # torch: only when the command runs

    config = load_config(args.config, args.overrides)
    summary = import_official(args.checkpoint, config, args.out)
    print(f"imported {summary['tensors']} tensors into {summary['out']} ({summary['parameters']:,} parameters)")
    if summary["fresh"]:
        parts = sorted({k.split(".")[0] for k in summary["fresh"]})
        print(f"not in the checkpoint, freshly initialised: {', '.join(parts)} (fine-tuning uses the encoder only)")
    print(f"fine-tune it:  simmtm finetune {args.config} --from {summary['out']} --out <dir>")
    return 0
