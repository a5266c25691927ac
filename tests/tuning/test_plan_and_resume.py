"""simmtm sweep --dry-run (the plan, without Ray) and --resume without repeating the first run's file or --set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from simmtm.cli import main
from simmtm.errors import UserError
from simmtm.tuning.outputs import read_sweep_json, read_sweep_yaml, read_trials_csv, write_sweep_yaml
from simmtm.tuning.plan import plan_sweep
from simmtm.tuning.resume import continue_config

SEARCH = {
    "method": "tpe",
    "params": {
        "pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
        "pretrain.num_masked": {"type": "int", "low": 1, "high": 4},
    },
}


def test_dry_run_prints_the_plan_and_starts_no_ray(tiny_sweep, tmp_path: Path, monkeypatch, capsys) -> None:
    path = tiny_sweep(
        SEARCH,
        tune={"num_samples": 6, "repeats": 2, "scheduler": {"type": "asha", "grace_period": 1}},
        run={"pretrain": {"epochs": 4}},
    )
    import ray

    initialized = ray.is_initialized()  # the suite's shared Ray may be up already
    # In this process, not a fresh interpreter (10-30 s of imports): with ray unimportable, a dry run that reached
    # for Ray at all (to start it, or to ask an already running one) fails here.
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "ray", None)
        assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert ray.is_initialized() == initialized, "ray started"
    out = capsys.readouterr().out
    assert "trials: 12 (6 configurations x 2 repeats)" in out
    assert "per trial: 1 worker(s) x (1 CPU, 0 GPU)" in out
    assert "ASHA rungs at epochs 1, 2, 4 (3 rungs)" in out  # grace 1, factor 2, max_t = 5
    assert "first 5 configurations:" in out and "  5. pretrain.mask_ratio=" in out
    assert not (tmp_path / "out").exists()


def test_the_first_planned_configurations_are_the_sweeps(tiny_sweep) -> None:
    path = tiny_sweep(SEARCH, tune={"num_samples": 3}, run={"pretrain": {"mask_ratio": 0.5, "num_masked": 3}})
    plan = plan_sweep(path)
    assert plan.trials == 3 and len(plan.first) == 3 and plan.concurrency >= 1
    assert plan.first[0] == {"pretrain.mask_ratio": 0.5, "pretrain.num_masked": 3}  # the enqueued first point
    assert plan_sweep(path).first == plan.first  # seeded
    grid = tiny_sweep({"method": "grid", "grid": {"pretrain.num_masked": [1, 2]}}, tune={"scheduler": {"type": "fifo"}})
    fifo = plan_sweep(grid)
    assert fifo.rungs == [] and [p["pretrain.num_masked"] for p in fifo.first] == [1, 2]


def _saved(tiny_sweep, out: Path, **tune) -> None:
    from simmtm.config.schema import load_config

    path = tiny_sweep(SEARCH, tune={"num_samples": 2, **tune})
    out.mkdir()
    write_sweep_yaml(out, load_config(path, ["pretrain.lr=0.002"]).model_dump(mode="json"))


def test_resume_reads_the_saved_sweep_and_refuses_a_set_that_may_not_change(tiny_sweep, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _saved(tiny_sweep, out)
    same = continue_config(out)
    assert same.changes == {} and same.config.pretrain.lr == 0.002  # the first run's --set is kept, not repeated
    more = continue_config(out, ["tune.num_samples=5", "tune.time_budget_s=60"])
    assert more.changes == {"tune.num_samples": 5, "tune.time_budget_s": 60}
    with pytest.raises(
        UserError,
        match=r"^--resume --set pretrain.lr: cannot change when a sweep continues "
        r"\(only tune.num_samples, tune.time_budget_s may\)",
    ):
        continue_config(out, ["pretrain.lr=0.1"])
    with pytest.raises(UserError, match="asked for 2; resuming may only raise it"):
        continue_config(out, ["tune.num_samples=1"])
    with pytest.raises(UserError, match="holds no sweep"):
        continue_config(tmp_path / "nothing")


@pytest.mark.slow
def test_resume_with_only_out_continues_and_a_larger_num_samples_adds_trials(
    tiny_sweep, tmp_path: Path, shared_ray, capsys
) -> None:
    path = tiny_sweep(
        SEARCH, tune={"num_samples": 2, "scheduler": {"type": "fifo"}, "test_top_k": 0}, run={"pretrain": {"epochs": 1}}
    )
    out = tmp_path / "out"
    cmd = ["sweep", "--out", str(out), "--quiet-table"]  # the CLI in this process, on the suite's shared Ray
    assert main([*cmd[:1], str(path), *cmd[1:], "--set", "pretrain.lr=0.002"]) == 0, capsys.readouterr().err[-3000:]
    assert len(read_trials_csv(out / "trials.csv")) == 2
    capsys.readouterr()
    assert main([*cmd, "--resume", "--set", "pretrain.mask_ratio=0.3"]) != 0
    refused = capsys.readouterr().err
    assert "cannot change when a sweep continues" in refused
    assert len(refused.strip().splitlines()) == 1
    assert main([*cmd, "--resume", "--set", "tune.num_samples=3"]) == 0, capsys.readouterr().err[-3000:]
    rows = read_trials_csv(out / "trials.csv")
    assert len(rows) == 3 and {r["state"] for r in rows} == {"COMPLETE"}
    assert read_sweep_yaml(out)["tune"]["num_samples"] == 3 and read_sweep_json(out).num_samples == 3
    assert read_sweep_yaml(out)["pretrain"]["lr"] == 0.002  # the first run's --set, kept
