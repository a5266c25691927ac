"""Data-parallel SimMTM pre-training on Ray Train (``simmtm pretrain --workers N``).

The pre-training loop runs unchanged (``simmtm.train.pretraining.run``) inside every worker of a
``ray.train.torch.TorchTrainer``; what differs comes in through a ``DistributedRuntime`` and a ``RayReport``:

* the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU) on ``ray.train.torch.get_device()``;
* loaders are sharded by a ``GlobalBatchSampler`` (a ``DistributedSampler`` passed through Ray's
  ``prepare_data_loader``): global batch k of an epoch is a fixed block of a seeded permutation and rank r takes
  the r-th slice of it, so the concatenation of the workers' batches in rank order is that global batch;
* faithful SimMTM under data parallelism (``pretrain.gather``, on by default with N > 1): point-wise
  representations and normalisation statistics are all-gathered with gradients (``all_gather_with_grad``), so
  similarity, constraint loss and aggregation see the global batch on every rank, as on one device. Every rank then
  computes the same global loss; the gather's backward sums the ranks' gradients for each local slice (W times the
  single-process gradient of the local encoder output) and DDP's average over W ranks turns that into exactly the
  single-process gradient;
* every rank reports its metrics through ``ray.train.report`` after each epoch; rank 0 attaches the checkpoint,
  which Ray persists under ``storage/name`` (a local directory, or a shared ``s3://``/``gs://``/NFS path on a
  cluster). A restarted worker group (``FailureConfig(max_failures)``) or a re-run with the same run name resumes
  from ``ray.train.get_checkpoint()``.

The driver (``pretrain_distributed``) also keeps the ``--out`` directory of an in-process run current: a callback
on the Train controller (which Ray places on the driver's node) copies each checkpoint to
``checkpoints/last.pt`` and appends the epoch to ``history.jsonl`` and TensorBoard, so ``simmtm finetune --from
OUT`` works the same after a distributed run. Per-step TensorBoard scalars are not written by distributed runs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from simmtm.cluster.ray_session import alive_nodes, check_resources, connect, disconnect
from simmtm.cluster.resources import PLACEMENT_STRATEGIES, Scaling, describe_nodes
from simmtm.config.schema import RunConfig, dump_config
from simmtm.data.registry import worker_env
from simmtm.errors import ConfigError, UserError
from simmtm.outdir.process_record import RECORD_FILE, stop_recorded
from simmtm.train import pretraining
from simmtm.train.checkpoint import ray_checkpoint_state
from simmtm.train.history import write_json
from simmtm.train.reporting import EpochHook, RayReport, RunDirCallback, train_checkpoint_state
from simmtm.train.runtime import Runtime

__all__ = [
    "all_gather_with_grad",
    "GlobalBatchSampler",
    "DistributedRuntime",
    "RayReport",
    "EpochHook",
    "train_worker",
    "Scaling",
    "pretrain_distributed",
    "run_name",
    "default_storage",
    "resolve_storage",
    "clear_run",
    "PLACEMENT_STRATEGIES",
]

log = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "pretrain"  # inside the default storage OUT/ray: fixed, so the same --out resumes


# --- the all-gather with gradients -------------------------------------------------------------------------


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized tensors of all ranks along dim 0, in rank order.

    Backward: every rank holds a gradient for the *whole* gathered tensor; the gradient of rank r's part is the sum
    of those gradients' r-th slices over ranks (all_reduce(SUM), then slice), which works on any backend.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.group, ctx.rank, ctx.rows = group, rank, tensor.shape[0]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor, group=group)
        return torch.cat(parts)  # (world * rows, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # one copy, contiguous for the collective
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def all_gather_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``(n, ...)`` on each of W ranks -> ``(W * n, ...)`` on every rank, gradients flowing back to the local part.

    Every rank must pass the same shape (the samplers here give every rank equal batches).
    """
    return _AllGather.apply(tensor, group)


# --- sharding the data -------------------------------------------------------------------------------------


