"""Pre-training speed and memory: samples/s and peak resident memory of SimMTM training steps.

Each configuration runs in a fresh subprocess so that its peak RSS is its own. A "sample" is one window of
``L x C`` (C = 7 for ETTh1); a step is forward + backward + Adam on one batch with M masked copies.

    python benchmarks/bench_pretrain.py                      # the paper's ETTh1 configuration, batch 16, 2 threads
    python benchmarks/bench_pretrain.py --grid               # also sequence lengths, batch sizes and encoders
    python benchmarks/bench_pretrain.py --device cuda        # on a GPU (peak memory = torch.cuda.max_memory_allocated)
    python benchmarks/bench_pretrain.py --device cuda --no-head-pad   # GPU, heads of size 2 left to the math kernel
    python benchmarks/bench_pretrain.py --json out.json      # keep the figures
    python benchmarks/bench_pretrain.py --projector lean     # the lean projector instead of the official widths
    python benchmarks/bench_pretrain.py --attention sdpa     # only torch's attention kernel (default: both, A/B)
    python benchmarks/bench_pretrain.py --return-freed-memory false   # glibc's default malloc (the product: auto)
    python benchmarks/bench_pretrain.py --set attention_dropout=0.1   # the official attention dropout (pre-training)

Rows run the official projector (Linear(L*D -> L*D/2), BatchNorm, ReLU, Linear(-> 128), Dropout 0.1) unless
``--projector lean``: through ``model.projector: official`` where the config has that key, else the benchmark
builds the same module itself (marked "official*" in the table). Each configuration runs once per attention kernel
(``--attention both``): torch's ``scaled_dot_product_attention`` (sdpa) and simmtm's dispatch (auto: the small-head
kernel for heads below 8 on the CPU), one after the other in the same invocation.

Every row also prints the roofline: the FLOPs of one step (torch's FlopCounterMode over forward + backward, with the
attention's matrix products counted by hand: 4*P*T*T*hs forward and 8*P*T*T*hs backward for P = N*heads problems,
since the counter cannot see inside the small-head kernel; the exponentials are not counted), the achieved FLOP/s,
and its share of the machine's peak, both the nominal peak (cores x GHz x FLOP/cycle from /proc/cpuinfo: 2 FMA units
x vector lanes x 2 is assumed) and a measured one (a 2048^3 float32 matmul on the same threads, in the same process).

The step is the product's (``simmtm.train.shared.Loop``): gradients set to None before the forward pass, then forward,
backward, Adam. ``--return-freed-memory`` is the run config's key of that name, applied as a run applies it
(``simmtm.method.memory.apply_malloc_setting``): ``auto`` (default, as in the product) fixes glibc's mmap threshold at 4 MiB on
the CPU, so that peak RSS is what the step's tensors need, not that plus the heap fragmentation of earlier steps, at
the price of page faults on every step (system CPU time; docs/benchmarks.md, "Peak memory"); ``false`` leaves glibc's
default, ``true`` forces it. The "malloc" column says which ran.

The official implementation's figures on this kind of machine (2 CPU threads; ../shared/REFERENCE.md section 3)
are printed beside ours as the reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

PAPER = {"seq_len": 336, "channels": 7, "d_model": 32, "n_layers": 3, "n_heads": 16, "d_ff": 64, "num_masked": 3,
         "batch": 16, "encoder": "transformer", "projector": "official", "attention": "auto"}
OFFICIAL_CPU = [  # REFERENCE.md section 3: the official code, ETTh1 paper config, 2 threads
    {"batch": 2, "samples_per_s": 0.17, "peak_rss_gb": 5.7},
    {"batch": 4, "samples_per_s": 0.14, "peak_rss_gb": 9.8},
    {"batch": 16, "samples_per_s": None, "peak_rss_gb": ">24 (killed, out of memory)"},
]


def machine_peak(threads: int) -> dict:
    """Nominal float32 peak from /proc/cpuinfo: threads x GHz x FLOP/cycle (2 FMA units x lanes x 2 FLOP an FMA)."""
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags") and not flags:
                    flags = line
                elif line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    lanes, isa = (16, "AVX-512") if " avx512f" in flags else (8, "AVX2") if " avx2" in flags else (4, "SSE")
    flop_per_cycle = 2 * lanes * 2 if " fma" in flags or lanes == 16 else lanes * 2
    peak = threads * mhz / 1000 * flop_per_cycle * 1e9
    return {"nominal_flops": peak, "nominal_how": f"{threads} cores x {mhz / 1000:.2f} GHz x {flop_per_cycle} FLOP/cycle ({isa} FMA, 2 units)"}


def measured_gemm_peak(size: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a size^3 float32 matmul on the current threads (best of ``reps``)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def official_projector(tokens: int, d_model: int, dim: int = 128, dropout: float = 0.1):
    """The official Pooler_Head, for configs without ``model.projector``: Flatten, Linear(T*D -> T*D/2),
    BatchNorm1d, ReLU, Linear(-> 128), Dropout(head_dropout)."""
    from torch import nn

    hidden = tokens * d_model // 2
    return nn.Sequential(nn.Flatten(1), nn.Linear(tokens * d_model, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


def step_flops(step, attention_calls: list) -> dict:
    """FLOPs of one training step: torch's counter, with attention replaced by its hand count (see module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    attention_calls.clear()
    with FlopCounterMode(display=False) as counter:
        step()
    counted = counter.get_total_flops()
    by_op = counter.get_flop_counts().get("Global", {})
    counted_attention = sum(f for op, f in by_op.items() if "scaled_dot_product" in str(op))
    by_hand = sum(12 * math.prod(shape) * shape[-2] for shape in attention_calls)  # 4 fwd + 8 bwd: 12 P T T hs
    return {"flops": counted - counted_attention + by_hand, "attention_flops": by_hand}


