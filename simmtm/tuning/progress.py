"""The sweep's live progress, as Tune's progress reporter: for a person reading the terminal or its log.

On a terminal the trial table (searched parameters by short name, state, epoch, probe score, final score) redraws in
place, at most once a second. Piped to a file it prints one line per trial event instead: started (with its
parameters), a probe score, pruned, finished (with its score) or failed; a log of five trials reads in ~25 lines
where Tune's own table printed a status block every 10 seconds.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import ProgressReporter

from simmtm.tuning.spec import SHORT_NAMES, SweepSpec, probe_key

__all__ = ["TrialProgress", "trial_events", "trial_table"]

REDRAW_S = 1.0  # the terminal table's least interval between two redraws


def trial_table(spec: SweepSpec, metric: str, mode: str) -> TrialProgress:
    """The search's reporter: the searched parameters by short name (and the repeat, when there are repeats)."""
    params = {k: SHORT_NAMES.get(k, k.split(".")[-1]) for k in spec.search.keys}
    if spec.tune.repeats > 1:
        params["repeat"] = "repeat"
    return TrialProgress(params, metric=metric)


@dataclass
class _Seen:
    """What the last report showed of one trial."""

    status: str = ""
    epoch: Any = None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass
class TrialProgress(ProgressReporter):
    """Tune's ``ProgressReporter``: a table redrawn in place on a terminal, one line per trial event otherwise."""

    params: dict[str, str]  # config key -> column name
    metric: str
    stream: TextIO | None = None  # None: sys.stdout as it is at each write (Tune pickles the reporter, and a
    # notebook's or pytest's captured stdout cannot be pickled)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _pending: list[str] = field(default_factory=list)
    _drawn: int = 0  # lines of the table on the terminal now
    _last_draw: float = 0.0

    def __post_init__(self) -> None:
        self.probe = probe_key(self.metric)

    @property
    def live(self) -> bool:
        return self.out.isatty()

    @property
    def out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to set up: the metric comes from the sweep, and the table needs no start time."""

    def should_report(self, trials: Sequence[Any], done: bool = False) -> bool:
        if self.live:
            return done or time.monotonic() - self._last_draw >= REDRAW_S
        self._pending += trial_events(trials, self._seen, self.params, metric=self.metric, probe=self.probe)
        return done or bool(self._pending)

    def report(self, trials: Sequence[Any], done: bool, *sys_info: str) -> None:
        if self.live:
            self._redraw(self.table(trials))
        else:
            lines, self._pending = self._pending, []
            if done:
                lines.append(_summary(trials, self.metric))
            self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def table(self, trials: Sequence[Any]) -> list[str]:
        """One row per trial: name, state, the searched parameters, epoch, probe and final score."""
        header = ["trial", "state", *self.params.values(), "epoch", "probe", self.metric]
        rows = [header]
        for t in trials:
            res = t.last_result or {}
            values = [t.config.get(k, "") for k in self.params]
            scores = [res.get("epoch", ""), res.get(self.probe, ""), res.get(self.metric, "")]
            rows.append([str(t), _state(t, self.metric), *values, *scores])
        cells = [[_fmt(v) for v in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        return [_summary(trials, self.metric)] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]

    def _redraw(self, lines: list[str]) -> None:
        # Back to the first line of the table drawn last ("\x1b[nF"), erase to the end of the screen ("\x1b[J").
        up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.out.write(up + "".join(line + "\n" for line in lines))
        self._drawn = len(lines)
        self._last_draw = time.monotonic()


def trial_events(
    trials: Sequence[Any], seen: dict[str, _Seen], params: dict[str, str], *, metric: str, probe: str
) -> list[str]:
    """The lines for what changed in ``trials`` since ``seen`` (updated): started, probed, pruned, finished, failed."""
    lines = []
    for t in trials:
        name, res = str(t), t.last_result or {}
        was = seen.setdefault(name, _Seen())
        if t.status == "PENDING" or (t.status == was.status and res.get("epoch") == was.epoch):
            continue
        if not was.status or was.status == "PENDING":
            shown = " ".join(f"{col}={_fmt(t.config.get(key, '?'))}" for key, col in params.items())
            lines.append(f"{name} started: {shown}")
        if res.get(probe) is not None and res.get("epoch") != was.epoch:
            lines.append(f"{name} epoch {res.get('epoch')}: probe {_fmt(res[probe])}")
        if t.status == "TERMINATED":
            score = res.get(metric)
            ended = f"finished: {metric} {_fmt(score)}" if score is not None else f"pruned at epoch {res.get('epoch')}"
            lines.append(f"{name} {ended}")
        elif t.status == "ERROR":
            lines.append(f"{name} failed: {t.error_file or 'no error recorded'}")
        was.status, was.epoch = t.status, res.get("epoch")
    return lines


def _state(trial: Any, metric: str) -> str:
    """Tune's state in words; a trial stopped before its final score (no ``metric``) was pruned."""
    if trial.status == "TERMINATED":
        return "finished" if (trial.last_result or {}).get(metric) is not None else "pruned"
    return "failed" if trial.status == "ERROR" else trial.status.lower()


def _summary(trials: Sequence[Any], metric: str) -> str:
    """'search: 5 trials: 3 finished, 2 running'."""
    counts = Counter(_state(t, metric) for t in trials)
    return f"search: {len(trials)} trials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
