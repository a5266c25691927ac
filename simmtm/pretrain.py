"""SimMTM pre-training as one plain function: ``run(config, report)``.

The CLI, the tests, a Ray Train worker and a Ray Tune trial all call it unchanged; what differs between them
(device, data-parallel wrapping, where checkpoints go) comes in through ``runtime`` and ``report``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from simmtm.checkpoint import save_state
from simmtm.config import RunConfig, dump_config
from simmtm.encoders import build_encoder
from simmtm.errors import UserError
from simmtm.inputs import Inputs, load_inputs
from simmtm.masking import make_mask
from simmtm.model import SimMTM, to_series
from simmtm.runtime import LocalRuntime, Report, Runtime, no_report, pick_device
from simmtm.tracking import RunLog, progress_bar, write_json

__all__ = ["run", "check_inputs", "build_model", "draw_masks", "TrainingDiverged"]

log = logging.getLogger(__name__)

VAL_MASK_SEED = 2**31 - 1  # validation masks are the same every epoch, so epochs compare


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the run stops with this reason."""


def build_model(config: RunConfig, inputs: Inputs) -> SimMTM:
    """The SimMTM model for the shapes of ``inputs`` (seeded by the caller)."""
    try:
        encoder = build_encoder(config.model, in_channels=inputs.series_channels, seq_len=inputs.seq_len)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return SimMTM(encoder, seq_len=inputs.seq_len, channels=inputs.series_channels, model=config.model, pretrain=config.pretrain)


def check_inputs(config: RunConfig, *, world_size: int = 1) -> Inputs:
    """Load the data and build the model once: every input error surfaces here, before anything is written."""
    inputs = _checked_inputs(config, world_size=world_size)
    build_model(config, inputs)
    return inputs


def _checked_inputs(config: RunConfig, *, world_size: int) -> Inputs:
    """The data, with the batch checked against it; the model is built (and so checked) by the caller."""
    inputs = load_inputs(config)
    cfg = config.pretrain
    if cfg.batch_size % world_size:
        raise UserError(
            f"pretrain.batch_size ({cfg.batch_size}) is the global batch and must divide evenly over the "
            f"{world_size} workers; use a multiple of {world_size}"
        )
    if len(inputs.train) < cfg.batch_size:
        raise UserError(
            f"pretrain.batch_size ({cfg.batch_size}) exceeds the {len(inputs.train)} training samples of "
            f"{config.data.name or config.data.path}; use at most {len(inputs.train)}"
        )
    return inputs


