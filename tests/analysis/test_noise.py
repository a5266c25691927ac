"""One seed-noise figure: the confirmation's verdict stores it, and every message and file quotes that one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from simmtm.analysis import load_sweep, recommend, seed_noise, write_best_config
from simmtm.tuning.confirm_stage import ConfirmOutcome, write_confirmation_json
from simmtm.tuning.spec import PAPER_DEFAULTS
from simmtm.verdict.confirmation import ConfirmedConfig, confirmation_seeds, judge
from simmtm.verdict.probe_check import check_probe

R_GRID = [0.1, 0.3, 0.5, 0.7, 0.9]


def edge_sweep(tmp_path: Path, synth: SimpleNamespace) -> Path:
    """One seed a configuration (the search measures no noise); the best r sits at the upper bound."""
    space = {synth.R: FloatDistribution(0.1, 0.9), synth.M: IntDistribution(1, 3)}
    rows = [synth.Row({synth.R: r, synth.M: m}, 0.40 - 0.05 * r + 0.01 * (m - 2) ** 2) for r in R_GRID for m in (1, 2, 3)]
    return synth.write_sweep(tmp_path / "sweep", rows, space)


def add_confirmation(root: Path, synth: SimpleNamespace) -> dict:
    seeds = confirmation_seeds(0, 3)
    best = {synth.R: 0.9, synth.M: 2}
    default = {k: PAPER_DEFAULTS[k] for k in best}
    configs = [
        ConfirmedConfig(default, dict(zip(seeds, [0.40, 0.43, 0.41])), True, dict(zip(seeds, [0.50, 0.52, 0.49]))),
        ConfirmedConfig(best, dict(zip(seeds, [0.35, 0.39, 0.37])), False, dict(zip(seeds, [0.50, 0.50, 0.51]))),
    ]
    verdict = judge(configs, metric="val_mse", mode="min")
    write_confirmation_json(root, ConfirmOutcome(verdict, check_probe([1, 2], [1, 2], prunes=False), configs, []))
    return verdict.to_dict()


def test_without_a_confirmation_the_widen_advice_says_the_noise_is_not_measured(tmp_path, synth) -> None:
    sweep = load_sweep(edge_sweep(tmp_path, synth))
    assert seed_noise(sweep).sd is None
    (edge,) = recommend(sweep, n_boot=20).edges
    assert edge["can_widen"] and "seed noise not measured: confirm before widening" in edge["message"]


@pytest.mark.slow
def test_every_output_quotes_the_confirmation_s_noise(tmp_path, synth, capsys) -> None:
    from simmtm.analysis.report import write_report
    from simmtm.cli import main

    root = edge_sweep(tmp_path, synth)
    verdict = add_confirmation(root, synth)
    sd = verdict["seed_spread"]["sd"]
    quoted = f"seed-to-seed spread {sd:.3g} SD over 6 runs"
    sweep = load_sweep(root)
    assert seed_noise(sweep).sd == sd
    rec = recommend(sweep, n_boot=50)
    assert rec.seed_noise == verdict["seed_spread"] and quoted in rec.sentence
    (edge,) = rec.edges
    assert edge["noise_sd"] == sd and "not measured" not in edge["message"]  # the gate read the verdict's figure
    assert f"seed noise: {sd:.3g} SD of val_mse between seeds (6 runs)" in rec.summary()
    assert "test split (scored once, nothing selected on it): does not confirm the validation verdict" in rec.summary()

    assert main(["recommend", str(root), "--json", "--bootstrap", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed_noise"] == verdict["seed_spread"] == printed["confirmation"]["seed_spread"]
    assert printed["confirmation"]["test_difference"]["n"] == 3 and printed["confirmation"]["test_agrees"] is False

    write_best_config(sweep, rec, tmp_path / "best.yaml")
    header = "".join(line for line in (tmp_path / "best.yaml").read_text().splitlines() if line.startswith("#"))
    assert quoted in header and "on the test split the difference is within seed noise" in header

    report = write_report(root, tmp_path / "report", interactive=False, n_boot=50)
    html = report.html.read_text()
    assert quoted in html and f"seed noise: {sd:.3g} SD" in html
    assert json.loads(report.recommendation_json.read_text())["seed_noise"]["sd"] == sd
