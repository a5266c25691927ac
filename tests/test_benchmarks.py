"""The evidence scripts' own logic: the sweep files they write are valid sweeps, and their bookkeeping is right.

The studies themselves are long (docs/benchmarks.md); these check, in milliseconds, what turns their runs into the
published figures.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from simmtm.config.schema import load_config
from simmtm.tuning.sections import sweep_spec

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



def test_the_paired_interval_matches_hand_computed_t_and_bootstrap_figures(fidelity) -> None:
    st = fidelity.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5) = 1.5811; t(0.975, 4 df) = 2.776: half-width 2.776 * 1.5811 / sqrt(5) = 1.9629
    assert (st["n"], st["mean"], st["better"]) == (5, 3.0, 0)
    assert st["sd"] == pytest.approx(1.58114, abs=1e-5)
    assert (st["t_low"], st["t_high"]) == (pytest.approx(1.03707, abs=1e-3), pytest.approx(4.96293, abs=1e-3))  # t to 3 decimals
    # bootstrap means of 5 draws lie on a 0.2 grid, inside the t interval here, and repeat with the seed
    assert 1.0 < st["boot_low"] < 3.0 < st["boot_high"] < 5.0
    assert st == fidelity.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert round(st["boot_low"] * 5) == pytest.approx(st["boot_low"] * 5)
    # equal differences: a zero-width interval at that value; negative differences count as "first arm better"
    same = fidelity.paired_interval([-0.01] * 6)
    assert same["t_low"] == same["t_high"] == same["boot_low"] == same["boot_high"] == pytest.approx(-0.01)
    assert same["better"] == 6
    # two seeds: t(0.975, 1 df) = 12.706
    two = fidelity.paired_interval([0.0, 2.0])
    assert two["t_high"] - two["mean"] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-4)  # sd sqrt(2), n 2
    with pytest.raises(ValueError, match="at least 2"):
        fidelity.paired_interval([0.1])


def test_the_matched_baseline_gets_at_least_the_pretrained_arms_steps_and_its_last_lr(fidelity) -> None:
    extra = fidelity.matched_finetune(51, 27, 9, 3, 0.5)
    assert extra["finetune.epochs"] == 9 and 9 * 9 >= 51 + 27 and extra["finetune.patience"] == 9
    # official schedule: epoch e >= 2 runs at lr * decay^(e-2); the last epochs agree: 0.5^1 = decay^7
    assert extra["finetune.lr_decay"] ** 7 == pytest.approx(0.5, abs=1e-5)
    assert fidelity.matched_finetune(0, 10, 9, 3, 0.5)["finetune.epochs"] == 3  # never fewer than the recipe's


def write_history(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True)
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_run_records_count_steps_per_horizon_and_the_best_pretraining_epoch(fidelity, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    write_history(pre, [{"kind": "pretrain_epoch", "epoch": e, "step": 17 * e, "val_loss": v}
                        for e, v in ((1, 3.0), (2, 2.0), (3, 2.0))])
    assert fidelity.pretrain_record(pre) == {"steps": 51, "epochs": 3, "best_epoch": 3, "val_loss": 2.0}  # tie: later
    ft = tmp_path / "ft"
    write_history(ft, [{"kind": "finetune_epoch", "stage": f"h{h}", "epoch": e, "step": 9 * e}
                       for h, last in ((96, 3), (192, 2)) for e in range(1, last + 1)])
    horizons = {"96": {"mse": 0.4, "mae": 0.4}, "192": {"mse": 0.5, "mae": 0.45}}
    (ft / "metrics.json").write_text(json.dumps({"horizons": horizons, "mse": 0.45, "mae": 0.425, "val_mse": 0.6}))
    record = fidelity.finetune_record(ft)
    assert record["horizons"]["96"]["steps"] == 27 and record["horizons"]["192"]["steps"] == 18
    assert record["horizons"]["192"]["steps_per_epoch"] == 9 and record["mse"] == 0.45
    assert fidelity.encoder_updates({**record, "pretrain": {"steps": 51}}) == 51 + 27


def test_the_faithful_summary_pairs_arms_by_seed(fidelity) -> None:
    def run(mse: float, pre: int | None = 51) -> dict:
        horizons = {"96": {"mse": mse, "steps": 27}, "192": {"mse": mse, "steps": 27}}
        entry = {"mse": mse, "mae": mse / 2, "horizons": horizons}
        return {**entry, "pretrain": {"steps": pre}} if pre else entry

    arms = {fidelity.SIMMTM: {"0": run(0.40), "1": run(0.42), "2": run(0.41)},
            fidelity.GENERIC: {"0": run(0.41), "1": run(0.43), "2": run(0.41)},
            fidelity.BASELINE: {"0": run(0.45, None), "1": run(0.44, None), "2": run(0.46, None)},
            fidelity.SIMMTM_LONG: {"0": run(0.44), "1": run(0.44)}}
    text = fidelity.faithful_summary({"arms": arms})
    assert f"| {fidelity.SIMMTM} | 3 | 0.4100 +/- 0.0100 | 0.2050 +/- 0.0050 | 0.4100 | 0.4100 | 78 |" in text
    assert f"| {fidelity.BASELINE} | 3 | 0.4500 +/- 0.0100 |" in text and "| 27 | 0.4500, 0.4400, 0.4600 |" in text
    # SimMTM - baseline per seed: -0.05, -0.02, -0.05: mean -0.04, sd 0.0173, t half-width 4.303 * 0.0173 / sqrt(3)
    assert f"| {fidelity.SIMMTM} - {fidelity.BASELINE} | mse | 3 | -0.0400 | 0.0173 | [-0.0830, +0.0030] |" in text
    assert f"| {fidelity.SIMMTM} - {fidelity.GENERIC} | mse | 3 | -0.0067 |" in text and "| 2/3 |" in text
    # only the seeds both arms ran are paired: 0.44 - 0.45 and 0.44 - 0.44
    assert f"| {fidelity.SIMMTM_LONG} - {fidelity.BASELINE} | mse | 2 | -0.0050 | 0.0071 |" in text


# --- pre-training roofline and the GPU profile (run here on the CPU, tiny shapes) -----------------------------


@pytest.fixture(scope="module")
def pretrain_bench():
    return script("bench_pretrain")


TINY_ROW = {"seq_len": 24, "channels": 2, "d_model": 8, "n_layers": 2, "n_heads": 4, "d_ff": 16, "num_masked": 2,
            "batch": 3, "encoder": "transformer", "projector": "official"}


def test_the_roofline_counts_attention_by_hand_whichever_kernel_runs(pretrain_bench, monkeypatch) -> None:
    from simmtm.method import attention

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
def test_the_scale_benchmark_runs_the_sweeps_engine_and_its_confirmation(tmp_path, shared_ray) -> None:
    from ray import cloudpickle
    from studies import study_of

    scale = script("sweep_scale")
    cloudpickle.register_pickle_by_value(scale)  # loaded from its path: Ray's workers could not import it by name
    # On the suite's shared Ray (2 CPUs), which tuner.fit finds initialised: a Ray of its own would cost a start and
    # a stop, and its shutdown would take the shared one down for the tests after this one.
    figures = scale.run_tune(tmp_path / "n6", 6, concurrent=2)
    confirm = scale.run_confirm(tmp_path / "n6", 6, concurrent=2)
    assert sum(figures["states"].values()) == 6 and figures["states"]["FAILED"] == 0
    assert (tmp_path / "n6" / "trials.csv").read_text().count("\n") == 7
    study = study_of(tmp_path / "n6")
    assert sorted(t.state.name for t in study.get_trials()) == sorted(
        {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}[s] for s, n in figures["states"].items() for _ in range(n))
    assert confirm["runs"] == 6 and confirm["pairs"] >= 6  # the default and the top 1, 3 paired seeds each
