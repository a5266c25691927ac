"""SimMTM pre-training as one plain function: ``run(config, report)``.

The CLI, the tests, a Ray Train worker and a Ray Tune trial all call it unchanged; what differs between them
(device, data-parallel wrapping, where checkpoints go) comes in through ``runtime`` and ``report``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from simmtm.config.schema import PretrainConfig, RunConfig
from simmtm.data.inputs import Inputs, load_inputs, split_batch
from simmtm.errors import UserError
from simmtm.method.encoders import Encoder, build_encoder
from simmtm.method.masking import make_mask, real_steps_only
from simmtm.method.model import Gather, SimMTM, to_series
from simmtm.train.checkpoint import PRETRAIN_KIND, save_pretrain_checkpoints
from simmtm.train.history import RunLog, StepLog, write_json
from simmtm.train.runtime import LocalRuntime, Report, Runtime, check_device, no_report, pick_device
from simmtm.train.shared import (
    Loop,
    LossParts,
    autocast,
    open_run_dir,
    prepare_model,
    restore_rng_states,
    rng_states,
    set_up,
)

__all__ = ["run", "check_inputs", "build_simmtm", "build_checked_encoder", "draw_masks"]

log = logging.getLogger(__name__)

VAL_MASK_SEED = 2**31 - 1  # validation masks are the same every epoch, so epochs compare


def build_checked_encoder(config: RunConfig, *, seq_len: int, channels: int) -> Encoder:
    """The configured encoder for series of ``seq_len`` points and ``channels`` channels (pre-training's and
    fine-tuning's); an architecture that does not fit them is a UserError."""
    try:
        return build_encoder(config.model, in_channels=channels, seq_len=seq_len)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def build_simmtm(config: RunConfig, *, seq_len: int, channels: int) -> SimMTM:
    """A freshly initialised SimMTM for series of ``seq_len`` points and ``channels`` channels (seeded by the
    caller): a run's own model, and the one a checkpoint's weights are loaded into (``simmtm.load_pretrained``)."""
    encoder = build_checked_encoder(config, seq_len=seq_len, channels=channels)
    return SimMTM(encoder, seq_len=seq_len, channels=channels, model=config.model, pretrain=config.pretrain)


def check_inputs(config: RunConfig, *, world_size: int = 1) -> Inputs:
    """Load the data and build the model once: every input error surfaces here, before anything is written."""
    if world_size == 1:  # Ray Train workers resolve their own device (their node's GPUs, checked by the scaling)
        check_device(config.device)
    inputs = _checked_inputs(config, world_size=world_size)
    build_simmtm(config, seq_len=inputs.seq_len, channels=inputs.series_channels)
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
    n_train = len(cast(Sized, inputs.train))  # our datasets have a length; torch's Dataset does not declare one
    if n_train < cfg.batch_size:
        raise UserError(
            f"pretrain.batch_size ({cfg.batch_size}) exceeds the {n_train} training samples of "
            f"{config.data.name or config.data.path}; use at most {n_train}"
        )
    return inputs


def draw_masks(
    config: RunConfig,
    series: torch.Tensor,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masks ``(M, N, L, c)`` for a local batch of series ``(N, L, c)``; with ``observed (N, L)`` (padded series)
    only real steps are masked.

    The masks of the whole global batch are drawn from one generator seeded by ``seed`` and each worker takes its
    own rows, so a series' mask depends on the seed and its place in the global batch, not on the worker.
    """
    cfg = config.pretrain
    n, length, c = series.shape
    generator = torch.Generator(device=series.device).manual_seed(seed)
    mask = make_mask(
        cfg.masking,
        (cfg.num_masked, n * world_size, c, length),
        cfg.mask_ratio,
        cfg.mask_length,
        generator=generator,
        device=series.device,
    )  # (M, N_global, c, L)
    return real_steps_only(mask[:, rank * n : (rank + 1) * n].transpose(2, 3), observed)  # (M, N, L, c)


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
    checkpoints: bool = True,
    step_log: StepLog | None = None,
) -> dict[str, float]:
    """Pre-train SimMTM; return the last epoch's metrics.

    ``run_dir`` (main worker) receives the resolved config, after each epoch ``checkpoints/last.pt`` (and
    ``checkpoints/best.pt`` when the epoch has the lowest validation loss so far), TensorBoard logs and
    ``history.jsonl``, and ``metrics.json`` at the end. ``resume`` is a state written by an earlier call: the run
    continues exactly as if it had not stopped. ``checkpoints=False`` writes no checkpoint files into ``run_dir``
    (a sweep trial: Tune keeps the one copy, from the state passed to ``report``). ``step_log`` (main worker) also
    takes every optimiser step's scalars as TensorBoard gets them (a sweep trial's W&B and MLflow runs).
    """
    runtime = runtime or LocalRuntime(pick_device(config.device))
    set_up(config, runtime)
    inputs = _checked_inputs(config, world_size=runtime.world_size)  # bad input fails here, before any write
    training = _Training.build(config, inputs, runtime)
    at = _Position() if resume is None else training.resume(resume)

    run_path = open_run_dir(run_dir, config, runtime)
    run_log = RunLog(run_path, resume_step=at.step)
    loop = training.loop(run_log, step=at.step, progress=progress, step_log=step_log if runtime.is_main else None)
    if resume is not None:
        restore_rng_states(resume.get("rng"), runtime)  # last: after everything that draws random numbers
    try:
        while at.epoch < config.pretrain.epochs and not loop.done:
            train = loop.run_epoch(at.epoch, lambda x: training.losses(x, step=loop.step))
            val = training.validate()
            at.epoch, at.step = at.epoch + 1, loop.step
            at.metrics = {
                "epoch": at.epoch,
                "step": at.step,
                **_prefixed("train_", train, runtime),
                **_prefixed("val_", val),
            }
            loop.record("pretrain_epoch", at.metrics)
            state = _save_epoch(at, training, run_path if checkpoints else None)
            report(at.metrics, state)
            log.info("pre-training epoch %d/%d: %s", at.epoch, config.pretrain.epochs, _fmt(at.metrics))
    finally:
        loop.close()
        run_log.close()
    if run_path is not None:
        write_json(run_path / "metrics.json", at.metrics)
    return at.metrics


@dataclass
class _Position:
    """Where a run stands after its last finished epoch, and its best epoch so far (lowest validation loss)."""

    epoch: int = 0
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0
    best_val_loss: float = math.inf


@dataclass
class _Training:
    """The pieces of one pre-training run, built from its config and data."""

    config: RunConfig
    inputs: Inputs
    runtime: Runtime
    core: SimMTM  # the model itself, whose state dict the checkpoints hold
    model: nn.Module  # what is called: on the device, wrapped for data parallelism, compiled if asked
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    train_loader: DataLoader
    val_loader: DataLoader
    shuffle: torch.Generator  # the training loader's
    total_steps: float
    gather: Gather | None  # all-gather across workers, or None

    @classmethod
    def build(cls, config: RunConfig, inputs: Inputs, runtime: Runtime) -> _Training:
        cfg = config.pretrain
        torch.manual_seed(config.seed)  # the same initial weights on every worker
        core = build_simmtm(config, seq_len=inputs.seq_len, channels=inputs.series_channels)
        model = prepare_model(core, runtime, compile=config.compile)
        optimizer = torch.optim.Adam(core.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        shuffle = torch.Generator().manual_seed(config.seed)
        batch = cfg.batch_size // runtime.world_size
        train = DataLoader(
            inputs.train,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            generator=shuffle,
            num_workers=config.data.num_workers,
            pin_memory=runtime.device.type == "cuda",
        )
        val = DataLoader(
            inputs.val,
            batch_size=batch,
            shuffle=False,
            drop_last=runtime.world_size > 1,
            num_workers=config.data.num_workers,
        )
        train, val = runtime.prepare_loader(train), runtime.prepare_loader(val)
        total_steps = min(cfg.epochs * len(train), cfg.max_steps or math.inf)
        gather = runtime.gather() if runtime.world_size > 1 and cfg.gather is not False else None
        scheduler = _lr_schedule(optimizer, cfg, total_steps)
        return cls(config, inputs, runtime, core, model, optimizer, scheduler, train, val, shuffle, total_steps, gather)

    def loop(self, run_log: RunLog, *, step: int, progress: bool, step_log: StepLog | None = None) -> Loop:
        cfg = self.config.pretrain
        clip = "set pretrain.grad_clip" if cfg.grad_clip is None else "lower pretrain.grad_clip"
        return Loop(
            self.model,
            self.optimizer,
            self.train_loader,
            self.shuffle,
            self.config,
            self.runtime,
            run_log,
            stage="pre-training",
            prefix="pretrain/",
            advice=f"lower pretrain.lr (now {cfg.lr:g}) or {clip}",
            total_steps=self.total_steps,
            grad_clip=cfg.grad_clip,
            step_scheduler=self.scheduler,
            step=step,
            progress=progress,
            step_log=step_log,
        )

    def resume(self, state: dict[str, Any]) -> _Position:
        """Load a checkpoint's weights, optimiser and schedule (its random state comes last, in ``run``)."""
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The saved lr follows the saved budget; take the next step's lr from this run's schedule (the same value
        # when the budget is unchanged, and not the old cosine's end when it grew).
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        best = state.get("best", {})
        log.info("resuming pre-training after epoch %d (step %d)", state["epoch"], state["step"])
        return _Position(
            epoch=state["epoch"],
            step=state["step"],
            metrics=dict(state.get("metrics", {})),
            best_epoch=best.get("epoch", 0),
            best_val_loss=best.get("val_loss", math.inf),
        )

    def losses(self, batch: torch.Tensor | list[torch.Tensor], *, step: int) -> LossParts:
        """The losses of one training batch (series, or series and their padding masks), with the masks of ``step``."""
        runtime = self.runtime
        x, observed = split_batch(batch)
        series = to_series(x.to(runtime.device, non_blocking=True), self.inputs.channel_independent)
        real = self._series_observed(observed, x.shape[2])
        mask = draw_masks(
            self.config,
            series,
            seed=_step_seed(self.config, step),
            rank=runtime.rank,
            world_size=runtime.world_size,
            observed=real,
        )
        out = self.model(series, mask, self.gather, observed=real)
        return {"loss": out.loss, "reconstruction": out.reconstruction, "constraint": out.constraint}

    def _series_observed(self, observed: torch.Tensor | None, channels: int) -> torch.Tensor | None:
        """A batch's padding mask ``(B, L)`` as the model's series see it: ``(B * C, L)`` when channel-independent."""
        if observed is None:
            return None
        observed = observed.to(self.runtime.device)
        return observed.repeat_interleave(channels, dim=0) if self.inputs.channel_independent else observed

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Pre-training losses on the validation split, with the same masks every epoch (one read from the device)."""
        config, runtime = self.config, self.runtime
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss, reconstruction, constraint
        batches = 0
        for i, batch in enumerate(self.val_loader):
            if config.pretrain.val_batches is not None and i >= config.pretrain.val_batches:
                break
            x, observed = split_batch(batch)
            series = to_series(x.to(runtime.device), self.inputs.channel_independent)
            real = self._series_observed(observed, x.shape[2])
            mask = draw_masks(
                config, series, seed=VAL_MASK_SEED - i, rank=runtime.rank, world_size=runtime.world_size, observed=real
            )
            with autocast(config.precision, runtime.device):
                out = self.model(series, mask, self.gather, observed=real)
            sums += torch.stack([out.loss, out.reconstruction, out.constraint]).double()
            batches += 1
        means = (sums / batches).tolist() if batches else [math.nan] * 3
        return {k: runtime.all_reduce_mean(v) for k, v in zip(("loss", "reconstruction", "constraint"), means)}


def _lr_schedule(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, total_steps: float) -> LambdaLR:
    """Cosine decay over the run's steps (or a constant lr), stepped after every optimiser step.

    A plain function (not saved in the scheduler's state), so a resumed run with a larger budget follows the new
    cosine length instead of climbing back up after the old one.
    """
    horizon = max(1, int(total_steps))
    if cfg.scheduler == "none":
        return LambdaLR(optimizer, lambda _: 1.0)
    return LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon)))


def _prefixed(prefix: str, values: dict[str, float], runtime: Runtime | None = None) -> dict[str, float]:
    """``values`` under ``prefix``; averaged over workers when ``runtime`` is given."""
    return {prefix + k: runtime.all_reduce_mean(v) if runtime else v for k, v in values.items()}


def _save_epoch(at: _Position, training: _Training, run_path: Path | None) -> dict[str, Any] | None:
    """Write ``last.pt``, and ``best.pt`` for a new lowest validation loss (ties go to the later epoch, as in the
    official code); return the state on the main worker, None elsewhere. Every worker calls it."""
    if at.best_epoch == 0 or at.metrics["val_loss"] <= at.best_val_loss:
        at.best_epoch, at.best_val_loss = at.epoch, at.metrics["val_loss"]
    rng = rng_states(training.runtime)  # a collective: every worker takes part
    if not training.runtime.is_main:
        return None
    state = {
        "kind": PRETRAIN_KIND,
        "model": training.core.state_dict(),
        "epoch": at.epoch,
        "step": at.step,
        "metrics": at.metrics,
        "config": training.config.run_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "rng": rng,
        "best": {"epoch": at.best_epoch, "val_loss": at.best_val_loss},
    }
    if run_path is not None:
        save_pretrain_checkpoints(state, run_path)
    return state


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
