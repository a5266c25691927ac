"""Fine-tuning (and linear probing) as one plain function: ``run(config, report)``.

Forecasting trains one head per horizon and scores MSE/MAE on standardised data; classification scores accuracy
and macro F1. Model selection and early stopping use the validation split only; the test split is scored once,
with the selected weights. Without a pre-trained checkpoint the same run is the random-init baseline.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from simmtm.config.schema import ModelConfig, RunConfig
from simmtm.data.inputs import Inputs, load_inputs
from simmtm.errors import UserError
from simmtm.method.heads import Classifier, Forecaster
from simmtm.train.checkpoint import PRETRAIN_KIND, encoder_state, load_state, run_checkpoint, save_state
from simmtm.train.history import RunLog, write_json
from simmtm.train.pretraining import build_checked_encoder
from simmtm.train.runtime import LocalRuntime, Report, Runtime, check_device, no_report, pick_device
from simmtm.train.scoring import evaluate, predict
from simmtm.train.shared import Loop, open_run_dir, prepare_model, set_up

__all__ = ["run", "check_inputs", "load_pretraining_state", "LR_SCHEDULES"]

log = logging.getLogger(__name__)


def load_pretraining_state(
    source: str | Path | dict[str, Any], checkpoint: str = "best", *, map_location: str = "cpu"
) -> dict[str, Any]:
    """The state of a pre-training run (its own or an imported one): from a run directory (its ``checkpoint``,
    ``best`` or ``last``; ``best`` falls back to ``last``), a checkpoint file, or an already loaded dict."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        found = run_checkpoint(path, checkpoint) or run_checkpoint(path, "last")
        if found is None:
            raise UserError(
                f"{path}: not a pre-training run directory (no checkpoints/{checkpoint}.pt); run `simmtm pretrain` "
                "first (or `simmtm import-official` for an official checkpoint)"
            )
        if found.stem != checkpoint:  # a distributed run, or one from before best.pt existed
            log.warning("%s has no checkpoints/%s.pt; loading %s", path, checkpoint, found.name)
        path = found
    state = load_state(path, map_location=map_location)
    if state.get("kind") != PRETRAIN_KIND:
        raise UserError(f"{path}: not a simmtm pre-training checkpoint")
    return state


_DROPOUTS = ("dropout", "attention_dropout", "head_dropout")  # what fine-tuning may set apart from pre-training


def _finetuning_model(config: RunConfig, state: dict[str, Any] | None) -> RunConfig:
    """The config to fine-tune with: the pre-trained run's model and window length (its shapes), with the
    ``finetune.*`` dropout values where set; the random-init baseline keeps the model section."""
    model, seq_len = config.model.model_dump(), config.data.seq_len
    if state is not None:
        saved, saved_len = state["config"]["model"], state["config"]["data"]["seq_len"]
        changed = [k for k in ModelConfig.model_fields if k in saved and saved[k] != model[k]]
        changed += ["data.seq_len"] if saved_len != seq_len else []
        if changed:
            log.warning(
                "fine-tuning the pre-trained model as it was built; the config's model differs in: %s "
                "(dropout is set for fine-tuning by finetune.%s)",
                ", ".join(changed),
                ", finetune.".join(_DROPOUTS),
            )
        model, seq_len = saved, saved_len
    overrides = {k: v for k in _DROPOUTS if (v := getattr(config.finetune, k)) is not None}
    for key in overrides.keys() - ModelConfig.model_fields.keys():
        raise UserError(f"finetune.{key}: the model has no {key} to set; remove it or use finetune.dropout")
    config = config.model_copy(deep=True)
    config.model = ModelConfig.model_validate({**model, **overrides})
    config.data.seq_len = seq_len
    return config


def run(
    config: RunConfig,
    report: Report = no_report,
    *,
    run_dir: str | Path | None = None,
    pretrained: str | Path | dict[str, Any] | None = None,
    runtime: Runtime | None = None,
    progress: bool = False,
    score_test: bool = True,
) -> dict[str, Any]:
    """Fine-tune (``finetune.mode: full``) or probe (``probe``) and return the test metrics.

    ``pretrained``: a pre-training run directory (its ``finetune.from_checkpoint``), checkpoint file or state; None
    gives the random-init baseline. ``score_test=False`` leaves the test split alone and returns validation metrics
    only (sweep trials: the test split is scored once, for the best configurations).
    """
    runtime = runtime or LocalRuntime(pick_device(config.device))
    set_up(config, runtime)
    config, state, stages = _prepare(config, pretrained)  # bad input fails here, before anything is written
    run_path = open_run_dir(run_dir, config, runtime)
    run_log = RunLog(run_path)
    try:
        results: dict[str, dict[str, Any]] = {
            tag: _finetune_one(
                config,
                inputs,
                state,
                runtime,
                report,
                run_log,
                run_path,
                tag=tag,
                progress=progress,
                score_test=score_test,
            )
            for tag, inputs in stages.items()
        }
    finally:
        run_log.close()
    metrics: dict[str, Any]
    if "classification" in results:
        metrics = results["classification"]
    else:
        keys = ("mse", "mae", "val_mse", "val_mae") if score_test else ("val_mse", "val_mae")
        per_horizon = {tag.removeprefix("h"): m for tag, m in results.items()}
        metrics = {"horizons": per_horizon, **{k: float(np.mean([m[k] for m in per_horizon.values()])) for k in keys}}
    metrics["pretrained"] = state is not None
    metrics["mode"] = config.finetune.mode
    if run_path is not None:
        write_json(run_path / "metrics.json", metrics)
    return metrics