class GlobalBatchSampler(DistributedSampler):
    """Rank r's share of each global batch: global batch k of an epoch is block k of a permutation of the data set
    (seeded by ``seed + epoch``; the identity without shuffling), of ``batch_size * num_replicas`` indices, and
    rank r takes its r-th slice of ``batch_size``. Incomplete global batches are dropped.

    So the workers' batches, concatenated in rank order (what ``all_gather_with_grad`` produces), are exactly
    ``global_batches(epoch)[k]``: the samples one process would see with the global batch size.
    """

    def __init__(
        self, dataset, *, num_replicas: int, rank: int, batch_size: int, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.num_batches = len(dataset) // (batch_size * num_replicas)
        self.num_samples = self.num_batches * batch_size
        self.total_size = self.num_samples * num_replicas

    def global_batches(self, epoch: int | None = None) -> torch.Tensor:
        """``(num_batches, num_replicas * batch_size)`` dataset indices of each global batch of ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)  # type: ignore[arg-type]  # a map-style dataset: it has a length
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        return order[: self.total_size].view(self.num_batches, self.num_replicas * self.batch_size)

    def __iter__(self) -> Iterator[int]:
        blocks = self.global_batches().view(self.num_batches, self.num_replicas, self.batch_size)
        return iter(blocks[:, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return self.num_samples


# --- the runtime of one Ray Train worker -------------------------------------------------------------------


class DistributedRuntime(Runtime):
    """The hooks of ``simmtm.train.runtime.Runtime`` for one Ray Train worker (build it inside the train function)."""

    def __init__(self, *, device: torch.device, rank: int, world_size: int, sync_batchnorm: bool = False) -> None:
        super().__init__(device=device, rank=rank, world_size=world_size)
        self.sync_batchnorm = sync_batchnorm
        # A group of its own for the gathers, so they never interleave with DDP's gradient all-reduces.
        self._group = dist.new_group() if world_size > 1 else None

    @classmethod
    def from_context(cls, *, sync_batchnorm: bool = False) -> DistributedRuntime:
        """The runtime of the calling Ray Train worker (rank and world size from ``ray.train.get_context()``)."""
        context = ray.train.get_context()
        return cls(
            device=ray.train.torch.get_device(),
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            sync_batchnorm=sync_batchnorm,
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """DDP on the worker's device. With ``sync_batchnorm`` on CUDA, the encoder's BatchNorm layers (if any)
        normalise over the global batch (SyncBatchNorm has no CPU kernel: on CPU they see the local batch)."""
        encoder = getattr(model, "encoder", None)
        if self.sync_batchnorm and self.world_size > 1 and encoder is not None and _has_batchnorm(encoder):
            if self.device.type == "cuda":
                model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
            elif self.is_main:
                log.warning("the encoder's BatchNorm statistics are per worker on CPU (SyncBatchNorm needs CUDA)")
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Shard with a ``GlobalBatchSampler`` (seeded by the loader's generator), then let Ray move batches."""
        if self.world_size > 1 and not isinstance(loader.sampler, DistributedSampler):
            seed = loader.generator.initial_seed() if loader.generator is not None else 0
            assert loader.batch_size is not None  # our loaders batch by size, not by a batch sampler
            sampler = GlobalBatchSampler(
                loader.dataset,
                num_replicas=self.world_size,
                rank=self.rank,
                batch_size=loader.batch_size,
                shuffle=isinstance(loader.sampler, RandomSampler),
                seed=seed,
            )
            loader = DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
                pin_memory=loader.pin_memory,
            )
        return ray.train.torch.prepare_data_loader(loader)

    def gather(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.world_size == 1:
            return None
        return functools.partial(all_gather_with_grad, group=self._group)

    def all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in module.modules())


# --- the per-worker function ------------------------------------------------------------------------------


