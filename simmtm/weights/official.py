"""Official SimMTM forecasting checkpoints (github.com/thuml/SimMTM, SimMTM_Forecasting) as simmtm runs.

The official pre-training model's state dict has five parts; each maps onto one part of ``SimMTM``:

====================================================  ==============================================================
official                                              simmtm
====================================================  ==============================================================
enc_embedding.value_embedding.tokenConv.weight        encoder.token.weight
enc_embedding.position_embedding.pe                   (a fixed sine table: checked, not stored)
enc_embedding.temporal_embedding.*                    (unused by the official forward, which passes no time marks)
encoder.attn_layers.i.attention.{query,key,value}_    encoder.stack.layers.i.attention.qkv (q, k, v stacked by rows)
  projection
encoder.attn_layers.i.attention.out_projection        encoder.stack.layers.i.attention.out
encoder.attn_layers.i.conv1 / conv2 (kernel 1)        encoder.stack.layers.i.ff.0 / ff.3 (Linear: kernel dim dropped)
encoder.attn_layers.i.norm1 / norm2, encoder.norm     encoder.stack.layers.i.norm1 / norm2, encoder.stack.norm
projection.linear                                     decoder.1
pooler.pooler.1 / .2 (BatchNorm) / .4                 projector.net.1 / .2 / .4
awl.params                                            combine.sigma, reversed: the official call is
                                                      awl(loss_cl, loss_rb), ours combine(reconstruction, constraint)
====================================================  ==============================================================

A checkpoint may be the bare state dict, or wrapped (``{"model_state_dict": ...}`` as the official ``ckpt_best.pth``,
``{"state_dict": ...}``, ``{"model": ...}``), with or without DataParallel's ``module.`` prefix. The official
``ckpt_best.pth`` / ``ckptN.pth`` hold only ``enc_embedding.*`` and ``encoder.*``: the projector, decoder and loss
weights then keep a fresh (seeded) initialisation, which fine-tuning never reads; the import says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from simmtm.config.schema import RunConfig, dump_config
from simmtm.data.torch_files import UnreadableTorchFile, load_weights_only
from simmtm.errors import UserError
from simmtm.method.encoders import sinusoidal_positions
from simmtm.method.model import SimMTM
from simmtm.train.checkpoint import PRETRAIN_KIND, save_state
from simmtm.train.pretraining import build_simmtm

__all__ = ["import_official", "official_state_to_simmtm", "read_official_checkpoint"]

log = logging.getLogger(__name__)

Tensor = torch.Tensor
_WRAPPERS = ("model_state_dict", "state_dict", "model")
_IGNORED = re.compile(r"enc_embedding\.temporal_embedding\..+")
_POSITIONS = "enc_embedding.position_embedding.pe"
_QKV = re.compile(r"encoder\.attn_layers\.(\d+)\.attention\.(query|key|value)_projection\.(weight|bias)")

# official key pattern -> (simmtm key template, conversion of the tensor)
_RENAMES: list[tuple[re.Pattern[str], str, Callable[[Tensor], Tensor]]] = [
    (re.compile(p), target, convert)
    for p, target, convert in [
        (r"enc_embedding\.value_embedding\.tokenConv\.weight", "encoder.token.weight", lambda t: t),
        (
            r"encoder\.attn_layers\.(\d+)\.attention\.out_projection\.(weight|bias)",
            r"encoder.stack.layers.\1.attention.out.\2",
            lambda t: t,
        ),
        (
            r"encoder\.attn_layers\.(\d+)\.conv1\.weight",
            r"encoder.stack.layers.\1.ff.0.weight",
            lambda t: t.squeeze(-1),
        ),
        (r"encoder\.attn_layers\.(\d+)\.conv1\.bias", r"encoder.stack.layers.\1.ff.0.bias", lambda t: t),
        (
            r"encoder\.attn_layers\.(\d+)\.conv2\.weight",
            r"encoder.stack.layers.\1.ff.3.weight",
            lambda t: t.squeeze(-1),
        ),
        (r"encoder\.attn_layers\.(\d+)\.conv2\.bias", r"encoder.stack.layers.\1.ff.3.bias", lambda t: t),
        (r"encoder\.attn_layers\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.stack.layers.\1.norm\2.\3", lambda t: t),
        (r"encoder\.norm\.(weight|bias)", r"encoder.stack.norm.\1", lambda t: t),
        (r"projection\.linear\.(weight|bias)", r"decoder.1.\1", lambda t: t),
        (
            r"pooler\.pooler\.([124])\.(weight|bias|running_mean|running_var|num_batches_tracked)",
            r"projector.net.\1.\2",
            lambda t: t,
        ),
        (r"awl\.params", "combine.sigma", lambda t: t.flip(0)),
    ]
]


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The official state dict in ``path`` (unwrapped, ``module.`` stripped) and the wrapper's other entries."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:  # torch's own message is paragraphs with colour codes, ending in advice to load unsafely: never shown
        raw = load_weights_only(path)
    except UnreadableTorchFile as exc:
        raise UserError(f"{path}: not a readable PyTorch checkpoint: {exc}") from None
    extra: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        for key in _WRAPPERS:
            if isinstance(raw.get(key), Mapping):
                extra = {k: v for k, v in raw.items() if k != key}
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise UserError(f"{path}: not a state dict of tensors (nor one wrapped under {', '.join(_WRAPPERS)})")
    return {k.removeprefix("module."): v for k, v in raw.items()}, extra


def official_state_to_simmtm(official: Mapping[str, Tensor], model: SimMTM) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official state dict onto ``model``'s keys; return the full state and the simmtm keys the official
    one lacked (kept at ``model``'s initialisation). Raises UserError naming the official key that has no place
    in simmtm, or whose shape disagrees with the config the model was built from."""
    target = model.state_dict()
    mapped: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in official.items():
        if _IGNORED.fullmatch(key):
            continue
        if key == _POSITIONS:
            _check_positions(value, model)
            continue
        if match := _QKV.fullmatch(key):
            layer, part, kind = match.groups()
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        for pattern, template, convert in _RENAMES:
            if match := pattern.fullmatch(key):
                _put(mapped, target, match.expand(template), convert(value), source=key)
                break
        else:
            raise UserError(
                f"official key '{key}' has no counterpart in simmtm (an official SimMTM forecasting "
                "pre-training checkpoint holds enc_embedding.*, encoder.*, projection.*, pooler.*, awl.*)"
            )
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise UserError(
                f"official key 'encoder.attn_layers.{layer}.attention.{missing[0]}_projection.{kind}' is missing "
                "(query, key and value projections come together)"
            )
        stacked = torch.cat([parts["query"], parts["key"], parts["value"]])  # rows: q, then k, then v
        _put(
            mapped,
            target,
            f"encoder.stack.layers.{layer}.attention.qkv.{kind}",
            stacked,
            source=f"encoder.attn_layers.{layer}.attention.query_projection.{kind}",
        )
    absent = [k for k in target if k not in mapped]
    encoder_absent = [k for k in absent if k.startswith("encoder.")]
    if encoder_absent:
        raise UserError(
            f"the official checkpoint lacks the weights of simmtm's '{encoder_absent[0]}' "
            f"({len(encoder_absent)} encoder tensor(s) in all): is model.n_layers as in the official run?"
        )
    return {**target, **mapped}, absent


