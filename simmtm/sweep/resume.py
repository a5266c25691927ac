"""Continuing a sweep: ``simmtm sweep --resume --out DIR`` reads the sweep as ``DIR/sweep.yaml`` saved it.

Nothing of the first run needs repeating (not the file, not its ``--set`` values). A ``--set`` at resume may change
only what does not change what a trial is (``RESUMABLE_SWEEP_KEYS``): a larger ``tune.num_samples`` (more trials of
the same search) and ``tune.time_budget_s``; anything else is refused with one line.

Tune restores its own saved state and ignores a new ``TuneConfig``, so an allowed change is written into that state
before ``Tuner.restore`` (``extend_experiment``): the search generator's sample total, and the experiment's stopper.
A new ``tune.time_budget_s`` is the budget of the continued run, counted from the resume; without it the run keeps
what was left of the first budget (Tune's own behaviour).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmtm.config import RunConfig, load_config
from simmtm.config_keys import diff_keys, get_key
from simmtm.errors import UserError
from simmtm.sweep.outputs import read_sweep_yaml
from simmtm.sweep.spec import sweep_spec

__all__ = ["RESUMABLE_SWEEP_KEYS", "Continuation", "continue_config", "extend_experiment"]

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


def extend_experiment(
    experiment_dir: str, *, total_trials: int | None = None, time_budget_s: float | None = None
) -> None:
    """Write the allowed changes into Tune's saved state in ``experiment_dir``, before ``Tuner.restore`` reads it.

    ``total_trials``: the trials Tune's search generator may create in all (configurations times repeats).
    ``time_budget_s``: a fresh budget for the continued run (None: leave Tune's stopper alone).
    """
    if total_trials is None and time_budget_s is None:
        return
    local = experiment_dir.removeprefix("file://")
    if "://" in local:
        raise UserError(
            f"--resume --set: Tune's state lives in {experiment_dir}; changing tune.num_samples or tune.time_budget_s "
            "at resume needs a local tune.storage_path"
        )
    from ray import cloudpickle

    if total_trials is not None:
        path = _newest(local, "search_gen_state-*.json")
        state = cloudpickle.loads(path.read_bytes())
        state["total_samples"] = max(int(state["total_samples"]), total_trials)
        state["finished"] = False
        _replace(path, cloudpickle.dumps(state))
    if time_budget_s is not None:
        from ray.tune.stopper import TimeoutStopper
        from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

        path = _newest(local, "experiment_state-*.json")
        state = _loads_with_cloudpickle(path.read_bytes())
        state["runner_data"]["_stopper"] = TimeoutStopper(time_budget_s)  # the sweep sets no other stop criterion
        _replace(path, json.dumps(state, cls=TuneFunctionEncoder).encode())


def _newest(directory: str, pattern: str) -> Path:
    found = sorted(glob.glob(os.path.join(directory, pattern)))  # Tune names them by time; it reads the newest
    if not found:
        raise UserError(f"--resume: {directory} holds no {pattern.split('-')[0]} file of Tune; cannot continue it")
    return Path(found[-1])


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
