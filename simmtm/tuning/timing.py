"""How long each trial took from the driver's side, and how much of that was orchestration.

``TrialClock`` (a Tune callback on the driver) appends each trial's add/start/end events to ``timing.jsonl``, which
survives a restore; after the sweep ``write_timing`` turns them into ``timing.json``: per trial, the driver's view,
the trial function's own wall time and the difference (the orchestration overhead).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from simmtm.tuning.outputs import TrialRow
from simmtm.tuning.record import name_of

__all__ = ["TrialClock", "read_timing_events", "write_timing"]

EVENTS_FILE = "timing.jsonl"


class TrialClock(Callback):
    """Times each trial from the driver's side, appending to ``DIR/timing.jsonl`` (it survives a restore)."""

    def __init__(self, out: Path) -> None:
        self.path = out / EVENTS_FILE
        self._seen: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_seen": set()}

    def _log(self, trial, event: str) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"trial_id": name_of(trial), "event": event, "time": time.time()}) + "\n")

    def _note_new(self, trials) -> None:
        for trial in trials:  # Tune has no "trial added" hook: note each trial at the step that created it
            if name_of(trial) not in self._seen:
                self._seen.add(name_of(trial))
                if trial.status in ("PENDING", "RUNNING") and not trial.has_reported_at_least_once:
                    self._log(trial, "add")

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._note_new(trials)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._note_new(trials)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "start")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "end")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._log(trial, "end")


def read_timing_events(out: Path) -> dict[str, dict[str, float]]:
    """``timing.jsonl`` (appended by the driver's trial clock) as ``{trial id: {event: time}}``."""
    events: dict[str, dict[str, float]] = {}
    log_path = out / EVENTS_FILE
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            e = json.loads(line)
            events.setdefault(e["trial_id"], {})[e["event"]] = e["time"]
    return events


def write_timing(out: Path, rows: list[TrialRow], *, wall_s: float) -> float | None:
    """Write ``timing.json``; return the mean orchestration overhead of the COMPLETE trials that ran start to end
    in one driver session: from the trial's creation (Tune only creates a trial when a slot is free) to its end,
    minus the trial function's own wall time (which starts after its imports)."""
    events = read_timing_events(out)
    per_trial = {}
    for r in rows:
        ev, own = events.get(r.trial_id, {}), r.extra.get("trial_wall_s")
        if r.state == "COMPLETE" and own and "add" in ev and "end" in ev and ev["end"] > ev["add"]:
            driver_s = ev["end"] - ev["add"]
            per_trial[r.trial_id] = {
                "driver_s": round(driver_s, 3),
                "trial_s": round(own, 3),
                "overhead_s": round(driver_s - own, 3),
                "actor_start_s": round(ev.get("start", ev["add"]) - ev["add"], 3),
            }
    overheads = [v["overhead_s"] for v in per_trial.values()]
    mean = sum(overheads) / len(overheads) if overheads else None
    (out / "timing.json").write_text(
        json.dumps({"sweep_wall_s": round(wall_s, 2), "mean_overhead_s": mean, "trials": per_trial}, indent=2) + "\n"
    )
    return mean
