"""Fine-tuning (and linear probing) as one plain function: ``run(config, report)``.

Forecasting trains one head per horizon and scores MSE/MAE on standardised data; classification scores accuracy
and macro F1. Model selection and early stopping use the validation split only; the test split is scored once,
with the selected weights. Without a pre-trained checkpoint the same run is the random-init baseline.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from simmtm.checkpoint import encoder_state, latest_checkpoint, load_state, save_state
from simmtm.config import ModelConfig, RunConfig, dump_config
from simmtm.encoders import build_encoder
from simmtm.errors import UserError
from simmtm.heads import Classifier, Forecaster
from simmtm.inputs import Inputs, load_inputs
from simmtm.runtime import LocalRuntime, Report, Runtime, no_report, pick_device
from simmtm.tracking import RunLog, progress_bar, write_json

__all__ = ["run", "check_inputs", "load_pretrained", "macro_f1"]

log = logging.getLogger(__name__)


def load_pretrained(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A pre-training state from a run directory, a checkpoint file, or an already loaded dict."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir() and (ckpt := latest_checkpoint(path)) is not None:
        path = ckpt
    elif path.is_dir():
        raise UserError(f"{path}: not a pre-training run directory (no checkpoints/last.pt); run `simmtm pretrain` first")
    state = load_state(path)
    if state.get("kind") != "simmtm-pretrain":
        raise UserError(f"{path}: not a simmtm pre-training checkpoint")
    return state


def _adopt_pretrained_shape(config: RunConfig, state: dict[str, Any]) -> RunConfig:
    """Use the pre-trained encoder's architecture; say so when the fine-tuning config asked for another."""
    saved = ModelConfig.model_validate(state["config"]["model"])
    saved_len = state["config"]["data"]["seq_len"]
    if saved != config.model or saved_len != config.data.seq_len:
        changed = [k for k in ModelConfig.model_fields if getattr(saved, k) != getattr(config.model, k)]
        if saved_len != config.data.seq_len:
            changed.append("data.seq_len")
        log.warning("using the pre-trained run's model settings; the fine-tuning config differed in: %s", ", ".join(changed))
    config = config.model_copy(deep=True)
    config.model = saved
    config.data.seq_len = saved_len
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

    ``pretrained``: a pre-training run directory, checkpoint file or state; None gives the random-init baseline.
    ``score_test=False`` leaves the test split alone and returns validation metrics only (sweep trials: the test
    split is scored once, for the best configurations).
    """
    runtime = runtime or LocalRuntime(pick_device(config.device))
    if config.threads:
        torch.set_num_threads(config.threads)
    config, state, stages = _prepare(config, pretrained)  # bad input fails here, before anything is written
    first = next(iter(stages.values()))
    run_path = Path(run_dir) if run_dir is not None and runtime.is_main else None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_path / "config.yaml")
    run_log = RunLog(run_path)
    try:
        if first.task == "classification":
            metrics = _finetune_one(config, first, state, runtime, report, run_log, run_path, tag="classification", progress=progress,
                                    score_test=score_test)
        else:
            per_horizon = {}
            for h, inputs in stages.items():
                per_horizon[str(h)] = _finetune_one(config, inputs, state, runtime, report, run_log, run_path, tag=f"h{h}", progress=progress,
                                                    score_test=score_test)
            keys = ("mse", "mae", "val_mse", "val_mae") if score_test else ("val_mse", "val_mae")
            metrics = {"horizons": per_horizon, **{k: float(np.mean([m[k] for m in per_horizon.values()])) for k in keys}}
    finally:
        run_log.close()
    metrics["pretrained"] = state is not None
    metrics["mode"] = config.finetune.mode
    if run_path is not None:
        write_json(run_path / "metrics.json", metrics)
    return metrics


def check_inputs(config: RunConfig, *, pretrained: str | Path | dict[str, Any] | None = None) -> None:
    """Load the pre-trained state and the data of every stage and build the model once, writing nothing:
    a UserError here names what is wrong before a caller touches any directory."""
    _prepare(config, pretrained)


def _prepare(
    config: RunConfig, pretrained: str | Path | dict[str, Any] | None
) -> tuple[RunConfig, dict[str, Any] | None, dict[int, Inputs]]:
    """The config to run (with the pre-trained architecture), the pre-trained state, and the inputs of each stage
    (by horizon; one stage for classification). Every split of every stage is loaded and the model built once."""
    state = load_pretrained(pretrained) if pretrained is not None else None
    if state is not None:
        config = _adopt_pretrained_shape(config, state)
    horizons = config.finetune.horizons
    first = load_inputs(config, horizon=horizons[0], labelled=True)
    if first.task == "classification":
        stages = {0: first}
    else:
        stages = {h: first if h == horizons[0] else load_inputs(config, horizon=h, labelled=True) for h in horizons}
    _build(config, first, state)  # a bad architecture or a pre-trained encoder that does not fit fails here
    return config, state, stages


def _build(config: RunConfig, inputs: Inputs, state: dict[str, Any] | None) -> nn.Module:
    torch.manual_seed(config.seed)
    try:
        encoder = build_encoder(config.model, in_channels=inputs.series_channels, seq_len=inputs.seq_len)
    except ValueError as exc:
        raise UserError(str(exc)) from None
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
        return Classifier(encoder, seq_len=inputs.seq_len, channels=inputs.channels, num_classes=inputs.num_classes,
                          channel_independent=inputs.channel_independent)
    return Forecaster(encoder, seq_len=inputs.seq_len, horizon=inputs.horizon, channels=inputs.channels,
                      channel_independent=inputs.channel_independent)


def _finetune_one(
    config: RunConfig, inputs: Inputs, state: dict[str, Any] | None, runtime: Runtime, report: Report,
    run_log: RunLog, run_path: Path | None, *, tag: str, progress: bool, score_test: bool = True,
) -> dict[str, float]:
    """Train one head with early stopping on validation, then score the selected weights on test once."""
    cfg = config.finetune
    model = runtime.prepare_model(_build(config, inputs, state))
    core = getattr(model, "module", model)
    if cfg.mode == "probe":
        core.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    loader = runtime.prepare_loader(DataLoader(
        inputs.train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
        generator=torch.Generator().manual_seed(config.seed), num_workers=config.data.num_workers,
    ))
    if len(loader) == 0:
        raise UserError(f"finetune: no training samples in {config.data.name or config.data.path}")
    loss_fn = F.cross_entropy if inputs.task == "classification" else F.mse_loss
    total = min(cfg.epochs * len(loader), cfg.max_steps or math.inf)
    bar = progress_bar(total, f"finetune {tag}", enabled=progress and runtime.is_main)

    best_score, best_state, best_epoch, bad_epochs, step = math.inf, None, 0, 0, 0
    history = []
    for epoch in range(cfg.epochs):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        if cfg.mode == "probe":
            core.encoder.eval()  # frozen: no dropout, no batch-statistics updates
        running, batches = 0.0, 0
        for x, y in loader:
            x, y = x.to(runtime.device), y.to(runtime.device)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {loss.item()} ({tag}, epoch {epoch})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += loss.item()
            batches += 1
            run_log.scalars(step, {"loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, prefix=f"finetune_{tag}/")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            if step >= total:
                break
        scheduler.step()
        val = evaluate(model, inputs.val, inputs.task, runtime, batch_size=cfg.eval_batch_size, max_batches=cfg.val_batches)
        score = val["loss"]
        epoch_metrics = {"stage": tag, "epoch": epoch + 1, "step": step, "train_loss": running / max(batches, 1),
                         **{f"val_{k}": v for k, v in val.items()}}
        history.append(epoch_metrics)
        run_log.scalars(epoch + 1, {k: v for k, v in epoch_metrics.items() if isinstance(v, float)}, prefix=f"finetune_{tag}_epoch/")
        run_log.record("finetune_epoch", epoch_metrics)
        report({k: v for k, v in epoch_metrics.items() if k != "stage"}, None)
        log.info("fine-tuning %s epoch %d: train_loss=%.4f val_loss=%.4f", tag, epoch + 1, epoch_metrics["train_loss"], score)
        if score < best_score:
            best_score, best_epoch, bad_epochs = score, epoch + 1, 0
            best_state = copy.deepcopy(core.state_dict())
        else:
            bad_epochs += 1
        if run_path is not None:
            save_state({"kind": "simmtm-finetune", "model": core.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1, "step": step, "config": config.run_dict()}, run_path / "checkpoints" / tag / "last.pt")
        if bad_epochs >= cfg.patience or step >= total:
            break
    if bar is not None:
        bar.close()

    core.load_state_dict(best_state)
    if run_path is not None:
        save_state({"kind": "simmtm-finetune", "model": best_state, "epoch": best_epoch, "config": config.run_dict()},
                   run_path / "checkpoints" / tag / "best.pt")
    val = evaluate(model, inputs.val, inputs.task, runtime, batch_size=cfg.eval_batch_size)
    test = evaluate(model, inputs.test, inputs.task, runtime, batch_size=cfg.eval_batch_size) if score_test else {}
    result = {**{k: v for k, v in test.items() if k != "loss"}, **{f"val_{k}": v for k, v in val.items() if k != "loss"},
              "best_epoch": best_epoch, "epochs": len(history)}
    if test:
        log.info("%s: test %s", tag, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))
    return result


@torch.no_grad()
def evaluate(model: nn.Module, dataset, task: str, runtime: Runtime, *, batch_size: int, max_batches: int | None = None) -> dict[str, float]:
    """Forecasting: mse, mae (over every window, step and channel); classification: loss, accuracy, f1."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if task == "classification":
        logits, labels = [], []
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            logits.append(model(x.to(runtime.device)).cpu())
            labels.append(y)
        logits_t, labels_t = torch.cat(logits), torch.cat(labels)
        pred = logits_t.argmax(dim=1).numpy()
        return {
            "loss": F.cross_entropy(logits_t, labels_t).item(),
            "accuracy": float((pred == labels_t.numpy()).mean()),
            "f1": macro_f1(labels_t.numpy(), pred, num_classes=logits_t.shape[1]),
        }
    sq, ab, count = 0.0, 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        err = model(x.to(runtime.device)) - y.to(runtime.device)
        sq += err.pow(2).sum().item()
        ab += err.abs().sum().item()
        count += err.numel()
    mse = sq / count
    return {"loss": mse, "mse": mse, "mae": ab / count}


def macro_f1(labels: np.ndarray, pred: np.ndarray, *, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for k in range(num_classes):
        tp = np.sum((pred == k) & (labels == k))
        fp = np.sum((pred == k) & (labels != k))
        fn = np.sum((pred != k) & (labels == k))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
