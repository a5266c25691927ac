"""The model card ``simmtm export`` writes beside an encoder (``README.md``): the Hugging Face Hub's YAML metadata
block on top (library, tags, data set, licence, the base config), then the data, r/M/tau, scores, how the
configuration was selected and how to load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import yaml

from simmtm.config.schema import RunConfig

__all__ = ["CardFacts", "LICENSE", "model_card"]

LICENSE = "mit"  # the project's licence (pyproject.toml), as the Hub spells its identifier


class CardFacts(Protocol):
    """What the card says about where the weights came from (``simmtm.export`` reads it off a run)."""

    kind: str  # "pre-training", "fine-tuning" or "sweep trial"
    checkpoint: Path
    config: RunConfig
    scores: dict[str, Any]  # section title -> metrics
    selection: list[str]  # lines saying how the configuration was chosen


def _data_name(cfg: RunConfig) -> str:
    return cfg.data.name or Path(cfg.data.path or "?").name


def hub_metadata(facts: CardFacts, description: dict[str, Any]) -> dict[str, Any]:
    """The Hub's card metadata: the base config is the encoder's model section and the SimMTM setting."""
    cfg = facts.config
    return {
        "library_name": "simmtm",
        "license": LICENSE,
        "tags": [
            "simmtm",
            "time-series",
            "self-supervised",
            "masked-modeling",
            description["task"],
            "pytorch",
            "safetensors",
        ],
        "datasets": [cfg.data.name or Path(cfg.data.path or "data").stem],
        "pipeline_tag": "feature-extraction",
        "base_config": {
            "model": cfg.model.model_dump(),
            "pretrain": {
                "mask_ratio": cfg.pretrain.mask_ratio,
                "num_masked": cfg.pretrain.num_masked,
                "temperature": cfg.pretrain.temperature,
                "masking": cfg.pretrain.masking,
            },
            "seq_len": description["seq_len"],
            "channels": description["channels"],
            "weights": facts.kind,
        },
    }


def _rows(facts: CardFacts, description: dict[str, Any]) -> list[tuple[str, Any]]:
    cfg, m = facts.config, facts.config.model
    shape = f"L = {description['seq_len']}, C = {description['channels']}" + (
        ", channel-independent" if description["channel_independent"] else ""
    )
    heads = f", {m.n_heads} heads" if m.encoder == "transformer" else ""
    p = cfg.pretrain
    return [
        ("data", f"{_data_name(cfg)} ({shape})"),
        ("encoder", f"{m.encoder}: d_model {m.d_model}, {m.n_layers} layers{heads}"),
        ("r (pretrain.mask_ratio)", p.mask_ratio),
        ("M (pretrain.num_masked)", p.num_masked),
        ("tau (pretrain.temperature)", p.temperature),
        ("masking", p.masking),
        ("pre-training", f"{p.epochs} epochs, batch {p.batch_size}, lr {p.lr}, seed {cfg.seed}"),
        ("weights", f"{facts.kind} checkpoint `{facts.checkpoint}`"),
    ]


def _score_line(title: str, metrics: dict[str, Any]) -> str:
    body = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    return f"- {title}: {body or 'none recorded'}"


def _usage(description: dict[str, Any]) -> list[str]:
    seq_len, channels, out_dim = description["seq_len"], description["channels"], description["out_dim"]
    return [
        "```python",
        "import torch",
        "import simmtm",
        "",
        'encoder = simmtm.load_encoder("path/to/this/folder")',
        f"z = encoder(torch.randn(8, {seq_len}, {channels}))  # (8, T, {out_dim})",
        "```",
    ]


def model_card(facts: CardFacts, description: dict[str, Any]) -> str:
    """The card's Markdown, opening with the Hub's metadata block between ``---`` lines."""
    metadata = yaml.safe_dump(hub_metadata(facts, description), sort_keys=False).rstrip("\n")
    lines = [
        "---",
        metadata,
        "---",
        "",
        f"# simmtm encoder: {_data_name(facts.config)}",
        "",
        (
            "A SimMTM-pre-trained time-series encoder exported by `simmtm export`: series `(B, L, C)` in, one "
            f"representation per time point (or patch) out, `(B, T, {description['out_dim']})`."
        ),
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in _rows(facts, description)),
        "",
        "## Scores",
        "",
        *(_score_line(title, metrics) for title, metrics in facts.scores.items()),
        "",
        "## How it was selected",
        "",
        *(f"- {s}" for s in facts.selection),
        "",
        "## Use",
        "",
        *_usage(description),
        "",
        "`config.json` holds the full run config the encoder was trained with.",
        "",
    ]
    return "\n".join(lines)
