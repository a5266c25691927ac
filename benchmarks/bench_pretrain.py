"""Pre-training speed and memory: samples/s and peak resident memory of SimMTM training steps.

Each configuration runs in a fresh subprocess so that its peak RSS is its own. A "sample" is one window of
``L x C`` (C = 7 for ETTh1); a step is forward + backward + Adam on one batch with M masked copies.

    python benchmarks/bench_pretrain.py                      # the paper's ETTh1 configuration, batch 16, 2 threads
    python benchmarks/bench_pretrain.py --grid               # also sequence lengths, batch sizes and encoders
    python benchmarks/bench_pretrain.py --device cuda        # on a GPU (peak memory = torch.cuda.max_memory_allocated)
    python benchmarks/bench_pretrain.py --device cuda --no-head-pad   # GPU, heads of size 2 left to the math kernel
    python benchmarks/bench_pretrain.py --json out.json      # keep the figures

The official implementation's figures on this kind of machine (2 CPU threads; ../shared/REFERENCE.md section 3)
are printed beside ours as the reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

PAPER = {"seq_len": 336, "channels": 7, "d_model": 32, "n_layers": 3, "n_heads": 16, "d_ff": 64, "num_masked": 3,
         "batch": 16, "encoder": "transformer"}
OFFICIAL_CPU = [  # REFERENCE.md section 3: the official code, ETTh1 paper config, 2 threads
    {"batch": 2, "samples_per_s": 0.17, "peak_rss_gb": 5.7},
    {"batch": 4, "samples_per_s": 0.14, "peak_rss_gb": 9.8},
    {"batch": 16, "samples_per_s": None, "peak_rss_gb": ">24 (killed, out of memory)"},
]


def measure(cfg: dict, *, steps: int, warmup: int, threads: int, device: str) -> dict:
    """Run in this process: time `steps` training steps after `warmup`, return figures."""
    import torch

    from simmtm import encoders
    from simmtm.config import ModelConfig, PretrainConfig
    from simmtm.encoders import build_encoder
    from simmtm.masking import geometric_mask
    from simmtm.model import SimMTM, to_series

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoders.PAD_HEADS = cfg.get("pad_heads", True)
    dev = torch.device(device)
    model_cfg = ModelConfig(encoder=cfg["encoder"], d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                            d_ff=cfg["d_ff"])
    pre_cfg = PretrainConfig(num_masked=cfg["num_masked"], batch_size=max(2, cfg["batch"]))
    encoder = build_encoder(model_cfg, in_channels=1, seq_len=cfg["seq_len"])
    model = SimMTM(encoder, seq_len=cfg["seq_len"], channels=1, model=model_cfg, pretrain=pre_cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(cfg["batch"], cfg["seq_len"], cfg["channels"], device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step() -> None:
        series = to_series(x, True)  # (B*C, L, 1)
        n, length, c = series.shape
        mask = geometric_mask((cfg["num_masked"], n, c, length), 0.5, 3.0, generator=gen, device=dev).transpose(2, 3)
        out = model(series, mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {**cfg, "steps": steps, "threads": threads, "device": device,
              "s_per_step": elapsed / steps, "samples_per_s": cfg["batch"] * steps / elapsed,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if dev.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        result["gpu"] = torch.cuda.get_device_name()
    return result


def in_subprocess(cfg: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(cfg), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="also vary sequence length, batch size and encoder")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--no-head-pad", action="store_true",
                        help="GPU: leave small attention heads unpadded (torch's math kernel), to measure what padding buys")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one), steps=args.steps, warmup=args.warmup, threads=args.threads, device=args.device)))
        return

    configs = grid() if args.grid else [dict(PAPER)]
    if args.no_head_pad:
        configs = [{**c, "pad_heads": False} for c in configs]
    print(f"# SimMTM pre-training, {args.device}, {args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up; "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'encoder':<12}{'L':>5}{'batch':>6}{'s/step':>9}{'samples/s':>11}{'peak RSS GB':>13}{'peak GPU GB':>13}")
    results = []
    for cfg in configs:
        r = in_subprocess(cfg, args)
        results.append(r)
        if args.json:  # after every row: a run stopped at a time limit keeps what it measured
            with open(args.json, "w") as fh:
                json.dump({"results": results, "official_cpu": OFFICIAL_CPU}, fh, indent=2)
        if "error" in r:
            print(f"{cfg['encoder']:<12}{cfg['seq_len']:>5}{cfg['batch']:>6}  {r['error']}")
            continue
        gpu = f"{r['peak_gpu_gb']:13.2f}" if "peak_gpu_gb" in r else " " * 13
        print(f"{r['encoder']:<12}{r['seq_len']:>5}{r['batch']:>6}{r['s_per_step']:9.2f}{r['samples_per_s']:11.2f}{r['peak_rss_gb']:13.2f}{gpu}")
    print("# official implementation, same machine kind, transformer L=336 (REFERENCE.md section 3):")
    for o in OFFICIAL_CPU:
        sps = f"{o['samples_per_s']:11.2f}" if o["samples_per_s"] else "        n/a"
        print(f"{'official':<12}{336:>5}{o['batch']:>6}{'':>9}{sps}{str(o['peak_rss_gb']):>13}")


if __name__ == "__main__":
    main()
