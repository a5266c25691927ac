"""The confirmation stage on a real local Ray: fixed configurations x shared seeds, and a resume that re-runs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from simmtm.tuning.confirm import (
    ConfirmOutcome,
    ConfirmPlan,
    confirm_points,
    confirmed_configs,
    probe_pairs,
    read_confirmation_json,
    rung_scores,
    write_confirmation_json,
)
from simmtm.tuning.engine import run_points
from simmtm.tuning.outputs import TrialRow
from simmtm.tuning.record import TrialStore, trials_root
from simmtm.tuning.results import named_rows
from simmtm.tuning.spec import PAPER_DEFAULTS, TrialSpec
from simmtm.verdict.confirmation import judge
from simmtm.verdict.probe_check import check_probe

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


@pytest.mark.slow
def test_confirmation_runs_every_pair_once_and_resume_reruns_nothing(local_ray, tiny_config, tmp_path: Path):
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
    rungs = rung_scores(rows, 2)
    assert set(rungs) == {r.trial_id for r in rows} and all(rungs[r.trial_id] == r.val_score for r in rows)

    before = {r.trial_id: r.score for r in rows}
    runs_before = sorted(p.name for p in (tmp_path / "tb").iterdir())
    (tmp_path / "trials" / "confirm-1-1001" / "result.json").unlink()  # one run's result lost: only it runs again
    again = run(confirm_points(plan))
    assert {r.trial_id: r.score for r in again} == before  # the other three read back, the fourth from its checkpoint
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs_before


@pytest.mark.slow
def test_a_sweep_ends_with_the_confirmation_and_every_output_says_the_same(local_ray, tiny_sweep, tmp_path: Path, capsys):
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