def train_worker(loop_config: dict[str, Any]) -> dict[str, float]:
    """The per-worker function of the TorchTrainer: ``simmtm.train.pretraining.run`` with the Ray runtime and report.

    ``loop_config``: ``config`` (a RunConfig as plain data), ``threads`` (torch threads per worker), ``cwd`` (the
    driver's working directory, entered when it exists on this node, so relative data paths resolve as there),
    ``initial_state`` (a state to start from when Ray holds no newer checkpoint) and ``after_epoch`` (an EpochHook).
    """
    config = RunConfig.model_validate(loop_config["config"])
    config.threads = loop_config.get("threads") or config.threads
    cwd = loop_config.get("cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    runtime = DistributedRuntime.from_context(sync_batchnorm=config.pretrain.gather is not False)
    resume = loop_config.get("initial_state")
    state = train_checkpoint_state()
    if state is not None and (resume is None or state["step"] >= resume["step"]):
        resume = state
    return pretraining.run(config, RayReport(runtime, loop_config.get("after_epoch")), runtime=runtime, resume=resume)


# --- the driver --------------------------------------------------------------------------------------------


def default_storage(out: str | Path) -> str:
    """Where Ray keeps checkpoints unless told otherwise: ``OUT/ray``."""
    return str(Path(out).resolve() / "ray")


def resolve_storage(out: str | Path, storage: str | None) -> str:
    """``storage`` as Ray takes it: a URI unchanged, a local path made absolute; None gives ``default_storage``."""
    if storage is None:
        return default_storage(out)
    return storage if "://" in storage else str(Path(storage).resolve())


def run_name(out: str | Path, storage: str | None) -> str:
    """The Ray Train run name: fixed for the default storage; in a shared storage, derived from the --out path so
    that the same --out resumes its own run and different --out directories do not collide."""
    if resolve_storage(out, storage) == default_storage(out):
        return DEFAULT_RUN_NAME
    resolved = str(Path(out).resolve())
    return f"pretrain-{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def clear_run(storage: str, name: str) -> None:
    """Delete the run ``name`` in ``storage`` (a local path or a pyarrow URI such as ``s3://``), if present."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(resolve_storage(".", storage))
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)
        log.info("removed the earlier Ray Train run %s/%s", storage, name)


def _check_resources(scaling: Scaling, *, address: str | None) -> None:
    """UserError when a local Ray can never hold the workers; a joined cluster may grow, so the run waits."""
    try:
        check_resources(scaling, address=address)
    except ConfigError:
        need = f"{scaling.per_worker()}, the cluster has {describe_nodes(alive_nodes())}"
        if address is None:
            raise UserError(
                f"--workers {scaling.workers} needs {need}; lower --workers or --cpus-per-worker/--gpus-per-worker"
            ) from None
        log.warning("--workers %d needs %s: the run waits until the cluster provides them", scaling.workers, need)


def pretrain_distributed(
    config: RunConfig,
    *,
    out: str | Path,
    scaling: Scaling,
    address: str | None = None,
    storage: str | None = None,
    max_failures: int = 2,
    resume: dict[str, Any] | None = None,
    after_epoch: EpochHook | None = None,
) -> dict[str, float]:
    """Pre-train with ``scaling.workers`` Ray Train workers; return the last epoch's metrics.

    ``out`` (on the driver) receives ``config.yaml``, ``checkpoints/last.pt`` and ``history.jsonl`` after every
    epoch, and ``metrics.json`` at the end. Ray's checkpoints go to ``storage`` (default ``OUT/ray``; on a multi-node
    cluster a path every node shares) under ``run_name(out, storage)``: calling this again with the same ``out``
    and ``storage`` resumes from the latest of them. ``resume`` is a state to start from when Ray holds no newer
    checkpoint (for example one of an earlier in-process run in ``out``). Deciding between resuming and starting
    afresh (``--overwrite``) is the caller's job (``simmtm.outdir.rundir``).
    """
    scaling.check(config)
    out = Path(out).resolve()
    storage = resolve_storage(out, storage)
    name = run_name(out, storage)
    record = out / RECORD_FILE  # the local Ray it starts is stopped with it, even after a kill -9 (process_record)
    stop_recorded(record)
    connected = connect(address, record=record)
    try:
        _check_resources(scaling, address=address)
        out.mkdir(parents=True, exist_ok=True)
        dump_config(config, out / "config.yaml")
        trainer = _trainer(
            config,
            out=out,
            scaling=scaling,
            name=name,
            storage=storage,
            max_failures=max_failures,
            resume=resume,
            after_epoch=after_epoch,
        )
        log.info("pre-training on %d Ray Train worker(s); checkpoints in %s/%s", scaling.workers, storage, name)
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError:
            log.error("the distributed run failed; re-running the same command resumes from its last checkpoint")
            raise
    finally:
        if connected:
            disconnect(record=record)
    metrics = _last_metrics(result)
    write_json(out / "metrics.json", metrics)
    return metrics


def _trainer(
    config: RunConfig,
    *,
    out: Path,
    scaling: Scaling,
    name: str,
    storage: str,
    max_failures: int,
    resume: dict[str, Any] | None,
    after_epoch: EpochHook | None,
) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer of ``train_worker`` on ``scaling``'s workers: Ray's checkpoints in ``storage/name``, each
    one copied into ``out`` by the driver's ``RunDirCallback``."""
    env = worker_env()
    return ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.run_dict(),
            "threads": max(1, int(scaling.cpus_per_worker)),
            "cwd": os.getcwd(),
            "initial_state": resume,
            "after_epoch": after_epoch,
        },
        scaling_config=scaling.scaling_config(),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[RunDirCallback(str(out))],
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def _last_metrics(result: ray.train.Result) -> dict[str, float]:
    """The last epoch's metrics: what rank 0 returned, else what its last checkpoint holds."""
    metrics = result.return_value
    if metrics is None and result.checkpoint is not None:
        metrics = ray_checkpoint_state(result.checkpoint).get("metrics", {})
    return dict(metrics or {})
