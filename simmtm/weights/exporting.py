"""Encoders for use outside simmtm: ``simmtm export RUN --out DIR`` writes one, ``simmtm.load_encoder(DIR)`` reads it.

DIR holds three files:

- ``encoder.safetensors``: the encoder's weights (no pickle; any safetensors reader opens them);
- ``config.json``: what rebuilds the module (the model section of the run's config, the series shape, channel
  independence and per-series normalisation) and where the weights came from;
- ``README.md``: the model card (data, r/M/tau, scores, how the configuration was selected).

RUN is a pre-training run (``simmtm pretrain``), a ``simmtm run`` directory (its pre-training, with the fine-tuning
scores), a fine-tuning run (its fine-tuned encoder), or a test-scored trial of a sweep (``SWEEP/best/<trial>``: the
trial's pre-trained encoder, selected as ``SWEEP/best.yaml`` says).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from simmtm.config.schema import ModelConfig, RunConfig, parse_config
from simmtm.data.inputs import load_inputs
from simmtm.errors import UserError
from simmtm.method.encoders import Encoder, build_encoder
from simmtm.method.model import masked_instance_norm, to_series
from simmtm.outdir.rundir import check_export_dir, own
from simmtm.train.checkpoint import encoder_state, load_state, run_checkpoint
from simmtm.train.finetuning import load_pretraining_state
from simmtm.weights.model_card import model_card

__all__ = ["FORMAT", "ExportedEncoder", "SeriesEncoder", "export_encoder", "load_encoder"]

log = logging.getLogger(__name__)

FORMAT = "simmtm-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "encoder.safetensors", "config.json", "README.md"


class SeriesEncoder(nn.Module):
    """Series ``(B, L, C)`` -> point-wise representations ``(B, T, out_dim)``, as the encoder saw them in training.

    Each series is standardised per channel first (when the run did so), and with channel independence every channel
    is encoded on its own; its T vectors of width D are then laid side by side, so ``out_dim`` is ``C * D`` (else D).
    T is L for point-wise encoders and the number of patches for ``patch``.
    """

    def __init__(
        self, encoder: Encoder, *, seq_len: int, channels: int, channel_independent: bool, instance_norm: bool
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.seq_len, self.channels = seq_len, channels
        self.channel_independent, self.instance_norm = channel_independent, instance_norm
        self.d_model: int = encoder.d_model

    @property
    def out_dim(self) -> int:
        return self.channels * self.d_model if self.channel_independent else self.d_model

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, C) -> (B, T, out_dim)``; ``observed: (B, L)`` bool marks the real steps of padded series (their
        padding is then left out of the normalisation and the attention, and padded tokens come out as 0)."""
        if x.ndim != 3 or (not self.channel_independent and x.shape[-1] != self.channels):
            raise ValueError(f"expected series of shape (B, L, {self.channels}), got {tuple(x.shape)}")
        b, _, c = x.shape
        series = to_series(x, self.channel_independent)  # (N, L, c)
        # (N, L)
        real = None if observed is None else observed.repeat_interleave(c if self.channel_independent else 1, dim=0)
        keep = torch.ones_like(series, dtype=torch.bool) if real is None else real[..., None].expand_as(series)
        if real is not None:
            series = torch.where(keep, series, 0.0)
        if self.instance_norm:
            series, _, _ = masked_instance_norm(series, keep)
        z = self.encoder(series) if real is None else self.encoder(series, real)  # (N, T, D)
        if real is not None:
            z = torch.where(self.encoder.token_mask(real)[..., None], z, 0.0)
        if self.channel_independent:
            t, d = z.shape[1:]
            z = z.view(b, c, t, d).permute(0, 2, 1, 3).reshape(b, t, c * d)  # (B, T, C*D)
        return z


# --- what a run holds ------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """The encoder weights of a run and everything the model card says about them."""

    kind: str  # "pre-training", "fine-tuning" or "sweep trial"
    path: Path
    checkpoint: Path
    weights: dict[str, torch.Tensor]
    config: RunConfig
    shapes: dict[str, int] | None
    scores: dict[str, Any] = field(default_factory=dict)  # section title -> metrics
    selection: list[str] = field(default_factory=list)  # lines saying how the configuration was chosen


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _pretrain_checkpoint(run: Path) -> Path | None:
    return run_checkpoint(run, "best") or run_checkpoint(run, "last")


