"""Where a pre-training step's memory goes, at the paper's ETTh1 configuration with the official projector.

    python benchmarks/memory_step.py                         # RSS per step (2 ms samples), CPU, page faults
    python benchmarks/memory_step.py --return-freed-memory   # the same with simmtm.method.memory.return_freed_memory()
    python benchmarks/memory_step.py --saved                 # what autograd keeps for the backward pass, by source line
    python benchmarks/memory_step.py --torch-dropout         # nn.Dropout instead of simmtm's lean Dropout (A/B)
    python benchmarks/memory_step.py --late-zero-grad        # gradients dropped after the forward pass (A/B)

RSS figures are bytes / 1e9 (the peak also as ru_maxrss in GiB, the unit of bench_pretrain.py's "peak RSS GB").
The step is simmtm.train.shared.Loop's (and bench_pretrain.py's): zero_grad, masks, forward, backward, Adam; batch 16
(112 series, 448 rows). glibc's malloc is left at its default unless --return-freed-memory (a run's
``return_freed_memory: auto`` sets it on the CPU).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import threading
import time
import traceback

import torch

from simmtm.config.schema import ModelConfig, PretrainConfig
from simmtm.method.encoders import build_encoder
from simmtm.method.masking import geometric_mask
from simmtm.method.memory import Dropout, return_freed_memory
from simmtm.method.model import SimMTM, to_series


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--return-freed-memory", action="store_true")
    parser.add_argument("--torch-dropout", action="store_true")
    parser.add_argument("--saved", action="store_true")
    parser.add_argument("--late-zero-grad", action="store_true", help="zero_grad after the forward pass (as before)")
    args = parser.parse_args()
    if args.return_freed_memory:
        return_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    length = 336
    model_cfg = ModelConfig(encoder="transformer", d_model=32, n_layers=3, n_heads=16, d_ff=64, projector="official",
                            head_dropout=0.1)
    encoder = build_encoder(model_cfg, in_channels=1, seq_len=length)
    pretrain_cfg = PretrainConfig(num_masked=3, batch_size=args.batch)
    model = SimMTM(encoder, seq_len=length, channels=1, model=model_cfg, pretrain=pretrain_cfg)
    if args.torch_dropout:
        for module in model.modules():
            if type(module) is Dropout:
                module.__class__ = torch.nn.Dropout
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, length, 7)
    gen = torch.Generator().manual_seed(0)

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        series = to_series(x, True)  # (B*C, L, 1)
        n, _, c = series.shape
        return series, geometric_mask((3, n, c, length), 0.5, 3.0, generator=gen).transpose(2, 3)

    if args.saved:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        by_line: collections.Counter = collections.Counter()
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            if key not in seen and key not in params:
                seen.add(key)
                stack = traceback.extract_stack()
                frames = [f for f in stack if "simmtm" in f.filename or "torch/nn/modules" in f.filename] or stack
                where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno} {(frames[-1].line or '')[:70]}"
                by_line[where] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*inputs())
        print(f"saved for backward (each storage once, parameters excluded): {sum(by_line.values()) / 1e9:.3f} GB")
        for where, size in by_line.most_common(12):
            print(f"{size / 1e6:9.1f} MB  {where}")
        return

    peak, phase = [0, "init"], ["init"]

    def sample() -> None:
        while True:
            now = rss()
            if now > peak[0]:
                peak[0], peak[1] = now, phase[0]
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    print(f"RSS after building the model: {rss() / 1e9:.2f} GB; load average {os.getloadavg()[0]:.1f}")
    for i in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        if not args.late_zero_grad:
            opt.zero_grad(set_to_none=True)  # the last step's gradients are not held through the forward pass
        series, mask = inputs()
        phase[0] = "forward"
        out = model(series, mask)
        if args.late_zero_grad:
            opt.zero_grad(set_to_none=True)
        phase[0] = "backward"
        out.loss.backward()
        phase[0] = "adam"
        opt.step()
        phase[0] = "between steps"
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = f"user {after.ru_utime - before.ru_utime:.2f} s, system {after.ru_stime - before.ru_stime:.2f} s"
        print(f"step {i}: {cpu}, "
              f"minor faults {after.ru_minflt - before.ru_minflt}, RSS {rss() / 1e9:.2f} GB, peak so far "
              f"{peak[0] / 1e9:.2f} GB (in {peak[1]}), ru_maxrss {after.ru_maxrss / 1024**2:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
