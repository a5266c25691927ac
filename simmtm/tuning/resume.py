"""Continuing a sweep: ``simmtm sweep --resume --out DIR`` reads the sweep as ``DIR/sweep.yaml`` saved it.

Nothing of the first run needs repeating (not the file, not its ``--set`` values). A ``--set`` at resume may change
only what does not change what a trial is (``RESUMABLE_SWEEP_KEYS``): a larger ``tune.num_samples`` (more trials of
the same search) and ``tune.time_budget_s``; anything else is refused with one line.

A resumed sweep is a new Tune run over the same study, so both take effect as such: the planned trials that the study
has not finished run, and a ``tune.time_budget_s`` is the budget of the continued run, counted from the resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmtm.config.keys import diff_keys, get_key
from simmtm.config.schema import RunConfig, load_config
from simmtm.errors import UserError
from simmtm.tuning.outputs import read_sweep_yaml
from simmtm.tuning.sections import sweep_spec

__all__ = ["RESUMABLE_SWEEP_KEYS", "Continuation", "continue_config"]

RESUMABLE_SWEEP_KEYS = ("tune.num_samples", "tune.time_budget_s")


@dataclass(frozen=True)
class Continuation:
    """The sweep to continue: its saved file, the config (saved values plus allowed ``--set``), what changed."""

    sweep_file: Path
    config: RunConfig
    changes: dict[str, Any] = field(default_factory=dict)  # dotted key -> new value (RESUMABLE_SWEEP_KEYS only)


def continue_config(out: Path, overrides: list[str] | None = None) -> Continuation:
    """The config a resumed sweep runs with; UserError (one line) for a ``--set`` that may not change."""
    saved_file = out / "sweep.yaml"
    if not saved_file.is_file():
        raise UserError(f"--resume: {out} holds no sweep (no sweep.yaml); run without --resume to start one")
    for override in overrides or []:
        key = override.split("=", 1)[0].strip()
        if key not in RESUMABLE_SWEEP_KEYS:
            raise UserError(
                f"--resume --set {key}: cannot change when a sweep continues (only {', '.join(RESUMABLE_SWEEP_KEYS)} "
                "may); start a new --out for another search"
            )
    saved = read_sweep_yaml(out)
    config = load_config(saved_file, overrides)
    new = config.model_dump(mode="json")
    changes = {key: get_key(new, key) for key in diff_keys(saved, new)}
    if "tune.num_samples" in changes:
        before = sweep_spec(load_config(saved_file), saved_file).tune.num_samples or 8
        after = changes["tune.num_samples"]
        if after is None or after < before:
            raise UserError(
                f"--resume --set tune.num_samples={after}: the sweep in {out} asked for {before}; resuming may only "
                "raise it"
            )
    return Continuation(saved_file, config, changes)
