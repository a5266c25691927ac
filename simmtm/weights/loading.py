"""A pre-training run as a model: ``load_pretrained(DIR)`` returns its ``SimMTM`` module, ready to call.

Works for runs written by ``simmtm pretrain`` and for official checkpoints turned into runs by
``simmtm import-official``. ``model(series, mask)`` returns loss, reconstruction and constraint as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from simmtm.config.schema import RunConfig, parse_config
from simmtm.errors import UserError
from simmtm.method.model import SimMTM
from simmtm.train.checkpoint import load_state

__all__ = ["build_simmtm", "checkpoint_path", "load_pretrained"]


def checkpoint_path(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best") -> Path:
    """``checkpoints/best.pt`` (lowest validation loss) or ``last.pt`` of a run; ``best`` falls back to ``last`` for
    runs that predate best checkpoints. A checkpoint file is returned as it is."""
    path = Path(run_dir)
    if path.is_file():
        return path
    names = ["best.pt", "last.pt"] if checkpoint == "best" else ["last.pt"]
    for name in names:
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise UserError(
        f"{path}: not a pre-training run directory (no checkpoints/{names[0]}); "
        "run `simmtm pretrain` or `simmtm import-official` first"
    )


def build_simmtm(config: RunConfig, *, seq_len: int, channels: int) -> SimMTM:
    """A freshly initialised SimMTM for series of ``seq_len`` points and ``channels`` channels each."""
    from simmtm.method.encoders import build_encoder

    try:
        encoder = build_encoder(config.model, in_channels=channels, seq_len=seq_len)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return SimMTM(encoder, seq_len=seq_len, channels=channels, model=config.model, pretrain=config.pretrain)


def load_pretrained(
    run_dir: str | Path, *, checkpoint: Literal["best", "last"] = "best", map_location: str = "cpu"
) -> SimMTM:
    """The SimMTM module of a pre-training run (its own or an imported one), weights loaded, in eval mode."""
    path = checkpoint_path(run_dir, checkpoint)
    state = load_state(path, map_location=map_location)
    if state.get("kind") != "simmtm-pretrain":
        raise UserError(f"{path}: not a simmtm pre-training checkpoint")
    config = parse_config(state["config"], source=f"{path} (config)")
    seq_len, channels = _shapes(state, config)
    model = build_simmtm(config, seq_len=seq_len, channels=channels)
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.eval()


def _shapes(state: dict[str, Any], config: RunConfig) -> tuple[int, int]:
    """(L, c) of the series the model was built for: recorded in the checkpoint, or else read off the data."""
    if "shapes" in state:
        return int(state["shapes"]["seq_len"]), int(state["shapes"]["channels"])
    from simmtm.data.inputs import load_inputs

    inputs = load_inputs(config)
    return inputs.seq_len, inputs.series_channels