def draw_masks(
    config: RunConfig, series: torch.Tensor, *, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Masks ``(M, N, L, c)`` for a local batch of series ``(N, L, c)``.

    The masks of the whole global batch are drawn from one generator seeded by ``seed`` and each worker takes its
    own rows, so a series' mask depends on the seed and its place in the global batch, not on the worker.
    """
    cfg = config.pretrain
    n, length, c = series.shape
    generator = torch.Generator(device=series.device).manual_seed(seed)
    mask = make_mask(
        cfg.masking, (cfg.num_masked, n * world_size, c, length), cfg.mask_ratio, cfg.mask_length,
        generator=generator, device=series.device,
    )  # (M, N_global, c, L)
    return mask[:, rank * n : (rank + 1) * n].transpose(2, 3)  # (M, N, L, c)


def _step_seed(config: RunConfig, step: int) -> int:
    return (config.seed + 1) * 1_000_003 + step


def run(
    config: RunConfig,
    report: Report = no_report,
    *,
    run_dir: str | Path | None = None,
    runtime: Runtime | None = None,
    resume: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Pre-train SimMTM; return the last epoch's metrics.

    ``run_dir`` (main worker) receives the resolved config, ``checkpoints/last.pt`` after each epoch, TensorBoard
    logs, ``history.jsonl`` and ``metrics.json``. ``resume`` is a state written by an earlier call.
    """
    runtime = runtime or LocalRuntime(pick_device(config.device))
    if config.threads:
        torch.set_num_threads(config.threads)
    # Bad input fails here and in build_model below, before anything is written.
    inputs = _checked_inputs(config, world_size=runtime.world_size)
    cfg = config.pretrain
    per_worker_batch = cfg.batch_size // runtime.world_size

    torch.manual_seed(config.seed)  # the same initial weights on every worker
    model = runtime.prepare_model(build_model(config, inputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader_seed = torch.Generator().manual_seed(config.seed)
    train_loader = runtime.prepare_loader(
        DataLoader(inputs.train, batch_size=per_worker_batch, shuffle=True, drop_last=True,
                   generator=loader_seed, num_workers=config.data.num_workers)
    )
    val_loader = runtime.prepare_loader(
        DataLoader(inputs.val, batch_size=per_worker_batch, shuffle=False, drop_last=runtime.world_size > 1,
                   num_workers=config.data.num_workers)
    )
    steps_per_epoch = len(train_loader)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    # A plain function (not saved in the scheduler's state), so a resumed run with a larger budget follows the
    # new cosine length instead of climbing back up after the old one.
    horizon = max(1, int(total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon))) if cfg.scheduler == "cosine" else (lambda _: 1.0),
    )

    epoch, step, metrics = 0, 0, {}
    if resume is not None:
        _unwrap(model).load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        epoch, step, metrics = resume["epoch"], resume["step"], dict(resume.get("metrics", {}))
        log.info("resuming pre-training after epoch %d (step %d)", epoch, step)

    run_path = Path(run_dir) if run_dir is not None and runtime.is_main else None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_path / "config.yaml")
    run_log = RunLog(run_path)
    gather = runtime.gather() if _gather_on(config, runtime) else None
    bar = progress_bar(total_steps, "pretrain", initial=step, enabled=progress and runtime.is_main)
    try:
        while epoch < cfg.epochs and step < total_steps:
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            loader_seed.manual_seed(config.seed * 1_000_003 + epoch)  # the data order depends on the epoch alone
            model.train()
            sums = {"loss": 0.0, "reconstruction": 0.0, "constraint": 0.0}
            seen = 0
            for x in train_loader:
                series = to_series(x.to(runtime.device, non_blocking=True), inputs.channel_independent)
                mask = draw_masks(config, series, seed=_step_seed(config, step), rank=runtime.rank, world_size=runtime.world_size)
                out = model(series, mask, gather)
                if not torch.isfinite(out.loss):
                    raise TrainingDiverged(f"pre-training loss became {out.loss.item()} at step {step} (epoch {epoch})")
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += 1
                parts = {"loss": out.loss.item(), "reconstruction": out.reconstruction.item(), "constraint": out.constraint.item()}
                for k, v in parts.items():
                    sums[k] += v
                run_log.scalars(step, {**parts, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}, prefix="pretrain/")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{parts['loss']:.4f}")
                if step >= total_steps:
                    break
            epoch += 1
            metrics = {
                "epoch": epoch,
                "step": step,
                **{f"train_{k}": runtime.all_reduce_mean(v / max(seen, 1)) for k, v in sums.items()},
                **{f"val_{k}": v for k, v in _validate(config, model, val_loader, inputs, runtime, gather).items()},
            }
            run_log.scalars(epoch, {k: v for k, v in metrics.items() if k not in ("epoch", "step")}, prefix="pretrain_epoch/")
            run_log.record("pretrain_epoch", metrics)
            state = _state(model, optimizer, scheduler, epoch, step, metrics, config) if runtime.is_main else None
            if run_path is not None and state is not None:
                save_state(state, run_path / "checkpoints" / "last.pt")
            report(metrics, state)
            log.info("pre-training epoch %d/%d: %s", epoch, cfg.epochs, _fmt(metrics))
    finally:
        if bar is not None:
            bar.close()
        run_log.close()
    if run_path is not None:
        write_json(run_path / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def _validate(config: RunConfig, model: torch.nn.Module, loader: DataLoader, inputs: Inputs, runtime: Runtime, gather) -> dict[str, float]:
    """Pre-training losses on the validation split, with the same masks every epoch."""
    model.eval()
    sums = {"loss": 0.0, "reconstruction": 0.0, "constraint": 0.0}
    batches = 0
    for i, x in enumerate(loader):
        if config.pretrain.val_batches is not None and i >= config.pretrain.val_batches:
            break
        series = to_series(x.to(runtime.device), inputs.channel_independent)
        mask = draw_masks(config, series, seed=VAL_MASK_SEED - i, rank=runtime.rank, world_size=runtime.world_size)
        out = model(series, mask, gather)
        for k in sums:
            sums[k] += getattr(out, k).item()
        batches += 1
    return {k: runtime.all_reduce_mean(v / batches if batches else math.nan) for k, v in sums.items()}


def _gather_on(config: RunConfig, runtime: Runtime) -> bool:
    return runtime.world_size > 1 and config.pretrain.gather is not False


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _state(model, optimizer, scheduler, epoch: int, step: int, metrics: dict, config: RunConfig) -> dict[str, Any]:
    return {
        "kind": "simmtm-pretrain",
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "metrics": metrics,
        "config": config.run_dict(),
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
