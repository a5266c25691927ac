"""A pre-training run as a model: ``load_pretrained(DIR)`` returns its ``SimMTM`` module, ready to call.

Works for runs written by ``simmtm pretrain`` and for official checkpoints turned into runs by
``simmtm import-official``. ``model(series, mask)`` returns loss, reconstruction and constraint as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from simmtm.config.schema import RunConfig, parse_config
from simmtm.data.inputs import load_inputs
from simmtm.method.model import SimMTM
from simmtm.train.finetuning import load_pretraining_state
from simmtm.train.pretraining import build_simmtm

__all__ = ["load_pretrained"]


def load_pretrained(
    run_dir: str | Path, *, checkpoint: Literal["best", "last"] = "best", map_location: str = "cpu"
) -> SimMTM:
    """The SimMTM module of a pre-training run (its own or an imported one), weights loaded, in eval mode."""
    state = load_pretraining_state(run_dir, checkpoint, map_location=map_location)
    config = parse_config(state["config"], source=f"{run_dir} (config)")
    seq_len, channels = _shapes(state, config)
    model = build_simmtm(config, seq_len=seq_len, channels=channels)
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.eval()


def _shapes(state: dict[str, Any], config: RunConfig) -> tuple[int, int]:
    """(L, c) of the series the model was built for: recorded in the checkpoint, or else read off the data."""
    if "shapes" in state:
        return int(state["shapes"]["seq_len"]), int(state["shapes"]["channels"])
    inputs = load_inputs(config)
    return inputs.seq_len, inputs.series_channels
