"""The evidence scripts' own logic: the sweep files they write are valid sweeps, and their bookkeeping is right.

The studies themselves are long (docs/benchmarks.md); these check, in milliseconds, what turns their runs into the
published figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from simmtm.config import load_config
from simmtm.sweep.spec import sweep_spec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def search():
    return script("search_efficiency")


@pytest.fixture(scope="module")
def fidelity():
    return script("fidelity")


def test_the_search_problem_and_its_grid_are_valid_sweeps_over_the_same_cells(search, tmp_path: Path) -> None:
    grid = sweep_spec(load_config(search.sweep_file(tmp_path, "grid", "grid", "fifo", samples=0, seed=None)))
    cells = {(round(c[search.R], 3), c[search.M]) for c in grid.search.grid_cells()}
    assert len(cells) == 45 and (0.1, 1) in cells and (0.9, 5) in cells and (0.3, 4) in cells
    tpe = sweep_spec(load_config(search.sweep_file(tmp_path, "t", "tpe", "asha", samples=15, seed=4)))
    assert (tpe.search.method, tpe.search.seed, tpe.tune.num_samples, tpe.tune.scheduler.type) == ("tpe", 4, 15, "asha")
    r = tpe.search.params[search.R]
    assert (r.low, r.high, r.step) == (0.1, 0.9, 0.1) and tpe.search.first == "none"
    rand = sweep_spec(load_config(search.sweep_file(tmp_path, "r", "random", "fifo", samples=15, seed=1)))
    assert (rand.search.method, rand.tune.scheduler.type) == ("random", "fifo")


def row(state: str, score: float | None, epochs: int, wall: float, r: float = 0.5, m: int = 3) -> dict[str, str]:
    return {"state": state, "score": "" if score is None else str(score), "epochs": str(epochs), "wall_s": str(wall),
            "pretrain.mask_ratio": str(r), "pretrain.num_masked": str(m)}


def test_compute_is_counted_up_to_the_first_complete_trial_that_meets_the_target(search) -> None:
    rows = [row("PRUNED", None, 1, 2.0), row("COMPLETE", 0.20, 4, 10.0), row("PRUNED", None, 2, 4.0),
            row("COMPLETE", 0.10, 4, 12.0), row("COMPLETE", 0.05, 4, 11.0)]
    hit = search.compute_until(rows, lambda s: s <= 0.101)
    assert hit == {"reached": True, "trials": 4, "epochs": 11.0, "seconds": 28.0}  # the pruned trials count too
    miss = search.compute_until(rows, lambda s: s <= 0.01)
    assert miss == {"reached": False, "trials": 5, "epochs": 15.0, "seconds": 39.0}
    assert search.cell(row("COMPLETE", 0.1, 4, 1.0, r=0.30000000000000004, m=4)) == (0.3, 4)


def test_the_summary_says_when_a_search_never_reached_its_target(search) -> None:
    hit = {"reached": True, "trials": 3, "epochs": 9.0, "seconds": 30.0, "epochs_frac": 0.05, "seconds_frac": 0.06}
    miss = {"reached": False, "trials": 15, "epochs": 60.0, "seconds": 200.0, "epochs_frac": 0.33, "seconds_frac": 0.36}
    entry = {"trials": 15, "complete": 10, "pruned": 5, "max_abs_diff_to_grid": 0.0, "sweep_wall_s": 60.0, "best": 0.1001}
    results = {
        "grid": {"cells": 45, "complete": 45, "best": 0.1, "worst": 0.11, "best_cell": (0.2, 3), "kth_best": 0.1005,
                 "top_k": 3, "within_1pct": 20, "epochs": 180.0, "seconds": 540.0, "sweep_wall_s": 290.0,
                 "scores": {"0.2,3": 0.1, "0.9,1": 0.11}},
        "searches": {"TPE + ASHA": {"0": {**entry, "1pct": hit, "topk": hit}, "1": {**entry, "1pct": hit, "topk": miss}}},
    }
    text = search.summary(results)
    assert "| TPE + ASHA | 2 | 15 (5.0) | 60 s | +0.10% | within 1 % of grid best | 2/2 | 3 | 5% (5%) | 6% (6%) |" in text
    # the unreached seed counts its whole search: median of 5 % and 33 % of the grid's epochs
    assert "| one of the grid's top 3 | 1/2 | 9 | 19% (19%) | 21% (21%) |" in text
    assert "spread 10.00%" in text
    table = search.heatmap(results)
    assert "| 0.2 | - | 0.10000 |" in table and "| 0.9 | 0.11000 | - |" in table


def test_fidelity_pairs_each_arm_with_the_random_init_of_the_same_seed(fidelity) -> None:
    def fc(mse: float) -> dict:
        return {"horizons": {"96": {}}, "mse": mse, "mae": mse}

    results = {"arms": {
        "ETTh1 random init": {"0": fc(0.50), "1": fc(0.40)},
        "ETTh1 SimMTM paper r/M": {"0": fc(0.45), "1": fc(0.42)},
        "GunPoint random init": {"0": {"accuracy": 0.9, "f1": 0.9}},
        "GunPoint SimMTM": {"0": {"accuracy": 0.95, "f1": 0.94}},
    }}
    text = fidelity.summary(results)
    assert "| ETTh1 SimMTM paper r/M | mse | 0.4350 +/- 0.0212 | 0.4500, 0.4200 | -0.0150 (1/2) |" in text
    assert "| GunPoint SimMTM | accuracy | 0.9500 +/- nan | 0.9500 | +0.0500 (1/1) |" in text
    assert "| ETTh1 random init | mse | 0.4500 +/- 0.0707 | 0.5000, 0.4000 | - |" in text


# --- pre-training roofline and the GPU profile (run here on the CPU, tiny shapes) -----------------------------


@pytest.fixture(scope="module")
def pretrain_bench():
    return script("bench_pretrain")


TINY_ROW = {"seq_len": 24, "channels": 2, "d_model": 8, "n_layers": 2, "n_heads": 4, "d_ff": 16, "num_masked": 2,
            "batch": 3, "encoder": "transformer", "projector": "official"}


def test_the_roofline_counts_attention_by_hand_whichever_kernel_runs(pretrain_bench, monkeypatch) -> None:
    from simmtm import attention

    monkeypatch.setattr(attention, "KERNEL", attention.KERNEL)  # measure() sets it; restore after
    monkeypatch.setattr(pretrain_bench, "measured_gemm_peak", lambda: 1e9)
    rows = {kernel: pretrain_bench.measure({**TINY_ROW, "attention": kernel}, steps=1, warmup=0, threads=1, device="cpu")
            for kernel in ("sdpa", "auto")}
    problems = 3 * 2 * (2 + 1) * 4  # batch x channels x views x heads
    assert rows["auto"]["attention_flops"] == 2 * 12 * problems * 24 * 24 * 2  # 2 layers, head size 2
    assert rows["auto"]["flops"] == rows["sdpa"]["flops"] > rows["auto"]["attention_flops"]  # no double count
    assert rows["auto"]["projector"] in ("official", "official*")
    assert rows["auto"]["params_m"] > 24 * 8 * 24 * 8 / 2 / 1e6  # the official projector's Linear(T*D -> T*D/2)
    peak = rows["auto"]["nominal_flops"]
    assert peak > 0 and "FLOP/cycle" in rows["auto"]["nominal_how"]
    assert pretrain_bench.roofline(rows["auto"]).count("%") == 2


def test_the_gpu_profile_runs_on_the_cpu_and_counts_syncs(tiny_config, write_config, tmp_path) -> None:
    profiler = script("gpu_profile")
    config = load_config(write_config(tiny_config()))
    summary = profiler.profile(config, wait=1, warmup=1, steps=2, out=tmp_path / "p", top=5)
    assert summary["device"] == "cpu" and summary["steps"] == 2 and summary["step_ms"] > 0
    assert 0 < len(summary["top"]) <= 5 and all(k["ms_per_step"] > 0 for k in summary["top"])
    # the loop reads three loss parts with .item() and checks the loss is finite: host syncs on a GPU
    assert summary["syncs_per_step"]["aten::_local_scalar_dense"] >= 3
    assert (tmp_path / "p" / "trace.json").stat().st_size > 0
    text = profiler.markdown(summary)
    assert "| kernel / operator (self host time) |" in text and "Host synchronisations per step" in text


def test_the_scale_benchmark_writes_studies_the_analysis_reads_and_fits_growth_orders(tmp_path) -> None:
    scale = script("sweep_scale")
    scale.write_study(tmp_path / "n30", 30)
    timings = scale.run_analysis(tmp_path / "n30", bootstrap=50)
    assert all(v > 0 for v in timings.values())
    from simmtm.analysis.load import load_sweep

    sweep = load_sweep(tmp_path / "n30")
    assert sweep.counts()["COMPLETE"] == 15 and sweep.counts()["PRUNED"] == 15
    assert scale.slope([100, 1000], [1.0, 10.0]) == pytest.approx(1.0)
    assert scale.slope([100, 1000, 10000], [1.0, 100.0, 10000.0]) == pytest.approx(2.0)


@pytest.mark.slow
def test_the_scale_benchmarks_tune_sweep_gives_the_rows_of_tunes_full_analysis(tmp_path) -> None:
    # collect_rows reads the trials without ExperimentAnalysis's per-trial result frames: same rows as with them
    import ray
    from ray import cloudpickle
    from ray.tune import ExperimentAnalysis

    from simmtm.sweep.driver import EXPERIMENT_NAME
    from simmtm.sweep.results import _row, collect_rows

    scale = script("sweep_scale")
    cloudpickle.register_pickle_by_value(scale)  # loaded from its path: Ray's workers could not import it by name
    try:
        figures = scale.run_tune(tmp_path / "n6", 6, concurrent=2)
    finally:
        ray.shutdown()  # the Ray instance tuner.fit started in this process
    assert sum(figures["states"].values()) == 6 and figures["states"]["FAILED"] == 0
    keys = ["pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature"]
    experiment = str(tmp_path / "n6" / EXPERIMENT_NAME)
    full = [_row(trial, keys) for trial in ExperimentAnalysis(experiment).trials]
    fields = ["trial_id", "state", "params", "repeat", "score", "val_score", "epochs", "wall_s", "error"]
    assert [[getattr(r, f) for f in fields] for r in collect_rows(experiment, keys)] == [
        [getattr(r, f) for f in fields] for r in full
    ]
    assert (tmp_path / "n6" / "trials.csv").read_text().count("\n") == 7
