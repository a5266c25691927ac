"""Where a pre-training step's time goes: torch.profiler over the real training loop (``simmtm.train.pretraining.run``).

    python benchmarks/gpu_profile.py --out runs/gpu/profile                       # the paper's ETTh1 config, GPU if any
    python benchmarks/gpu_profile.py --config sweeps/quick.yaml --set device=cpu --steps 3 --out /tmp/p   # CPU check

The loop runs unchanged (data loader, masks, the finite check, ``.item()`` on the loss parts, the optimiser); a
global optimiser-step hook advances the profiler's schedule, so ``--wait`` steps run untimed, ``--warmup`` steps
warm the profiler, and ``--steps`` steps are recorded. Printed (and written to OUT/profile.md, OUT/profile.json):

* the step time (mean of the recorded ``ProfilerStep`` spans);
* top kernels: the operators/kernels with the most self time on the device (CUDA) or the host (CPU), per step;
* host synchronisations per step: ``cudaStreamSynchronize``/``cudaDeviceSynchronize``/``cudaEventSynchronize``
  calls and ``aten::_local_scalar_dense`` (``.item()``, ``bool(tensor)``: each one waits for the GPU);
* kernel launches per step (``cudaLaunchKernel`` and kin) and host-to-device/device-to-host copies per step.

OUT/trace.json is the Chrome trace (chrome://tracing, Perfetto). ``benchmarks/gpu.sh`` runs this as its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")
COPY_EVENTS = ("cudaMemcpyAsync", "cudaMemcpy")


def profile(config, *, wait: int, warmup: int, steps: int, out: Path, top: int) -> dict:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, schedule

    from simmtm.train import pretraining as pretrain
    from simmtm.train.runtime import pick_device

    config = config.model_copy(deep=True)
    config.pretrain.max_steps = wait + warmup + steps
    config.pretrain.epochs = max(config.pretrain.epochs, 10_000)  # max_steps ends the run, not the epoch count
    config.pretrain.val_batches = 1
    cuda = pick_device(config.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=steps),
                                  record_shapes=False)
    handle = register_optimizer_step_post_hook(lambda *_: prof.step())
    start = time.perf_counter()
    try:
        with prof:
            pretrain.run(config)
    finally:
        handle.remove()
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / "trace.json"))
    return summarise(prof, steps=steps, cuda=cuda, top=top, wall=wall, config=config)


def summarise(prof, *, steps: int, cuda: bool, top: int, wall: float, config) -> dict:
    events = prof.events()
    step_spans = [e.time_range.elapsed_us() for e in events if e.name.startswith("ProfilerStep")]
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        counts[e.name] += 1
    averages = prof.key_averages()

    def self_us(a) -> float:
        return a.self_device_time_total if cuda else a.self_cpu_time_total

    rows = sorted((a for a in averages if self_us(a) > 0 and not a.key.startswith("ProfilerStep")), key=self_us, reverse=True)
    total = sum(self_us(a) for a in rows) or 1.0
    kernels = [{"name": a.key, "calls_per_step": a.count / steps, "ms_per_step": self_us(a) / 1e3 / steps,
                "share": self_us(a) / total} for a in rows[:top]]
    return {
        "device": "cuda" if cuda else "cpu",
        "config": {"seq_len": config.data.seq_len, "batch_size": config.pretrain.batch_size, "d_model": config.model.d_model,
                   "n_heads": config.model.n_heads, "n_layers": config.model.n_layers, "num_masked": config.pretrain.num_masked},
        "steps": steps,
        "step_ms": sum(step_spans) / len(step_spans) / 1e3 if step_spans else None,
        "wall_s": wall,
        "time_kind": "self device time" if cuda else "self host time",
        "top": kernels,
        "syncs_per_step": {name: counts[name] / steps for name in SYNC_EVENTS if counts[name]},
        "launches_per_step": sum(counts[name] for name in LAUNCH_EVENTS) / steps,
        "copies_per_step": sum(counts[name] for name in COPY_EVENTS) / steps,
        "ops_per_step": sum(a.count for a in averages if a.key.startswith("aten::")) / steps,
    }


def markdown(s: dict) -> str:
    c = s["config"]
    step = f"{s['step_ms']:.1f} ms" if s["step_ms"] is not None else "n/a"
    lines = [
        (f"Profile on {s['device']}: L={c['seq_len']}, batch {c['batch_size']}, d_model {c['d_model']}, {c['n_heads']} heads, "
         f"{c['n_layers']} layers, M={c['num_masked']}; {s['steps']} recorded steps; step {step}; whole run {s['wall_s']:.1f} s"),
        "",
        f"| kernel / operator ({s['time_kind']}) | calls/step | ms/step | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| `{k['name'][:90]}` | {k['calls_per_step']:.1f} | {k['ms_per_step']:.3f} | {100 * k['share']:.1f} % |" for k in s["top"]]
    syncs = ", ".join(f"{name} {n:.1f}" for name, n in s["syncs_per_step"].items()) or "none"
    lines += ["", f"Host synchronisations per step: {syncs}.",
              (f"Kernel launches per step: {s['launches_per_step']:.0f}; memcpy calls per step: {s['copies_per_step']:.1f}; "
               f"aten operators per step: {s['ops_per_step']:.0f}.")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("sweeps/etth1.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--wait", type=int, default=3, help="steps before the profiler starts (warm-up of the loop)")
    parser.add_argument("--warmup", type=int, default=2, help="profiler warm-up steps (not recorded)")
    parser.add_argument("--steps", type=int, default=10, help="recorded steps")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu/profile"))
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    from simmtm.config.schema import load_config

    overrides = list(args.set)
    if not any(o.startswith("device=") for o in overrides):
        import torch

        overrides.append(f"device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    config = load_config(args.config, overrides)
    summary = profile(config, wait=args.wait, warmup=args.warmup, steps=args.steps, out=args.out, top=args.top)
    text = markdown(summary)
    (args.out / "profile.json").write_text(json.dumps(summary, indent=2))
    (args.out / "profile.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
