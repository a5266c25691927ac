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

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simmtm.confirmation import CONFIRM_SEED_OFFSET, ConfirmedConfig, same_params

__all__ = ["CONFIRM_EXPERIMENT", "ConfirmPlan", "confirm_points", "run_confirmation", "confirmed_configs"]

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
) -> str:
    """Run (or resume) the confirmation trials; return their experiment folder (``storage_path/confirm``)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    path = f"{storage_path.rstrip('/')}/{CONFIRM_EXPERIMENT}"
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # probe and final results carry different keys
    if tune.Tuner.can_restore(path):
        log.info("confirmation: resuming %s (finished runs are kept)", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        points = confirm_points(plan)
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(sweep_entry, points),
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent),
                num_samples=len(points), max_concurrent_trials=max_concurrent,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(name=CONFIRM_EXPERIMENT, storage_path=storage_path,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=list(callbacks), verbose=verbose),
        )
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
