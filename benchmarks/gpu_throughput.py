"""Pre-training throughput on GPUs at the paper's ETTh1 config (L=336, d_model 32, 3 layers, 16 heads, d_ff 64,
M=3, batch 16): one GPU in process, then all GPUs of the machine as Ray Train workers (one GPU each).

    python benchmarks/gpu_throughput.py --json runs/gpu/throughput.json

Three figures (samples/s, measured as in ``bench_distributed.py``: short epochs, the first one not timed):
``1 GPU`` in process at batch 16; ``N GPUs, global 16`` (the paper's batch split over N workers: strong scaling,
where N divides 16); ``N GPUs, 16 each`` (global batch 16 * N: weak scaling). ``benchmarks/gpu.sh`` runs this.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distributed import machine, measure_local, measure_ray, sized_config  # noqa: E402

from simmtm.config.schema import load_config  # noqa: E402

log = logging.getLogger("gpu_throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("sweeps/etth1.yaml"))
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not timed")
    parser.add_argument("--phases", nargs="+", default=["single", "strong", "weak"], choices=("single", "strong", "weak"))
    parser.add_argument("--json", type=Path, help="write the figures here (updated after each phase)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check this script on a machine without GPUs: one CPU worker stands in for each 'GPU'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    try:
        import ray
    except ImportError:  # in-process figure only (e.g. a GPU image without Ray)
        ray = None

    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("gpu_throughput: torch sees no CUDA device (is the CUDA build of torch installed?)")
    gpus = torch.cuda.device_count() if not args.cpu_smoke else 1
    gpus_per_worker = 0 if args.cpu_smoke else 1
    base = load_config(args.config)
    base.device = "cpu" if args.cpu_smoke else "auto"
    report = {"machine": machine(), "config": str(args.config), "gpus": gpus, "rows": []}

    def record(label: str, row: dict) -> None:
        row = {"label": label, **row}
        report["rows"].append(row)
        print(f"{label:<22} workers {row['workers']}  global batch {row['batch_size']:>4}  steps {row['steps']:>4}  "
              f"{row['samples_per_s']:10.1f} samples/s", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    cpus = float(os.cpu_count() or 1)
    ray_cpus = max(1.0, min(8.0, cpus // gpus))  # CPUs (torch threads) per GPU worker

    def ray_up() -> bool:
        if ray is None:
            print("Ray is not installed here: the Ray Train rows are skipped", flush=True)
            return False
        if not ray.is_initialized():
            ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
        return True

    try:
        paper_batch = sized_config(base, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, batch_size=16)
        if "single" in args.phases:
            record("1 GPU (in process)", measure_local(paper_batch, threads=int(ray_cpus)))
        if "strong" in args.phases:
            if 16 % gpus:
                print(f"{gpus} GPUs do not divide the global batch 16: strong-scaling figure skipped", flush=True)
            elif ray_up():
                record(f"{gpus} GPU(s), global 16", measure_ray(paper_batch, workers=gpus, cpus=ray_cpus * gpus, gpus_per_worker=gpus_per_worker))
        if "weak" in args.phases and gpus > 1:  # with one GPU this is the strong-scaling run again
            config = sized_config(base, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, batch_size=16 * gpus)
            if ray_up():
                record(f"{gpus} GPUs, 16 each", measure_ray(config, workers=gpus, cpus=ray_cpus * gpus, gpus_per_worker=gpus_per_worker))
    finally:
        if ray is not None and ray.is_initialized():
            ray.shutdown()

if __name__ == "__main__":
    main()
