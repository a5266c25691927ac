"""``simmtm export RUN --out DIR``: a run's encoder as safetensors weights, config.json and a model card."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's encoder for use outside simmtm (safetensors + model card)",
        description="Write RUN's encoder to DIR: encoder.safetensors, config.json and README.md (the model "
        "card: data, r/M/tau, scores, how it was selected). Load it with simmtm.load_encoder(DIR).",
    )
    p.add_argument(
        "run", type=Path, metavar="RUN", help="a pretrain, run or finetune output directory, or a sweep's best/<trial>"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the encoder")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from simmtm.weights.exporting import export_encoder  # torch: only when the command runs

    exported = export_encoder(args.run, args.out)
    print(f"encoder: {exported.weights}")
    print(f"model card: {exported.card}")
    print(f'load it: simmtm.load_encoder("{exported.out}")')
    return 0