def _put(mapped: dict[str, Tensor], target: Mapping[str, Tensor], key: str, value: Tensor, *, source: str) -> None:
    if key not in target:
        raise UserError(
            f"official key '{source}' has no counterpart in this simmtm model ('{key}'); "
            "check model.n_layers and model.projector_norm in --config"
        )
    if tuple(value.shape) != tuple(target[key].shape):
        raise UserError(
            f"official key '{source}' has shape {tuple(value.shape)} but the config gives {key} the shape "
            f"{tuple(target[key].shape)}; set data.seq_len, model.d_model, model.d_ff and model.projector_* as "
            "in the official run"
        )
    mapped[key] = value.to(target[key].dtype)


def _check_positions(pe: Tensor, model: SimMTM) -> None:
    """The official position table is a fixed buffer: it must be the sine table simmtm computes itself."""
    d_model = model.encoder.d_model
    if pe.dim() != 3 or pe.shape[-1] != d_model or pe.shape[1] < model.seq_len:
        raise UserError(
            f"official key '{_POSITIONS}' has shape {tuple(pe.shape)}; expected (1, >= {model.seq_len}, {d_model}) "
            "from data.seq_len and model.d_model in --config"
        )
    ours = sinusoidal_positions(model.seq_len, d_model)
    if not torch.allclose(pe[0, : model.seq_len].float(), ours, atol=1e-4):
        raise UserError(f"official key '{_POSITIONS}' is not the fixed sine table simmtm uses")


def _check_config(config: RunConfig) -> None:
    """The official forecasting model: channel-independent Transformer, Pooler_Head, automatic loss weighting."""
    wanted = {
        "model.encoder": (config.model.encoder, "transformer"),
        "model.projector": (config.model.projector, "official"),
        "model.projector_norm": (config.model.projector_norm, "batch"),
        "pretrain.loss_weighting": (config.pretrain.loss_weighting, "auto"),
        "model.instance_norm": (config.model.instance_norm, True),
    }
    for key, (got, want) in wanted.items():
        if got != want:
            raise UserError(f"--config: {key} is {got!r}; an official forecasting checkpoint needs {want!r}")
    if config.model.channel_independent is False:
        raise UserError(
            "--config: model.channel_independent is false; the official forecasting model is channel-independent"
        )


def import_official(checkpoint: str | Path, config: RunConfig, out: str | Path) -> dict[str, Any]:
    """Write ``out`` as a simmtm pre-training run directory (``config.yaml``, ``checkpoints/last.pt`` and
    ``best.pt``) holding the official checkpoint's weights; return a summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty directory; choose another --out")
    _check_config(config)
    official, extra = read_official_checkpoint(checkpoint)
    torch.manual_seed(config.seed)  # the parts an encoder-only checkpoint lacks get a reproducible initialisation
    model = build_simmtm(config, seq_len=config.data.seq_len, channels=1)
    weights, absent = official_state_to_simmtm(official, model)
    model.load_state_dict(weights)  # the mapped state fits the model exactly
    if absent:
        log.warning(
            "the checkpoint holds no %s: kept at a fresh initialisation (fine-tuning reads the encoder only)",
            ", ".join(sorted({k.split(".")[0] for k in absent})),
        )
    epoch = extra.get("epoch")
    state = {
        "kind": PRETRAIN_KIND,
        "model": model.state_dict(),
        "epoch": int(epoch) + 1 if isinstance(epoch, int) else 0,  # the official epoch counter starts at 0
        "step": 0,
        "metrics": {},
        "config": config.run_dict(),
        "shapes": {"seq_len": config.data.seq_len, "channels": 1},
        "imported": {"source": str(Path(checkpoint).resolve()), "fresh": absent},
    }
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "config.yaml")
    for name in ("last.pt", "best.pt"):
        save_state(state, out / "checkpoints" / name)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "out": str(out),
        "tensors": len(official),
        "fresh": absent,
        "parameters": parameters,
        "epoch": state["epoch"],
    }
