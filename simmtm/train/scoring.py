"""Scoring a fine-tuned model on a split: forecasting MSE/MAE, classification loss, accuracy and macro F1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from simmtm.train.runtime import Runtime
from simmtm.train.shared import autocast

__all__ = ["evaluate", "predict", "macro_f1"]


def predict(model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
    """The model's output for a labelled batch; padded series pass their padding mask (True at real steps)."""
    if len(batch) == 3:
        return model(batch[0].to(device), batch[2].to(device))
    return model(batch[0].to(device))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    task: str,
    runtime: Runtime,
    *,
    batch_size: int,
    max_batches: int | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Forecasting: mse, mae (over every window, step and channel); classification: loss, log_loss (the mean
    cross-entropy, continuous where accuracy ties on a small split), accuracy, f1.

    The sums stay on the device until the end (one read per call, not one per batch).
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs, targets = [], []
    sums = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # squared and absolute errors
    count = 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        y = batch[1]
        with autocast(precision, runtime.device):
            out = predict(model, batch, runtime.device).float()
        if task == "classification":
            outputs.append(out.clone())  # a CUDA graph (compile on CUDA) reuses its output buffer on the next call
            targets.append(y)
            continue
        err = out - y.to(runtime.device)
        sums += torch.stack([err.pow(2).sum(), err.abs().sum()]).double()
        count += err.numel()
    if task == "classification":
        logits, labels = torch.cat(outputs).cpu(), torch.cat(targets)
        pred = logits.argmax(dim=1).numpy()
        return {
            "loss": F.cross_entropy(logits, labels).item(),
            "log_loss": F.cross_entropy(logits, labels).item(),  # reported (loss is the early-stopping criterion)
            "accuracy": float((pred == labels.numpy()).mean()),
            "f1": macro_f1(labels.numpy(), pred, num_classes=logits.shape[1]),
        }
    sq, ab = sums.tolist()
    return {"loss": sq / count, "mse": sq / count, "mae": ab / count}


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
