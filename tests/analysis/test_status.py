"""simmtm status DIR on sweep directories written here: a running one (study only) and a finished one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from simmtm.analysis.status import sweep_status
from simmtm.cli import main


def _timing(root: Path, events: list[tuple[str, str, float]]) -> None:
    (root / "timing.jsonl").write_text("".join(json.dumps({"trial_id": t, "event": e, "time": s}) + "\n" for t, e, s in events))


def test_a_running_sweep_counts_states_from_the_study_and_estimates_the_time_left(tmp_path: Path, synth: SimpleNamespace) -> None:
    Row = synth.Row
    rows = [Row({synth.R: 0.3, synth.M: 2}, 0.50, repeat=0), Row({synth.R: 0.3, synth.M: 2}, 0.54, repeat=1),
            Row({synth.R: 0.7, synth.M: 4}, 0.60), Row({synth.R: 0.5, synth.M: 3}, None, state="PRUNED"),
            Row({synth.R: 0.9, synth.M: 1}, None, state="FAILED")]
    space = {synth.R: synth.FULL_SPACE[synth.R], synth.M: synth.FULL_SPACE[synth.M]}
    root = synth.write_sweep(tmp_path / "sweep", rows, space, write_csv=False, running=2)  # trials.csv: only at the end
    raw = yaml.safe_load((root / "sweep.yaml").read_text())
    raw["tune"].update(num_samples=5, repeats=2)  # 10 trials planned
    (root / "sweep.yaml").write_text(yaml.safe_dump(raw))
    # five trials of 100 s each, two at a time, from t=0
    _timing(root, [("a", "start", 0), ("b", "start", 0), ("a", "end", 100), ("b", "end", 100), ("c", "start", 100),
                   ("d", "start", 100), ("c", "end", 200), ("d", "end", 200), ("e", "start", 200), ("e", "end", 300),
                   ("f", "start", 300), ("g", "start", 300)])

    status = sweep_status(root, now=350)
    assert status.counts["COMPLETE"] == 3 and status.counts["PRUNED"] == 1 and status.counts["FAILED"] == 1
    assert status.counts["RUNNING"] == 2 and status.finished == 5 and status.planned == 10
    assert status.best_params == {synth.R: 0.3, synth.M: 2} and status.best_score == pytest.approx(0.52)
    assert status.noise == pytest.approx(0.0282843, rel=1e-4) and status.noise_source == "repeats" and status.best_repeats == 2
    assert status.elapsed_s == 350 and status.mean_trial_s == 100 and status.concurrency == 2
    assert status.left_s == pytest.approx(300)  # 5 unfinished trials, 2 at a time: 3 rounds of 100 s
    text = "\n".join(status.lines())
    assert "trials: 5 of 10 finished (3 complete, 1 pruned, 1 failed), 2 running, 3 not started" in text
    assert "best so far: val_mse 0.5200 +/- 0.02828 (1 sd of repeats), 2 repeat(s)" in text
    assert "time: 6 min elapsed; left: about 5 min (mean trial 100 s, 2 at a time)" in text

    raw["tune"]["time_budget_s"] = 400  # the budget ends the sweep first
    (root / "sweep.yaml").write_text(yaml.safe_dump(raw))
    assert sweep_status(root, now=350).left_s == pytest.approx(50)


def test_status_of_a_finished_sweep_on_the_command_line(tmp_path: Path, synth: SimpleNamespace, capsys) -> None:
    rows = synth.tpe_rows(synth.interior_surface, synth.FULL_SPACE, n_trials=6, noise=0.003, seed=0)
    root = synth.write_sweep(tmp_path / "sweep", rows, synth.FULL_SPACE)
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "trials: 6 of 6 finished (6 complete, 0 pruned, 0 failed), 0 running, 0 not started" in out
    assert "noise band: not measured" in out
    assert main(["status", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["COMPLETE"] == 6


def test_not_a_sweep_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass the --out directory of a `simmtm sweep` run" in err[0]
