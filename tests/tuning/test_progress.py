"""The sweep's progress reporter: one line per trial event when piped, a table redrawn in place on a terminal."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmtm.config.schema import load_config
from simmtm.tuning.progress import TrialProgress, trial_table
from simmtm.tuning.sections import sweep_spec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
PARAMS = {"pretrain.mask_ratio": "r", "pretrain.num_masked": "M"}


@dataclass
class FakeTrial:
    """The parts of Tune's Trial that a progress reporter reads."""

    name: str
    status: str = "PENDING"
    config: dict[str, Any] = field(default_factory=lambda: {"pretrain.mask_ratio": 0.5, "pretrain.num_masked": 3})
    last_result: dict[str, Any] = field(default_factory=dict)
    error_file: str | None = None

    def __str__(self) -> str:
        return self.name


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(reporter: TrialProgress, trials: list[FakeTrial], done: bool = False) -> list[str]:
    """What one report round prints (nothing when the reporter has nothing to say)."""
    start = reporter.stream.tell()
    if reporter.should_report(trials, done=done):
        reporter.report(trials, done)
    return reporter.stream.getvalue()[start:].splitlines()  # type: ignore[attr-defined]


def test_piped_output_is_one_line_per_trial_event():
    reporter = TrialProgress(PARAMS, metric="val_mse", stream=io.StringIO())
    a, b, c = FakeTrial("trial-0000"), FakeTrial("trial-0001"), FakeTrial("trial-0002")
    trials = [a, b, c]
    assert _lines(reporter, trials) == []  # all pending: nothing to say

    a.status, a.last_result = "RUNNING", {"epoch": 1, "probe_val_mse": 0.61234}
    b.status = "RUNNING"
    assert _lines(reporter, trials) == [
        "trial-0000 started: r=0.5 M=3",
        "trial-0000 epoch 1: probe 0.6123",
        "trial-0001 started: r=0.5 M=3",
    ]
    assert _lines(reporter, trials) == []  # no change, no line

    a.status, a.last_result = "TERMINATED", {"epoch": 3, "stage": "final", "val_mse": 0.41}
    b.status, b.last_result = "TERMINATED", {"epoch": 1, "probe_val_mse": 0.9}  # stopped before its final score
    c.status, c.error_file = "ERROR", "/runs/s/ray/trial-0002/error.txt"
    assert _lines(reporter, trials, done=True) == [
        "trial-0000 finished: val_mse 0.41",
        "trial-0001 epoch 1: probe 0.9",
        "trial-0001 pruned at epoch 1",
        "trial-0002 started: r=0.5 M=3",
        "trial-0002 failed: /runs/s/ray/trial-0002/error.txt",
        "search: 3 trials: 1 failed, 1 finished, 1 pruned",
    ]


def test_on_a_terminal_the_table_redraws_in_place():
    reporter = TrialProgress(PARAMS, metric="val_mse", stream=Terminal())
    a = FakeTrial("trial-0000", status="RUNNING", last_result={"epoch": 2, "probe_val_mse": 0.5})
    first = _lines(reporter, [a])
    assert first[0] == "search: 1 trials: 1 running"
    assert first[1].split() == ["trial", "state", "r", "M", "epoch", "probe", "val_mse"]
    assert first[2].split() == ["trial-0000", "running", "0.5", "3", "2", "0.5"]
    assert not first[0].startswith("\x1b")

    reporter._last_draw = 0.0  # as if a second had passed
    a.status, a.last_result = "TERMINATED", {"epoch": 3, "val_mse": 0.25}
    again = _lines(reporter, [a], done=True)
    assert again[0] == f"\x1b[{len(first)}F\x1b[Jsearch: 1 trials: 1 finished"  # back over the old table, erased
    assert again[2].split() == ["trial-0000", "finished", "0.5", "3", "3", "0.25"]


def test_terminal_redraws_at_most_once_a_second_but_always_at_the_end():
    reporter = TrialProgress(PARAMS, metric="val_mse", stream=Terminal())
    trials = [FakeTrial("trial-0000", status="RUNNING")]
    assert _lines(reporter, trials)
    assert _lines(reporter, trials) == []  # within the second
    assert _lines(reporter, trials, done=True)


def test_trial_table_names_the_searched_parameters_by_short_name():
    path = SWEEPS / "quick.yaml"
    reporter = trial_table(sweep_spec(load_config(path), path), "val_mse", "min")
    assert reporter.params == {"pretrain.mask_ratio": "r", "pretrain.num_masked": "M", "pretrain.temperature": "tau"}
    assert reporter.probe == "probe_val_mse"


def test_the_reporter_pickles_under_a_captured_stdout_and_writes_to_the_stdout_of_the_moment():
    """Tune pickles its progress reporter; in a notebook or under pytest sys.stdout cannot be pickled, so the reporter
    keeps no stream of its own and writes to sys.stdout as it is when it reports."""
    import contextlib
    import pickle

    with contextlib.redirect_stdout(io.StringIO()) as captured:
        reporter = pickle.loads(pickle.dumps(TrialProgress(PARAMS, metric="val_mse")))
        a = FakeTrial("trial-0000")
        a.status, a.last_result = "RUNNING", {"epoch": 1, "probe_val_mse": 0.5}
        assert reporter.should_report([a])
        reporter.report([a], False)
    assert captured.getvalue().splitlines() == ["trial-0000 started: r=0.5 M=3", "trial-0000 epoch 1: probe 0.5"]
