"""Masking speed: one batch of 16 x 7 x 336 with M = 3 masked copies (the paper's ETTh1 pre-training batch).

    python benchmarks/bench_masking.py [--repeats 500] [--threads 2] [--device cpu]

Prints the median and the 10th/90th percentiles of simmtm's vectorised geometric and random masking, and, as the
reference, a per-point Python loop of the same two-state chain (the way the official code draws its masks).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from simmtm.method.masking import geometric_mask, random_mask

BATCH, CHANNELS, LENGTH, M = 16, 7, 336, 3


def loop_reference(series: int, length: int, ratio: float, lm: float, rng: np.random.Generator) -> np.ndarray:
    """The per-point Python loop of a two-state Markov chain (one step per time point), for comparison only."""
    mask = np.ones((series, length), dtype=bool)
    p_m, p_u = 1 / lm, ratio / ((1 - ratio) * lm)
    for s in range(series):
        state = int(rng.random() > ratio)  # 0: masked, 1: kept
        for t in range(length):
            mask[s, t] = state
            if rng.random() < (p_m, p_u)[state]:
                state = 1 - state
    return ~mask


def timings(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10)
    return f"{name:<34}{statistics.median(ms):10.3f}{q[0]:10.3f}{q[-1]:10.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=dev).manual_seed(0)
    shape = (M, BATCH * CHANNELS, 1, LENGTH)
    for _ in range(20):  # warm-up
        geometric_mask(shape, 0.5, 3.0, generator=gen, device=dev)
    print(f"# masks for {BATCH} x {CHANNELS} x {LENGTH}, M = {M} ({M * BATCH * CHANNELS * LENGTH} points), "
          f"{args.device}, {args.threads} threads, {args.repeats} repeats; milliseconds")
    print(f"{'':<34}{'median':>10}{'p10':>10}{'p90':>10}")
    print(summary("geometric (simmtm, vectorised)", timings(lambda: geometric_mask(shape, 0.5, 3.0, generator=gen, device=dev), args.repeats, sync)))
    print(summary("random (simmtm, vectorised)", timings(lambda: random_mask(shape, 0.5, generator=gen, device=dev), args.repeats, sync)))
    rng = np.random.default_rng(0)
    ref = timings(lambda: loop_reference(M * BATCH * CHANNELS, LENGTH, 0.5, 3.0, rng), max(3, args.repeats // 100), lambda: None)
    print(summary("per-point Python loop (reference)", ref))


if __name__ == "__main__":
    main()
