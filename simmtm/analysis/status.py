"""Where a sweep stands, read from its directory while it runs (``simmtm status DIR``, from another terminal).

Trial states come from the Optuna study (``optuna.db``, current while the sweep runs) or ``trials.csv`` (written
when it ends), whichever has seen more finished trials (``simmtm.analysis.load_sweep``). The best configuration so
far is the best mean over its repeats; its noise band is the spread of those repeats (or of the seed-noise trials
the sweep recorded under ``seed_noise`` in sweep.json). Time left comes from ``timing.jsonl``: the mean length of
the finished trials, the trials still to run and how many ran at once, capped by ``tune.time_budget_s``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simmtm.analysis.load import load_sweep
from simmtm.tuning.outputs import FINISHED_STATES

__all__ = ["SweepStatus", "sweep_status"]


@dataclass(frozen=True)
class SweepStatus:
    path: Path
    metric: str
    mode: str
    counts: dict[str, int]  # trials per state (simmtm.tuning.outputs.STATES)
    planned: int | None  # trials the sweep will run in all (configurations x repeats); None: not recorded
    best_params: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None  # mean over the best configuration's repeats
    noise: float | None = None  # one standard deviation of that score across seeds; None: not measured
    noise_source: str = ""  # "repeats" or "seed noise"
    best_repeats: int = 0
    elapsed_s: float | None = None
    left_s: float | None = None  # about how long until the last trial ends
    mean_trial_s: float | None = None
    concurrency: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINISHED_STATES)

    def lines(self) -> list[str]:
        c = self.counts
        of = f" of {self.planned}" if self.planned else ""
        not_started = max((self.planned or 0) - sum(c.values()), 0) + c.get("PENDING", 0)
        out = [
            f"sweep {self.path}: {self.metric} ({self.mode})",
            (
                f"trials: {self.finished}{of} finished ({c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, "
                f"{c.get('FAILED', 0)} failed), {c.get('RUNNING', 0)} running, {not_started} not started"
            ),
        ]
        if self.best_score is None:
            out.append("best so far: none (no trial has completed)")
        else:
            band = (
                f" +/- {self.noise:.4g} (1 sd of {self.noise_source})"
                if self.noise is not None
                else " (noise band: not measured; tune.repeats > 1 measures it)"
            )
            params = "  ".join(f"{k}={_fmt(v)}" for k, v in self.best_params.items())
            out.append(
                f"best so far: {self.metric} {self.best_score:.4f}{band}, {self.best_repeats} repeat(s): {params}"
            )
        if self.elapsed_s is not None:
            left = (
                "done"
                if self.left_s == 0
                else "unknown (no trial has finished)"
                if self.left_s is None
                else f"about {_duration(self.left_s)}"
            )
            detail = (
                f" (mean trial {_duration(self.mean_trial_s)}, {self.concurrency} at a time)"
                if self.mean_trial_s and self.left_s
                else ""
            )
            out.append(f"time: {_duration(self.elapsed_s)} elapsed; left: {left}{detail}")
        out.extend(self.notes)
        return out


def sweep_status(path: str | Path, *, now: float | None = None) -> SweepStatus:
    """Read the sweep directory ``path`` (finished, running or interrupted) without changing anything in it."""
    sweep = load_sweep(path)
    meta = json.loads((sweep.path / "sweep.json").read_text())
    resolved = (
        yaml.safe_load((sweep.path / "sweep.yaml").read_text()) if (sweep.path / "sweep.yaml").is_file() else None
    )
    tune = (resolved or {}).get("tune") or {}
    repeats = int(meta.get("repeats") or tune.get("repeats") or 1)
    samples = meta.get("num_samples") or tune.get("num_samples")
    planned = int(samples) * repeats if samples else None
    counts = sweep.counts()

    best: dict[str, Any] = {}
    score = noise = None
    source, n_best = "", 0
    finished = sweep.finished
    if len(finished):
        groups = (
            finished.groupby([finished[p].astype(str) for p in sweep.params], sort=False)
            if sweep.params
            else [((), finished)]
        )
        scored = [(statistics.fmean(g["score"].astype(float)), g) for _, g in groups]
        score, group = max(scored, key=lambda s: sweep.sign * s[0])
        best, n_best = sweep.params_of(group.iloc[0]), len(group)
        if n_best > 1:
            noise, source = statistics.stdev(group["score"].astype(float)), "repeats"
        elif isinstance(meta.get("seed_noise"), dict) and meta["seed_noise"].get("std") is not None:
            noise, source = float(meta["seed_noise"]["std"]), "seed noise"

    elapsed, left, mean_s, concurrency = _timing(
        sweep.path / "timing.jsonl", counts, planned, tune.get("time_budget_s"), now
    )
    return SweepStatus(
        sweep.path,
        sweep.metric,
        sweep.mode,
        counts,
        planned,
        best,
        score,
        noise,
        source,
        n_best,
        elapsed,
        left,
        mean_s,
        concurrency,
        tuple(sweep.notes),
    )


def _timing(
    path: Path, counts: dict[str, int], planned: int | None, budget: float | None, now: float | None
) -> tuple[float | None, float | None, float | None, int | None]:
    """(elapsed, left, mean trial length, concurrency) from the driver's trial clock; Nones where unknown."""
    if not path.is_file():
        return None, None, None, None
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not events:
        return None, None, None, None
    first = min(e["time"] for e in events)
    starts: dict[str, float] = {}
    lengths, spans = [], []
    for e in sorted(events, key=lambda e: e["time"]):
        if e["event"] == "start":
            starts[e["trial_id"]] = e["time"]
        elif e["event"] == "end" and e["trial_id"] in starts:
            begun = starts.pop(e["trial_id"])
            lengths.append(e["time"] - begun)
            spans.append((begun, e["time"]))
    running = counts.get("RUNNING", 0)
    unfinished = (planned - sum(counts[s] for s in FINISHED_STATES)) if planned else running + counts.get("PENDING", 0)
    last = max(e["time"] for e in events)
    now = now if now is not None else (time.time() if unfinished > 0 else last)
    elapsed = now - first
    if unfinished <= 0:
        return last - first, 0.0, statistics.fmean(lengths) if lengths else None, None
    if not lengths:
        return elapsed, None, None, None
    concurrency = max(running, _max_overlap(spans), 1)
    mean = statistics.fmean(lengths)
    left = math.ceil(unfinished / concurrency) * mean
    if budget:
        left = min(left, max(float(budget) - elapsed, 0.0))
    return elapsed, left, mean, concurrency


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