def measure(cfg: dict, *, steps: int, warmup: int, threads: int, device: str) -> dict:
    """Run in this process: time `steps` training steps after `warmup`, return figures."""
    import torch

    from simmtm.config import schema as config
    from simmtm.config.schema import ModelConfig, PretrainConfig
    from simmtm.method import attention, encoders
    from simmtm.method.encoders import build_encoder
    from simmtm.method.masking import geometric_mask
    from simmtm.method.memory import apply_malloc_setting
    from simmtm.method.model import SimMTM, to_series
    from simmtm.train.shared import apply_denormal_setting

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    attention.PAD_HEADS = cfg.get("pad_heads", True)
    attention.KERNEL = cfg.get("attention", "auto")
    dev = torch.device(device)
    returns_freed = apply_malloc_setting(cfg.get("return_freed_memory", "auto"), dev)
    apply_denormal_setting(cfg.get("flush_denormal", "auto"), dev)  # as a run does (train.shared.set_up)
    projector = cfg.get("projector", "lean")
    native = "projector" in config.ModelConfig.model_fields  # the faithful config has model.projector
    extra = {"projector": projector, "head_dropout": 0.1 if projector == "official" else 0.0} if native else {}
    model_cfg = ModelConfig(encoder=cfg["encoder"], d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                            d_ff=cfg["d_ff"], attention_dropout=cfg.get("attention_dropout", 0.0), **extra)
    pre_cfg = PretrainConfig(num_masked=cfg["num_masked"], batch_size=max(2, cfg["batch"]))
    encoder = build_encoder(model_cfg, in_channels=1, seq_len=cfg["seq_len"])
    model = SimMTM(encoder, seq_len=cfg["seq_len"], channels=1, model=model_cfg, pretrain=pre_cfg)
    if projector == "official" and not native:
        model.projector.net = official_projector(encoder.num_tokens(cfg["seq_len"]), encoder.d_model)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(cfg["batch"], cfg["seq_len"], cfg["channels"], device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    calls: list = []
    real_attention = encoders.attention

    def recording_attention(q, k, v, **kwargs):
        calls.append(tuple(q.shape))  # the shape only: holding q would keep the q/k/v projection alive
        return real_attention(q, k, v, **kwargs)

    encoders.attention = recording_attention

    def step() -> None:  # as simmtm.train.shared.Loop: gradients dropped before the forward pass
        opt.zero_grad(set_to_none=True)
        series = to_series(x, True)  # (B*C, L, 1)
        n, length, c = series.shape
        mask = geometric_mask((cfg["num_masked"], n, c, length), 0.5, 3.0, generator=gen, device=dev).transpose(2, 3)
        out = model(series, mask)
        out.loss.backward()
        opt.step()
        calls.clear()  # keep no activations alive past the step

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    sys_start = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # before the counted step adds its own
    result = {**cfg, "projector": projector if native or projector != "official" else "official*",
              "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "steps": steps, "threads": threads,
              "device": device, "malloc": "freed" if returns_freed else "glibc",
              "s_per_step": elapsed / steps, "cpu_s_per_step": cpu / steps,
              "samples_per_s": cfg["batch"] * steps / elapsed, "peak_rss_gb": peak_rss,
              "sys_cpu_s_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_start) / steps,
              "load_avg": os.getloadavg()[0]}

    def recorded_step() -> None:  # the attention inputs of the step are kept until counted
        opt.zero_grad(set_to_none=True)
        series = to_series(x, True)
        n, length, c = series.shape
        mask = geometric_mask((cfg["num_masked"], n, c, length), 0.5, 3.0, generator=gen, device=dev).transpose(2, 3)
        out = model(series, mask)
        out.loss.backward()

    result.update(step_flops(recorded_step, calls))
    shapes = list(calls)
    calls.clear()
    result["attention_shapes"] = sorted(set(shapes))
    result["flops_per_s"] = result["flops"] / result["s_per_step"]
    if dev.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result.update(machine_peak(threads))
        result["gemm_flops"] = measured_gemm_peak()
    encoders.attention = real_attention
    return result


def in_subprocess(cfg: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(cfg), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {**cfg, "error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def grid() -> list[dict]:
    rows = [dict(PAPER)]
    rows += [{**PAPER, "seq_len": length} for length in (96, 192, 512)]
    rows += [{**PAPER, "batch": b} for b in (4, 32)]
    rows += [{**PAPER, "encoder": "patch"}, {**PAPER, "encoder": "resnet1d"}]
    return rows


def roofline(r: dict) -> str:
    """GFLOP a step, achieved GFLOP/s, and the share of the nominal (and measured-GEMM) peak."""
    if "flops" not in r:
        return ""
    text = f"{r['flops'] / 1e9:9.1f}{r['flops_per_s'] / 1e9:9.1f}"
    if "nominal_flops" in r:
        text += f"{100 * r['flops_per_s'] / r['nominal_flops']:8.1f}%{100 * r['flops_per_s'] / r['gemm_flops']:8.1f}%"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="also vary sequence length, batch size and encoder")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--projector", choices=["official", "lean"], default="official")
    parser.add_argument("--attention", choices=["both", "auto", "sdpa"], default="both",
                        help="attention kernel: sdpa (torch's), auto (simmtm's dispatch), both (A/B, one row each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a row field, e.g. --set seq_len=96 --set batch=4 (small, quick runs)")
    parser.add_argument("--no-head-pad", action="store_true",
                        help="GPU: leave small attention heads unpadded (torch's math kernel), to measure what padding buys")
    parser.add_argument("--return-freed-memory", choices=["auto", "true", "false"], nargs="?", const="true",
                        default="auto", help="the run config's return_freed_memory (glibc's mmap threshold fixed at "
                        "4 MiB: lower peak RSS, more page faults); auto, as in the product: on for the CPU")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one), steps=args.steps, warmup=args.warmup, threads=args.threads, device=args.device)))
        return

    overrides = {key: json.loads(value) if value[:1].isdigit() else value for key, value in (kv.split("=", 1) for kv in args.set)}
    kernels = ["sdpa", "auto"] if args.attention == "both" else [args.attention]
    configs = [{**c, "projector": args.projector, **overrides, "attention": a} for c in (grid() if args.grid else [dict(PAPER)]) for a in kernels]
    if args.no_head_pad:
        configs = [{**c, "pad_heads": False} for c in configs]
    setting = {"auto": "auto", "true": True, "false": False}[args.return_freed_memory]
    configs = [{**c, "return_freed_memory": setting} for c in configs]
    print(f"# SimMTM pre-training, {args.device}, {args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up; "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'encoder':<12}{'projector':<10}{'attn':<6}{'malloc':<7}{'L':>5}{'batch':>6}{'s/step':>9}{'cpu s':>8}"
          f"{'samples/s':>11}{'peak RSS GB':>13}{'peak GPU GB':>13}{'GFLOP':>9}{'GFLOP/s':>9}{'%peak':>9}{'%GEMM':>9}{'load':>6}")
    results = []
    for cfg in configs:
        r = in_subprocess(cfg, args)
        results.append(r)
        if args.json:  # after every row: a run stopped at a time limit keeps what it measured
            with open(args.json, "w") as fh:
                json.dump({"results": results, "official_cpu": OFFICIAL_CPU}, fh, indent=2)
        head = (f"{cfg['encoder']:<12}{r.get('projector', cfg['projector']):<10}{cfg['attention']:<6}"
                f"{r.get('malloc', '?'):<7}{cfg['seq_len']:>5}{cfg['batch']:>6}")
        if "error" in r:
            print(f"{head}  {r['error']}")
            continue
        gpu = f"{r['peak_gpu_gb']:13.2f}" if "peak_gpu_gb" in r else " " * 13
        print(f"{head}{r['s_per_step']:9.2f}{r['cpu_s_per_step']:8.2f}{r['samples_per_s']:11.2f}{r['peak_rss_gb']:13.2f}{gpu}"
              f"{roofline(r)}{r['load_avg']:6.1f}", flush=True)
    done = [r for r in results if "flops" in r]
    if done and "nominal_flops" in done[-1]:
        print(f"# peak: nominal {done[-1]['nominal_flops'] / 1e9:.0f} GFLOP/s = {done[-1]['nominal_how']}; "
              f"measured {done[-1]['gemm_flops'] / 1e9:.0f} GFLOP/s (2048^3 float32 matmul, same threads, same process)")
        print("# GFLOP: FlopCounterMode over forward + backward, attention counted by hand (12*P*T*T*hs a layer); "
              "exponentials not counted")
    paper = next((r for r in done if r["seq_len"] == 336 and r["encoder"] == "transformer"), None)
    per_sample = paper["flops"] / paper["batch"] if paper else None
    print("# official implementation, same machine kind, transformer L=336 (REFERENCE.md section 3); its GFLOP/s "
          "estimated as the FLOPs per sample above x its samples/s:")
    for o in OFFICIAL_CPU:
        sps = f"{o['samples_per_s']:11.2f}" if o["samples_per_s"] else "        n/a"
        rate = f"{'':>18}{per_sample * o['samples_per_s'] / 1e9:9.1f}" if per_sample and o["samples_per_s"] else ""
        print(f"{'official':<12}{'official':<10}{'full':<13}{336:>5}{o['batch']:>6}{'':>9}{'':>8}{sps}{' ' + str(o['peak_rss_gb']):>13}{'':>13}{rate}")


if __name__ == "__main__":
    main()
