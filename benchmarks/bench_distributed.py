"""Pre-training throughput (samples/s): in process, and data-parallel on N Ray Train workers.

Every mode runs the real loop (``simmtm.train.pretraining.run``; under Ray through ``simmtm.cluster.distributed``) for a few short
epochs. The time is taken on the main worker at the end of each epoch; the first epoch (start-up, warm-up) is left
out, so a figure is ``(step_last - step_first) * global_batch / (t_last - t_first)``: training steps plus one
validation batch and the checkpoint of each epoch, without Ray's start-up. A sample is one window of
``data.seq_len`` time points (all its channels); ``pretrain.batch_size`` is the global batch.

    python benchmarks/bench_distributed.py --config sweeps/quick.yaml --modes local:2 local:1 ray:1:2 ray:1:1 ray:2:1

Modes: ``local[:T]``: in process, no Ray, T torch threads (default: the config's ``threads``); ``ray:N[:T]``: N Ray
Train workers with T CPUs (= torch threads) each (default ``--cpus`` / N), and ``--gpus-per-worker`` GPUs each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simmtm.config.schema import RunConfig, load_config

log = logging.getLogger("bench_distributed")


def sized_config(config: RunConfig, *, steps_per_epoch: int, epochs: int, batch_size: int | None = None) -> RunConfig:
    """``config`` with short epochs: a training stride that gives about ``steps_per_epoch`` global batches."""
    from simmtm.data.inputs import load_inputs

    config = config.model_copy(deep=True)
    if batch_size is not None:
        config.pretrain.batch_size = batch_size
    config.data.stride = 1
    windows = len(load_inputs(config).train)
    config.data.stride = max(1, windows // (steps_per_epoch * config.pretrain.batch_size))
    config.pretrain.epochs = epochs
    config.pretrain.max_steps = None
    config.pretrain.val_batches = 1
    return config


def samples_per_s(marks: list[tuple[float, int]], batch_size: int) -> float:
    """Throughput between the first and the last epoch end: ``marks`` are (time, global step) per epoch."""
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) * batch_size / (t1 - t0)


def measure_local(config: RunConfig, *, threads: int | None = None) -> dict[str, Any]:
    import torch

    from simmtm.train import pretraining as pretrain

    if threads is not None:
        config = config.model_copy(deep=True)
        config.threads = threads

    marks: list[tuple[float, int]] = []

    def report(metrics: Mapping[str, float], state: dict[str, Any] | None = None) -> None:
        marks.append((time.perf_counter(), int(metrics["step"])))

    pretrain.run(config, report)
    return {"mode": f"local:{torch.get_num_threads()}", "workers": 1, "threads": torch.get_num_threads(),
            "batch_size": config.pretrain.batch_size, "steps": marks[-1][1] - marks[0][1],
            "samples_per_s": samples_per_s(marks, config.pretrain.batch_size)}


class _EpochClock:
    """After-epoch hook (on every worker): rank 0 appends ``time step`` to a file on this machine."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, metrics: Mapping[str, Any], runtime: Any) -> None:
        if runtime.rank == 0:
            with open(self.path, "a") as f:
                f.write(f"{time.perf_counter()} {int(metrics['step'])}\n")


def measure_ray(config: RunConfig, *, workers: int, cpus: float, gpus_per_worker: float = 0.0) -> dict[str, Any]:
    """``workers`` Ray Train workers sharing ``cpus`` CPUs (each worker's torch threads: its share)."""
    from simmtm.cluster.distributed import Scaling, pretrain_distributed

    cpus_per_worker = max(1.0, float(int(cpus // workers)))
    with tempfile.TemporaryDirectory(prefix="simmtm-bench-") as tmp:
        clock = Path(tmp) / "epochs.txt"
        scaling = Scaling(workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
        pretrain_distributed(config, out=Path(tmp) / "out", scaling=scaling, max_failures=0, after_epoch=_EpochClock(str(clock)))
        marks = [(float(t), int(s)) for t, s in (line.split() for line in clock.read_text().splitlines())]
    return {"mode": f"ray:{workers}:{int(cpus_per_worker)}", "workers": workers, "threads": int(cpus_per_worker), "gpus_per_worker": gpus_per_worker,
            "batch_size": config.pretrain.batch_size, "steps": marks[-1][1] - marks[0][1],
            "samples_per_s": samples_per_s(marks, config.pretrain.batch_size)}


def machine() -> dict[str, Any]:
    import torch

    info = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


def run_modes(config: RunConfig, modes: list[str], *, cpus: float, gpus_per_worker: float = 0.0) -> list[dict[str, Any]]:
    import ray

    rows = []
    try:
        for mode in modes:
            kind, *numbers = mode.split(":")
            try:
                numbers = [int(n) for n in numbers]
            except ValueError:
                numbers = [-1]
            if kind == "local" and len(numbers) <= 1 and min(numbers, default=1) >= 1:
                rows.append(measure_local(config, threads=numbers[0] if numbers else None))
            elif kind == "ray" and len(numbers) in (1, 2) and min(numbers) >= 1:
                if not ray.is_initialized():
                    ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
                workers = numbers[0]
                share = numbers[1] * workers if len(numbers) == 2 else cpus
                rows.append(measure_ray(config, workers=workers, cpus=share, gpus_per_worker=gpus_per_worker))
            else:
                raise SystemExit(f"--modes: '{mode}' is not local[:THREADS] or ray:WORKERS[:THREADS]")
            log.info("%s: %.1f samples/s", mode, rows[-1]["samples_per_s"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':<10}{'workers':>8}{'threads':>8}{'batch':>7}{'steps':>7}{'samples/s':>11}"]
    for r in rows:
        lines.append(f"{r['mode']:<10}{r['workers']:>8}{r['threads']:>8}{r['batch_size']:>7}{r['steps']:>7}{r['samples_per_s']:>11.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("sweeps/quick.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--modes", nargs="+", default=["local:2", "local:1", "ray:1:2", "ray:1:1", "ray:2:1"])
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not timed")
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="CPUs the Ray workers share")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    config = sized_config(load_config(args.config, args.overrides), steps_per_epoch=args.steps_per_epoch, epochs=args.epochs)
    rows = run_modes(config, args.modes, cpus=args.cpus, gpus_per_worker=args.gpus_per_worker)
    info = machine()
    print(f"{args.config} (stride {config.data.stride}, global batch {config.pretrain.batch_size}), "
          f"{info['cpus']} CPUs, torch {info['torch']}, commit {info['commit']}, {info['date']}")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "config": str(args.config), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