def _finetune_checkpoint(run: Path) -> Path | None:
    found = sorted((run / "checkpoints").glob("*/best.pt"))
    return found[0] if found else None


def _from_pretrain(run: Path, checkpoint: Path, kind: str = "pre-training") -> _Source:
    state = load_pretraining_state(checkpoint)
    config = parse_config(state["config"], source=f"{checkpoint} (config)")
    scores = {"pre-training (validation losses)": _losses(_read_json(run / "metrics.json") or state.get("metrics", {}))}
    return _Source(
        kind,
        run,
        checkpoint,
        encoder_state(state["model"]),
        config,
        state.get("shapes"),
        scores,
        ["set in the run's own config (not chosen by a sweep)"],
    )


def _losses(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k.startswith("val_") or k in ("epoch", "step")}


def _downstream(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("mse", "mae", "accuracy", "f1", "val_mse", "val_mae", "val_accuracy", "val_f1", "mode")
    out = {k: metrics[k] for k in keys if k in metrics}
    for h, m in metrics.get("horizons", {}).items():
        out.update({f"{k}@{h}": m[k] for k in ("mse", "mae") if k in m})
    return out


def _from_finetune(run: Path, checkpoint: Path) -> _Source:
    state = load_state(checkpoint)
    if state.get("kind") != "simmtm-finetune":
        raise UserError(f"{checkpoint}: not a simmtm fine-tuning checkpoint")
    config = parse_config(state["config"], source=f"{checkpoint} (config)")
    stage = checkpoint.parent.name
    metrics = _read_json(run / "metrics.json")
    scores = {
        f"downstream ({'test' if 'mse' in metrics or 'accuracy' in metrics else 'validation'})": _downstream(metrics)
    }
    selection = [f"the encoder as fine-tuned for stage `{stage}` (mode {config.finetune.mode}) of this fine-tuning run"]
    return _Source("fine-tuning", run, checkpoint, encoder_state(state["model"]), config, None, scores, selection)


def _from_sweep_trial(run: Path, sweep: Path) -> _Source | None:
    """A trial's pre-trained encoder (its folder ``SWEEP/trials/<trial>``), with the sweep's selection; None when the
    folder is elsewhere (``tune.storage_path``) or gone."""
    trial = run.name
    found = [p for p in [sweep / "trials" / trial / "checkpoint.pt"] if p.is_file()]
    found = found or sorted(sweep.glob(f"**/{trial}/checkpoint_*/checkpoint.pt"))  # a sweep of an earlier release
    if not found:
        return None
    source = _from_pretrain(run, found[-1], kind="sweep trial")
    source.path = run
    source.scores = {
        "downstream, fine-tuned from this encoder (test, scored once)": _downstream(_read_json(run / "metrics.json"))
    }
    header = [
        line.removeprefix("#").strip()
        for line in (sweep / "best.yaml").read_text().splitlines()
        if line.startswith("# best.yaml")
    ]
    source.selection = [f"trial `{trial}` of the sweep in `{sweep}`", *header]
    sweep_file = sweep / "sweep.yaml"
    if sweep_file.is_file():
        raw = yaml.safe_load(sweep_file.read_text()) or {}
        search, tune = raw.get("search", {}), raw.get("tune", {})
        source.selection.append(
            f"search: {search.get('method', 'tpe')} over {', '.join(search.get('params', {})) or 'nothing'}; "
            f"{tune.get('num_samples', '?')} samples, scheduler {tune.get('scheduler', {}).get('type', 'none')}"
        )
    return source


def read_run(run: str | Path) -> _Source:
    """The encoder of any run simmtm writes (see the module docstring), or a UserError saying what RUN should be."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    if (run / "pretrain").is_dir() and (ckpt := _pretrain_checkpoint(run / "pretrain")):  # `simmtm run`
        source = _from_pretrain(run / "pretrain", ckpt)
        if (run / "finetune" / "metrics.json").is_file():
            source.scores["downstream, fine-tuned (test)"] = _downstream(_read_json(run / "finetune" / "metrics.json"))
        if (run / "baseline" / "metrics.json").is_file():
            source.scores["random-init baseline (test)"] = _downstream(_read_json(run / "baseline" / "metrics.json"))
        return source
    if ckpt := _pretrain_checkpoint(run):
        return _from_pretrain(run, ckpt)
    sweep = run.parent.parent
    if run.parent.name == "best" and (sweep / "best.yaml").is_file() and (trial := _from_sweep_trial(run, sweep)):
        return trial
    if ckpt := _finetune_checkpoint(run):
        return _from_finetune(run, ckpt)
    raise UserError(
        f"{run}: holds no simmtm checkpoint; RUN is a `simmtm pretrain`, `simmtm run` or `simmtm finetune` "
        "output directory, or a sweep's best/<trial>"
    )


# --- export and load -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedEncoder:
    """What ``export_encoder`` wrote."""

    out: Path
    weights: Path
    config: Path
    card: Path
    source: Path  # the checkpoint the weights came from


def export_encoder(run: str | Path, out: str | Path) -> ExportedEncoder:
    """Write RUN's encoder to ``out`` as safetensors weights, config.json and a model card (README.md)."""
    from safetensors.torch import save_file

    out = Path(out)
    export_files = {WEIGHTS_FILE, CONFIG_FILE, CARD_FILE}
    check_export_dir(out, export_files, _is_export)  # before any work; again once the folder is ours
    source = read_run(run)
    shapes = _data_shapes(source.config, recorded=source.shapes)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": source.config.model.model_dump(),
        "seq_len": shapes["seq_len"],
        "channels": shapes["channels"],
        "channel_independent": shapes["channel_independent"],
        "task": shapes["task"],
        "instance_norm": source.config.model.instance_norm,
        "source": {"kind": source.kind, "run": str(source.path), "checkpoint": str(source.checkpoint)},
        "run_config": source.config.run_dict(),
    }
    # build once before writing: weights that do not fit the config fail here
    module = _build(description)
    try:
        module.encoder.load_state_dict(source.weights)
    except RuntimeError as exc:
        raise UserError(f"{source.checkpoint}: the encoder weights do not fit its config ({exc})") from None
    description["out_dim"] = module.out_dim
    weights = {k: v.detach().contiguous() for k, v in source.weights.items()}
    with own(out):
        check_export_dir(out, export_files, _is_export)
        save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
        (out / CONFIG_FILE).write_text(json.dumps(description, indent=2, default=str) + "\n")
        (out / CARD_FILE).write_text(model_card(source, description))
    return ExportedEncoder(out, out / WEIGHTS_FILE, out / CONFIG_FILE, out / CARD_FILE, source.checkpoint)


