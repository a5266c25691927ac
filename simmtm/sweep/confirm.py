"""The confirmation stage, run with Ray Tune: fixed configurations x fresh seeds, paired, resumable.

After the search the driver hands ``run_confirmation`` the configurations to confirm (the paper's default first,
then the search's top k: ``simmtm.confirmation.confirmation_candidates``) and the number of seeds. Every
configuration runs with the same fresh seeds (repeat indices ``CONFIRM_SEED_OFFSET + i``, so the trial's seed is
the sweep's seed + that index), at full budget: all pre-training epochs, then the full fine-tune, no pruning.

The trials run through a second ``Tuner`` with ``BasicVariantGenerator(points_to_evaluate=...)``: the same
trainable, the same resources and concurrency as the search. Its experiment folder is ``confirm/`` beside the
search's ``ray/``; a resumed sweep restores it (``Tuner.restore``), so finished confirmation runs are not run again
(and a trial killed after its fine-tune reports its saved result instead of training again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simmtm.confirmation import CONFIRM_SEED_OFFSET, ConfirmedConfig, Verdict, same_params
from simmtm.probe_check import ProbeCheck

__all__ = [
    "CONFIRM_EXPERIMENT",
    "CONFIRMATION_FILE",
    "ConfirmPlan",
    "ConfirmOutcome",
    "confirm_points",
    "run_confirmation",
    "confirmed_configs",
    "write_confirmation_json",
    "read_confirmation_json",
    "rung_scores",
    "probe_pairs",
]

log = logging.getLogger(__name__)

CONFIRM_EXPERIMENT = "confirm"  # DIR/confirm is the confirmation's Ray experiment folder


@dataclass(frozen=True)
class ConfirmPlan:
    """The configurations to confirm (the default first) and the seed offsets they all run with."""

    candidates: tuple[dict[str, Any], ...]
    seeds: int

    @property
    def repeats(self) -> list[int]:
        return [CONFIRM_SEED_OFFSET + i for i in range(self.seeds)]


def confirm_points(plan: ConfirmPlan) -> list[dict[str, Any]]:
    """One Tune config per (seed, configuration), seed-major: every configuration gets seed 1 before any gets seed 2,
    so an interrupted confirmation still holds complete pairs."""
    return [{"repeat": repeat, **params} for repeat in plan.repeats for params in plan.candidates]


def _param_space(sweep_entry: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every key the points set, as a choice over its values (Tune only presets keys that its space holds)."""
    from ray import tune

    keys = sorted({k for p in points for k in p})
    space: dict[str, Any] = {"sweep": dict(sweep_entry)}
    for key in keys:
        values = []
        for p in points:
            if key in p and p[key] not in values:
                values.append(p[key])
        space[key] = tune.choice(values)
    return space


def run_confirmation(
    trainable: Any,
    sweep_entry: Mapping[str, Any],
    plan: ConfirmPlan,
    *,
    storage_path: str,
    max_concurrent: int,
    trial_name: Any = None,
    callbacks: Sequence[Any] = (),
    verbose: int = 0,
    snapshots: Path | None = None,
) -> str:
    """Run (or resume) the confirmation trials; return their experiment folder (``storage_path/confirm``).

    ``snapshots``: where the driver keeps copies of Tune's state (``simmtm.sweep.tune_state``); None: none kept.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from simmtm.sweep.tune_state import StateSnapshot, refuse_fresh_start, repair_state

    path = f"{storage_path.rstrip('/')}/{CONFIRM_EXPERIMENT}"
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # probe and final results carry different keys
    restoring = tune.Tuner.can_restore(path)
    if restoring:
        log.info("confirmation: resuming %s (finished runs are kept)", path)
        if snapshots is not None:
            repair_state(path, snapshots)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        points = confirm_points(plan)
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(sweep_entry, points),
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent),
                num_samples=len(points),
                max_concurrent_trials=max_concurrent,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=CONFIRM_EXPERIMENT,
                storage_path=storage_path,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[*callbacks, *([StateSnapshot(snapshots)] if snapshots is not None else [])],
                verbose=verbose,
            ),
        )
    with refuse_fresh_start(path) if restoring else contextlib.nullcontext():
        tuner.fit()
    return path


def confirmed_configs(rows: Sequence[Any], plan: ConfirmPlan, *, base_seed: int) -> list[ConfirmedConfig]:
    """The confirmation's scores by configuration and training seed (rows: ``TrialRow`` of the confirm folder;
    a run that did not finish counts as None)."""

    out = []
    for i, params in enumerate(plan.candidates):
        scores: dict[int, float | None] = {base_seed + r: None for r in plan.repeats}
        for row in rows:
            if same_params({k: row.params.get(k) for k in params}, params) and row.repeat in plan.repeats:
                scores[base_seed + row.repeat] = row.score if row.state == "COMPLETE" else None
        out.append(ConfirmedConfig(dict(params), scores, is_default=i == 0))
    return out


# --- the stage, as the driver calls it ---------------------------------------------------------------------------


CONFIRMATION_FILE = "confirmation.json"


@dataclass
class ConfirmOutcome:
    """What the confirmation stage and the probe check found; ``confirmation.json`` holds ``to_dict()``."""

    verdict: Verdict | None  # None: the confirmation was off (tune.confirm.seeds: 0)
    probe: ProbeCheck
    configs: list[ConfirmedConfig]
    probe_pairs: list[tuple[float, float]]  # (rung score, final score) of every run that has both

    def lines(self) -> list[str]:
        """The sweep's last lines: the seed noise, the probe check, and the recommendation sentence last."""
        out = [self.probe.line()]
        if self.verdict is not None:
            out.insert(0, self.verdict.noise_text())
            out.append(self.verdict.sentence())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
            "probe_check": self.probe.to_dict(),
            "probe_pairs": [list(p) for p in self.probe_pairs],
            "configs": [
                {"params": c.params, "scores": {str(s): v for s, v in c.scores.items()}, "is_default": c.is_default}
                for c in self.configs
            ],
        }


