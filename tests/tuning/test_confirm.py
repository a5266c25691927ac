"""The confirmation stage on a real local Ray: fixed configurations x shared seeds, and a resume that re-runs nothing."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from simmtm.errors import UserError
from simmtm.tuning.confirm_stage import (
    ConfirmOutcome,
    ConfirmPlan,
    StageInputs,
    check_noise_from,
    confirm_points,
    confirm_sweep,
    confirmed_configs,
    first_seeds,
    plan_noise,
    power_line,
    probe_pairs,
    read_confirmation_json,
    rung_scores,
    write_confirmation_json,
)
from simmtm.tuning.engine import run_points
from simmtm.tuning.outputs import SweepMeta, TrialRow, write_sweep_json
from simmtm.tuning.record import TrialStore, trials_root
from simmtm.tuning.results import named_rows
from simmtm.tuning.spec import PAPER_DEFAULTS, ConfirmSpec, TrialSpec
from simmtm.verdict.confirmation import detectable_difference, judge, seeds_for_half_width
from simmtm.verdict.probe_check import check_probe
from simmtm.verdict.stats import SeedSpread

R, M, TAU = "pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature"
CAND = {R: 0.3, M: 2, TAU: 0.2}


def test_points_are_seed_major_and_paired():
    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=2)
    assert list(confirm_points(plan).items()) == [
        ("confirm-0-1000", {"repeat": 1000, **PAPER_DEFAULTS}), ("confirm-1-1000", {"repeat": 1000, **CAND}),
        ("confirm-0-1001", {"repeat": 1001, **PAPER_DEFAULTS}), ("confirm-1-1001", {"repeat": 1001, **CAND})]


def test_probe_pairs_and_confirmation_json_round_trip(tmp_path: Path):
    rows = [TrialRow("a", "COMPLETE", {}, score=1.0), TrialRow("b", "PRUNED", {}), TrialRow("c", "COMPLETE", {}, score=2.0)]
    assert probe_pairs(rows, {"a": 0.5, "b": 0.7}) == [(0.5, 1.0)]  # pruned and rung-less runs have no pair
    configs = confirmed_configs([TrialRow("x", "COMPLETE", dict(PAPER_DEFAULTS), repeat=1000, score=1.5)],
                                ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=2), base_seed=3)
    assert configs[0].scores == {1003: 1.5, 1004: None} and configs[1].scores == {1003: None, 1004: None}
    outcome = ConfirmOutcome(judge(configs, metric="val_mse", mode="min"), check_probe([1, 2], [1, 2], prunes=False), configs, [])
    assert outcome.lines()[-1].startswith("no confirmed recommendation")
    write_confirmation_json(tmp_path, outcome)
    assert read_confirmation_json(tmp_path)["verdict"]["sentence"] == outcome.lines()[-1]
    assert read_confirmation_json(tmp_path / "elsewhere") is None


def _earlier_sweep(folder: Path, *, metric: str = "val_mse", confirmed: bool = True) -> SeedSpread | None:
    """A finished earlier sweep as the driver leaves it: sweep.json, and confirmation.json with its stored noise."""
    folder.mkdir()
    write_sweep_json(folder, SweepMeta(metric=metric, mode="min", params=[R, M, TAU]))
    if not confirmed:
        return None
    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=3)
    rows = [TrialRow(f"confirm-{c}-{r}", "COMPLETE", dict(p), repeat=r, score=1.0 + 0.01 * ((7 * r + 3 * c) % 5))
            for r in plan.repeats for c, p in enumerate(plan.candidates)]
    configs = confirmed_configs(rows, plan, base_seed=0)
    verdict = judge(configs, metric=metric, mode="min")
    write_confirmation_json(folder, ConfirmOutcome(verdict, check_probe([1, 2], [1, 2], prunes=False), configs, []))
    return verdict.spread


NO_REPEATS = SeedSpread(None, 0, 0, 0)  # a search that ran no configuration twice


def test_the_power_line_uses_an_earlier_sweeps_noise_when_the_search_has_none(tmp_path: Path, caplog):
    earlier = tmp_path / "earlier"
    spread = _earlier_sweep(earlier)
    assert spread.sd is not None and spread.n_runs == 6
    plan, fixed = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=3), ConfirmSpec(seeds=3)

    line = power_line(plan, plan_noise(NO_REPEATS, fixed, metric="val_mse", warm_start=None), fixed, "val_mse")
    assert line == ("confirmation: 2 configuration(s) x 3 fresh paired seed(s); no seed noise figure yet (no searched "
                    "configuration ran with two seeds, and no earlier sweep is named: tune.confirm.noise_from or "
                    "--warm-start): these runs measure it")

    # The --warm-start folder (as sweep.json records it), or tune.confirm.noise_from: the figure that sweep stored.
    for confirm, warm_start in ((fixed, str(earlier)), (ConfirmSpec(seeds=3, noise_from=str(earlier)), None)):
        noise = plan_noise(NO_REPEATS, confirm, metric="val_mse", warm_start=warm_start)
        assert noise.spread == spread
        line = power_line(plan, noise, confirm, "val_mse")
        assert line.startswith("confirmation: 2 configuration(s) x 3 fresh paired seed(s); 3 seeds tell apart a "
                               f"difference of about {detectable_difference(spread.sd, 3):.3g} val_mse or more")
        assert f"(seed noise {spread.sd:.3g} SD from the earlier sweep {earlier}, 6 runs;" in line

    # This search's own repeats come first.
    own = SeedSpread(0.02, 2, 4, 2)
    assert plan_noise(own, ConfirmSpec(seeds=3, noise_from=str(earlier)), metric="val_mse", warm_start=None).spread == own

    # An earlier sweep that stored no figure, scored another metric, or is no sweep: no figure (the last two warned).
    _earlier_sweep(tmp_path / "unconfirmed", confirmed=False)
    _earlier_sweep(tmp_path / "accuracy", metric="val_accuracy")
    for folder, warned in (("unconfirmed", None), ("accuracy", "scored val_accuracy"), ("missing", "no such directory")):
        caplog.clear()
        noise = plan_noise(NO_REPEATS, fixed, metric="val_mse", warm_start=str(tmp_path / folder))
        assert noise.spread is None and f"the earlier sweep {tmp_path / folder} has no seed noise figure" in noise.source
        assert (warned is None) == (not caplog.records) and all(warned in r.getMessage() for r in caplog.records)
        if warned:  # named by tune.confirm.noise_from, it stops the sweep before any trial instead
            with pytest.raises(UserError, match=f"tune.confirm.noise_from: .*{warned}"):
                check_noise_from(ConfirmSpec(noise_from=str(tmp_path / folder)), metric="val_mse")
    check_noise_from(ConfirmSpec(seeds=0, noise_from=str(tmp_path / "missing")), metric="val_mse")  # no confirmation


def test_auto_seeds_start_from_the_seed_noise_when_a_target_is_set():
    auto = ConfirmSpec(seeds="auto", target_half_width=0.01, max_seeds=12)
    noisy, quiet = SeedSpread(0.01, 2, 6, 4), SeedSpread(0.001, 2, 6, 4)
    assert first_seeds(auto, noisy) == seeds_for_half_width(math.sqrt(2) * 0.01, 0.01, cap=12) == 11
    assert first_seeds(auto, quiet) == 3  # never fewer than 3
    assert first_seeds(auto, None) == first_seeds(auto, NO_REPEATS) == 3  # no figure: 3, then rounds
    assert first_seeds(ConfirmSpec(seeds="auto"), noisy) == 3  # no target: the difference is not known before
    assert first_seeds(ConfirmSpec(seeds=5), noisy) == 5
    assert first_seeds(ConfirmSpec(seeds="auto", target_half_width=0.001, max_seeds=6), noisy) == 6  # the cap


def test_the_stage_plans_with_the_warm_starts_noise(tmp_path: Path, caplog):
    """confirm_sweep on a fake runner: the earlier sweep's figure sets the power line and auto's first round."""
    earlier = tmp_path / "earlier"
    spread = _earlier_sweep(earlier)
    out = tmp_path / "out"
    out.mkdir()
    target = 0.8 * detectable_difference(spread.sd, 3)  # 3 seeds are not enough for it
    confirm = ConfirmSpec(seeds="auto", target_half_width=target, top_k=1, max_seeds=12)
    stage = StageInputs(out=out, metric="val_mse", mode="min", param_keys=[R, M, TAU], base_seed=0, confirm=confirm,
                        rung_epoch=1, prunes=False, rung="probe", max_concurrent=2, warm_start=str(earlier))
    asked: list[int] = []

    def run(points):
        asked.append(len({p["repeat"] for p in points.values()}))
        return [TrialRow(n, "COMPLETE", {k: v for k, v in p.items() if k != "repeat"}, repeat=p["repeat"],
                         score=1.0 + (0.0 if p[R] == CAND[R] else 0.5)) for n, p in points.items()]

    caplog.set_level(logging.INFO, logger="simmtm.tuning.confirm_stage")
    confirm_sweep(stage, [TrialRow("t0", "COMPLETE", dict(CAND), score=1.0)], run_points=run, default=PAPER_DEFAULTS)
    first = seeds_for_half_width(math.sqrt(2) * spread.sd, target, cap=12)
    assert first > 3 and asked[0] == first
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("confirmation: 2 configuration"))
    assert f"x {first} fresh paired seed(s) first" in line and f"from the earlier sweep {earlier}, 6 runs" in line


@pytest.mark.slow
def test_confirmation_runs_every_pair_once_and_resume_reruns_nothing(shared_ray, tiny_config, tmp_path: Path):
    from simmtm.cluster.resources import Resources

    raw = tiny_config({"pretrain": {"epochs": 2, "max_steps": None}, "finetune": {"horizons": [4]}})
    spec = TrialSpec(run=raw, metric="val_mse", probe_every=2, probe_steps=5, tb_dir=str(tmp_path / "tb"),
                     storage_path=str(tmp_path), score_test=True)
    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), seeds=2)
    store = TrialStore(trials_root(str(tmp_path)))

    def run(points):
        todo = {n: p for n, p in points.items() if store.read_result(n) is None}
        run_points(todo, resources=Resources(workers=1, cpus_per_worker=1), sweep_entry=spec.model_dump(mode="json"),
                   storage_root=str(tmp_path), max_concurrent=2)
        return named_rows(store, points, spec, [R, M, TAU])

    rows = run(confirm_points(plan))
    assert len(rows) == 4 and all(r.state == "COMPLETE" and r.score is not None and r.val_score is not None for r in rows)
    assert sorted((r.repeat, r.params[M]) for r in rows) == [(1000, 2), (1000, 3), (1001, 2), (1001, 3)]
    configs = confirmed_configs(rows, plan, base_seed=raw["seed"])
    assert [c.is_default for c in configs] == [True, False]
    assert all(set(c.finished()) == {raw["seed"] + 1000, raw["seed"] + 1001} for c in configs)  # paired seeds
    assert judge(configs, metric="val_mse", mode="min").status in ("beats", "keep_default")

    assert all(r.test_score is not None for r in rows)  # the test split, scored once a run
    # The runs reuse their trial processes as the search's do: two at a time, so at most two processes for four runs.
    pids = {json.loads(line)["pid"] for f in (tmp_path / "confirm").glob("*/result.json")
            for line in f.read_text().splitlines()}
    assert 1 <= len(pids) <= 2, pids
    rungs = rung_scores(rows, 2)
    assert set(rungs) == {r.trial_id for r in rows} and all(rungs[r.trial_id] == r.val_score for r in rows)

    before = {r.trial_id: r.score for r in rows}
    runs_before = sorted(p.name for p in (tmp_path / "tb").iterdir())
    (tmp_path / "trials" / "confirm-1-1001" / "result.json").unlink()  # one run's result lost: only it runs again
    again = run(confirm_points(plan))
    assert {r.trial_id: r.score for r in again} == before  # the other three read back, the fourth from its checkpoint
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs_before


@pytest.mark.slow
def test_a_sweep_ends_with_the_confirmation_and_every_output_says_the_same(shared_ray, tiny_sweep, tmp_path: Path, capsys):
    import json

    from optuna.trial import TrialState
    from studies import study_of

    from simmtm.cli import main

    search = {"method": "tpe", "params": {R: {"type": "float", "low": 0.1, "high": 0.9}, M: {"type": "int", "low": 1, "high": 4}}}
    path = tiny_sweep(search, tune={"num_samples": 4, "confirm": {"top_k": 1, "seeds": 2},
                                    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet-table"]) == 0
    sweep_lines = capsys.readouterr().out.strip().splitlines()
    conf = json.loads((out / "confirmation.json").read_text())
    sentence = conf["verdict"]["sentence"]
    assert sweep_lines[-1] == sentence and conf["verdict"]["status"] in ("beats", "keep_default")
    assert any(line.startswith("probe score vs final score: Spearman") for line in sweep_lines[-3:])
    assert conf["verdict"]["seed_spread"]["n_runs"] == 4  # 2 configurations x 2 paired seeds
    assert sentence in (out / "best.yaml").read_text()
    # Pruned trials hold no value in the study: sorting by value ranks only final scores, like the report.
    study = study_of(out)
    assert all(t.value is None for t in study.trials if t.state == TrialState.PRUNED)
    assert all(t.value is not None for t in study.trials if t.state == TrialState.COMPLETE)

    assert main(["recommend", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == sentence
    report = tmp_path / "report"
    assert main(["analyze", str(out), "--out", str(report), "--no-interactive", "--bootstrap", "50"]) == 0
    rec = json.loads((report / "recommendation.json").read_text())
    assert rec["sentence"] == sentence and rec["params"] == conf["verdict"]["recommended"]
    assert (report / "figures" / "confirmation.png").is_file() and (report / "figures" / "probe.png").is_file()
    assert sentence.replace("'", "&#x27;") in (report / "report.html").read_text()

    # A resume re-runs no confirmation run and ends with the same sentence.
    before = sorted(p.name for p in (out / "tb").iterdir())
    assert main(["sweep", str(path), "--out", str(out), "--resume", "--quiet-table"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == sentence
    assert sorted(p.name for p in (out / "tb").iterdir()) == before


@pytest.mark.slow
@pytest.mark.timeout(600)  # two sweeps of 3 runs each, 4 Tune experiments (145 s at load 20 on 2 cores)
def test_a_warm_started_sweep_plans_its_confirmation_with_the_earlier_sweeps_noise(
        shared_ray, tiny_sweep, tmp_path: Path, caplog) -> None:
    """Two real tiny sweeps, 3 runs each: one trial (the paper's point) and its confirmation (the default alone, 2
    seeds: it stores a noise figure); the second, warm-started from the first, has no repeats of its own."""
    import json

    from simmtm.cli import main

    search = {"method": "tpe", "params": {R: {"type": "float", "low": 0.1, "high": 0.9}, M: {"type": "int", "low": 1, "high": 4}}}
    tune = {"num_samples": 1, "scheduler": {"type": "fifo"}, "test_top_k": 0, "confirm": {"top_k": 1, "seeds": 2}}
    path = tiny_sweep(search, tune=tune)
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["sweep", str(path), "--out", str(first), "--quiet-table"]) == 0
    stored = json.loads((first / "confirmation.json").read_text())["verdict"]["seed_spread"]
    assert stored["sd"] is not None and stored["n_runs"] == 2

    caplog.set_level(logging.INFO, logger="simmtm.tuning.confirm_stage")
    assert main(["sweep", str(path), "--out", str(second), "--warm-start", str(first), "--quiet-table"]) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("confirmation: "))
    assert f"2 seeds tell apart a difference of about {detectable_difference(stored['sd'], 2):.3g} val_mse" in line
    assert f"(seed noise {stored['sd']:.3g} SD from the earlier sweep {first.resolve()}, 2 runs;" in line