def check_inputs(config: RunConfig, *, pretrained: str | Path | dict[str, Any] | None = None) -> None:
    """Load the pre-trained state and every stage's data and build the model once, writing nothing (UserError)."""
    check_device(config.device)
    _prepare(config, pretrained)


def _prepare(
    config: RunConfig, pretrained: str | Path | dict[str, Any] | None
) -> tuple[RunConfig, dict[str, Any] | None, dict[str, Inputs]]:
    """The config to run (with the pre-trained architecture), the pre-trained state, and the inputs of each stage
    by tag (``h96``, ... per horizon; ``classification``). Every split of every stage is loaded and the model built
    once."""
    state = load_pretraining_state(pretrained, config.finetune.from_checkpoint) if pretrained is not None else None
    config = _finetuning_model(config, state)
    horizons = config.finetune.horizons
    first = load_inputs(config, horizon=horizons[0], labelled=True)
    if first.task == "classification":
        stages = {"classification": first}
    else:
        stages = {
            f"h{h}": first if h == horizons[0] else load_inputs(config, horizon=h, labelled=True) for h in horizons
        }
    _build(config, first, state)  # a bad architecture or a pre-trained encoder that does not fit fails here
    return config, state, stages


def _build(config: RunConfig, inputs: Inputs, state: dict[str, Any] | None) -> Forecaster | Classifier:
    torch.manual_seed(config.seed)
    encoder = build_checked_encoder(config, seq_len=inputs.seq_len, channels=inputs.series_channels)
    if state is not None:
        try:
            encoder.load_state_dict(encoder_state(state["model"]))
        except RuntimeError as exc:  # another channel count than the pre-training data had
            reason = str(exc).splitlines()[-1].strip() if str(exc) else type(exc).__name__
            raise UserError(
                f"--from: the pre-trained encoder does not fit {config.data.name or config.data.path} ({reason}); "
                "fine-tune on data with the pre-training data's channels"
            ) from None
    if inputs.task == "classification":
        return Classifier(
            encoder,
            seq_len=inputs.seq_len,
            channels=inputs.channels,
            num_classes=inputs.num_classes,
            channel_independent=inputs.channel_independent,
            instance_norm=config.model.instance_norm,
        )
    return Forecaster(
        encoder,
        seq_len=inputs.seq_len,
        horizon=inputs.horizon,
        channels=inputs.channels,
        channel_independent=inputs.channel_independent,
        head_dropout=config.model.head_dropout,
        instance_norm=config.model.instance_norm,
    )


# The official code's first fine-tuning epoch runs at OneCycleLR's starting lr, max_lr / div_factor (25): the
# scheduler is created but never stepped; its per-epoch adjustment then sets lr, lr/2, lr/4, ...
OFFICIAL_FIRST_EPOCH_DIVISOR = 25
LR_SCHEDULES: dict[str, Callable[[float], Callable[[int], float]]] = {
    "halving": lambda decay: lambda epoch: decay**epoch,
    "official": lambda decay: lambda epoch: 1 / OFFICIAL_FIRST_EPOCH_DIVISOR if epoch == 0 else decay ** (epoch - 1),
}