def write_confirmation_json(out: Path, outcome: ConfirmOutcome) -> None:
    (out / CONFIRMATION_FILE).write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")


def read_confirmation_json(out: Path) -> dict[str, Any] | None:
    """``DIR/confirmation.json`` as written (None when the sweep has none: an older or unfinished sweep)."""
    path = Path(out) / CONFIRMATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def rung_scores(experiment_dir: str, probe_metric: str, epoch: int) -> dict[str, float]:
    """Each trial's rung score (its probe result at pre-training ``epoch``), from Tune's per-trial results."""
    from ray.tune import ExperimentAnalysis

    out = {}
    for trial_id, frame in ExperimentAnalysis(experiment_dir).trial_dataframes.items():
        if probe_metric not in frame or "epoch" not in frame:
            continue
        hit = frame[(frame["epoch"] == epoch) & frame[probe_metric].notna()]
        if len(hit):
            out[str(trial_id)] = float(hit[probe_metric].iloc[-1])
    return out


def probe_pairs(rows: Sequence[Any], rungs: Mapping[str, float]) -> list[tuple[float, float]]:
    """(rung score, final score) for every COMPLETE run that reported the rung."""
    return [
        (rungs[r.trial_id], float(r.score))
        for r in rows
        if r.state == "COMPLETE" and r.score is not None and r.trial_id in rungs
    ]


@dataclass(frozen=True)
class StageInputs:
    """What the confirmation stage needs from the sweep (built once by the driver)."""

    out: Path
    metric: str
    mode: str
    param_keys: list[str]
    base_seed: int
    top_k: int
    seeds: int  # 0: no confirmation
    search_dir: str  # the search's Ray experiment folder
    storage_path: str  # where the confirmation's experiment folder goes
    rung_epoch: int  # the pre-training epoch ASHA first prunes at
    prunes: bool  # ASHA was on
    rung: str  # what the rung score is: probe or finetune
    max_concurrent: int


def confirm_sweep(
    stage: StageInputs,
    search_rows: Sequence[Any],
    *,
    trainable: Any,
    sweep_entry: Mapping[str, Any],
    default: Mapping[str, Any],
    trial_name: Any = None,
    collect: Any,
    callbacks: Sequence[Any] = (),
) -> ConfirmOutcome:
    """Run the confirmation after the search, judge it, check the probe, write ``confirmation.json``.

    ``collect(experiment_dir, param_keys)`` reads an experiment folder into rows; ``default``: the paper's values
    of the searched keys.
    """
    from simmtm.confirmation import confirmation_candidates, judge
    from simmtm.probe_check import check_probe
    from simmtm.sweep.outputs import rank_configurations
    from simmtm.sweep.tune_state import snapshot_dir

    ranked = [g[0].params for g in rank_configurations(list(search_rows), stage.param_keys, stage.mode)]
    configs: list[ConfirmedConfig] = []
    confirm_rows: list[Any] = []
    verdict = None
    if stage.seeds > 0:
        plan = ConfirmPlan(tuple(confirmation_candidates(ranked, default, stage.top_k)), stage.seeds)
        log.info("confirmation: %d configuration(s) x %d fresh seed(s)", len(plan.candidates), plan.seeds)
        path = run_confirmation(
            trainable,
            sweep_entry,
            plan,
            storage_path=stage.storage_path,
            max_concurrent=stage.max_concurrent,
            trial_name=trial_name,
            callbacks=callbacks,
            snapshots=snapshot_dir(stage.out, CONFIRM_EXPERIMENT),
        )
        confirm_rows = collect(path, stage.param_keys)
        configs = confirmed_configs(confirm_rows, plan, base_seed=stage.base_seed)
        verdict = judge(configs, metric=stage.metric, mode=stage.mode)
        rungs = {
            **rung_scores(stage.search_dir, f"probe_{stage.metric}", stage.rung_epoch),
            **rung_scores(path, f"probe_{stage.metric}", stage.rung_epoch),
        }
    else:
        rungs = rung_scores(stage.search_dir, f"probe_{stage.metric}", stage.rung_epoch)
    pairs = probe_pairs([*search_rows, *confirm_rows], rungs)
    check = check_probe([p[0] for p in pairs], [p[1] for p in pairs], prunes=stage.prunes, rung=stage.rung)
    outcome = ConfirmOutcome(verdict, check, configs, pairs)
    write_confirmation_json(stage.out, outcome)
    return outcome