def _is_export(out: Path) -> bool:
    """Whether ``out`` holds a description simmtm export wrote (its format key says so)."""
    try:
        return json.loads((out / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def load_encoder(directory: str | Path, *, map_location: str = "cpu") -> SeriesEncoder:
    """The encoder ``simmtm export`` wrote to ``directory``, in eval mode: ``(B, L, C) -> (B, T, out_dim)``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file = directory / CONFIG_FILE
    if not config_file.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise UserError(
            f"{directory}: not an exported encoder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            f"write one with `simmtm export RUN --out {directory}`"
        )
    description = json.loads(config_file.read_text())
    if description.get("format") != FORMAT:
        raise UserError(f"{config_file}: not a simmtm encoder description (format {description.get('format')!r})")
    module = _build(description)
    module.encoder.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=map_location))
    return module.to(map_location).eval()


def _build(description: dict[str, Any]) -> SeriesEncoder:
    model = ModelConfig.model_validate(description["model"])
    channels, ci = int(description["channels"]), bool(description["channel_independent"])
    encoder = build_encoder(model, in_channels=1 if ci else channels, seq_len=int(description["seq_len"]))
    return SeriesEncoder(
        encoder,
        seq_len=int(description["seq_len"]),
        channels=channels,
        channel_independent=ci,
        instance_norm=bool(description["instance_norm"]),
    )


def _data_shapes(config: RunConfig, *, recorded: dict[str, int] | None) -> dict[str, Any]:
    """L, C and channel independence of the run's series, read off its data; without the data, the series shape an
    imported checkpoint recorded (the encoder's own input: one series of ``channels`` channels)."""
    try:
        inputs = load_inputs(config)
    except UserError:
        if recorded is None:
            raise
        return {
            "seq_len": int(recorded["seq_len"]),
            "channels": int(recorded["channels"]),
            "channel_independent": False,
            "task": "forecasting",  # only official forecasting checkpoints are imported
        }
    return {
        "seq_len": inputs.seq_len,
        "channels": inputs.channels,
        "channel_independent": inputs.channel_independent,
        "task": inputs.task,
    }