def _finetune_one(
    config: RunConfig,
    inputs: Inputs,
    state: dict[str, Any] | None,
    runtime: Runtime,
    report: Report,
    run_log: RunLog,
    run_path: Path | None,
    *,
    tag: str,
    progress: bool,
    score_test: bool = True,
) -> dict[str, float]:
    """Train one head with early stopping on validation, then score the selected weights on test once."""
    cfg = config.finetune
    core, model, loop = _set_up_head(config, inputs, state, runtime, run_log, tag=tag, progress=progress)
    scheduler = LambdaLR(loop.optimizer, LR_SCHEDULES[cfg.lr_schedule](cfg.lr_decay))  # stepped after each epoch
    score = functools.partial(
        evaluate, model, task=inputs.task, runtime=runtime, batch_size=cfg.eval_batch_size, precision=config.precision
    )
    loss_fn = F.cross_entropy if inputs.task == "classification" else F.mse_loss
    best = _Best()
    try:
        for epoch in range(1, cfg.epochs + 1):
            lr = loop.optimizer.param_groups[0]["lr"]
            train = loop.run_epoch(epoch - 1, lambda batch: {"loss": loss_fn(*_forward(model, batch, runtime.device))})
            scheduler.step()
            val = score(inputs.val, max_batches=cfg.val_batches)
            metrics = {
                "stage": tag,
                "epoch": epoch,
                "step": loop.step,
                "lr": lr,
                "train_loss": train["loss"],
                **{f"val_{k}": v for k, v in val.items()},
            }
            loop.record("finetune_epoch", metrics)
            report({k: v for k, v in metrics.items() if k != "stage"}, None)
            log.info("fine-tuning %s epoch %d: train_loss=%.4f val_loss=%.4f", tag, epoch, train["loss"], val["loss"])
            best.update(core, epoch, val["loss"])
            if run_path is not None:
                last = {
                    "kind": "simmtm-finetune",
                    "model": core.state_dict(),
                    "optimizer": loop.optimizer.state_dict(),
                    "epoch": epoch,
                    "step": loop.step,
                    "config": config.run_dict(),
                }
                save_state(last, run_path / "checkpoints" / tag / "last.pt")
            if best.bad_epochs >= cfg.patience or loop.done:
                break
    finally:
        loop.close()
    return _score_best(config, score, core, best, inputs, run_path, tag=tag, epochs=epoch, score_test=score_test)


def _set_up_head(
    config: RunConfig,
    inputs: Inputs,
    state: dict[str, Any] | None,
    runtime: Runtime,
    run_log: RunLog,
    *,
    tag: str,
    progress: bool,
) -> tuple[Forecaster | Classifier, nn.Module, Loop]:
    """The model (itself, and what is called), its optimiser and loader in a ``Loop``."""
    cfg = config.finetune
    core = _build(config, inputs, state)
    model = prepare_model(core, runtime, compile=config.compile)
    if cfg.mode == "probe":
        core.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in core.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.adam_betas())
    shuffle = torch.Generator().manual_seed(config.seed)
    loader = runtime.prepare_loader(
        DataLoader(
            inputs.train,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=False,
            generator=shuffle,
            num_workers=config.data.num_workers,
            pin_memory=runtime.device.type == "cuda",
        )
    )
    if len(loader) == 0:
        raise UserError(f"finetune: no training samples in {config.data.name or config.data.path}")
    loop = Loop(
        model,
        optimizer,
        loader,
        shuffle,
        config,
        runtime,
        run_log,
        stage=f"fine-tuning {tag}",
        prefix=f"finetune_{tag}/",
        advice=f"lower finetune.lr (now {cfg.lr:g})",
        total_steps=min(cfg.epochs * len(loader), cfg.max_steps or math.inf),
        frozen=core.encoder if cfg.mode == "probe" else None,
        progress=progress,
    )
    return core, model, loop


def _forward(
    model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) of one labelled batch: (x, y), or (x, y, observed) for padded series."""
    return predict(model, batch, device), batch[1].to(device)


@dataclass
class _Best:
    """The weights of the epoch with the lowest validation loss so far, and the epochs since it."""

    score: float = math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def update(self, model: nn.Module, epoch: int, score: float) -> None:
        if score < self.score:
            self.score, self.epoch, self.bad_epochs = score, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1


def _score_best(
    config: RunConfig,
    score: Callable[..., dict[str, float]],
    core: nn.Module,
    best: _Best,
    inputs: Inputs,
    run_path: Path | None,
    *,
    tag: str,
    epochs: int,
    score_test: bool,
) -> dict[str, float]:
    """Load the selected weights, save them as ``best.pt``, score validation (and test, once)."""
    assert best.state is not None  # update() stored the weights of the first epoch with a finite score
    core.load_state_dict(best.state)
    if run_path is not None:
        save_state(
            {"kind": "simmtm-finetune", "model": best.state, "epoch": best.epoch, "config": config.run_dict()},
            run_path / "checkpoints" / tag / "best.pt",
        )
    val = score(inputs.val)
    test = score(inputs.test) if score_test else {}
    if test:
        log.info("%s: test %s", tag, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))
    return {
        **{k: v for k, v in test.items() if k != "loss"},
        **{f"val_{k}": v for k, v in val.items() if k != "loss"},
        "best_epoch": best.epoch,
        "epochs": epochs,
    }
