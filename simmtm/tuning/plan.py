"""``simmtm sweep --dry-run``: the trial plan of a sweep file, without starting Ray or training anything.

The plan says what a trial holds (workers, CPUs and GPUs), how many trials run at once on this machine (or that a
cluster decides it at start), the first configurations the sampler proposes (the same ``SweepSearch`` as the real
sweep's study, ``SweepStudy.of_sweep``, in memory), and ASHA's rungs: the pre-training epochs at which it may stop a
trial, as Ray's ``ASHAScheduler`` computes them from the driver's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simmtm.cluster import ray_session
from simmtm.config.schema import RunConfig, load_config
from simmtm.tuning.preflight import concurrency as trials_at_once
from simmtm.tuning.sections import sweep_spec
from simmtm.tuning.spec import SweepSpec

__all__ = ["SweepPlan", "plan_sweep", "asha_rungs"]

SHOWN_CONFIGURATIONS = 5


@dataclass(frozen=True)
class SweepPlan:
    trials: int  # configurations times repeats
    configurations: int
    repeats: int
    per_trial: str  # what one trial holds
    concurrency: int | None  # trials at once on this machine; None: decided by the cluster at start
    first: list[dict[str, Any]]  # the first configurations, in the order the sampler proposes them
    scheduler: str
    rungs: list[int]  # epochs at which ASHA may stop a trial (empty: fifo)
    epochs: int

    def lines(self) -> list[str]:
        at_once = "decided by the cluster at start" if self.concurrency is None else str(self.concurrency)
        lines = [
            f"trials: {self.trials} ({self.configurations} configurations x {self.repeats} repeats)",
            f"per trial: {self.per_trial}",
            f"at once: {at_once}",
            f"scheduler: {self.scheduler}, {self.epochs} pre-training epochs"
            + (
                f"; ASHA rungs at epochs {', '.join(map(str, self.rungs))} ({len(self.rungs)} rungs)"
                if self.rungs
                else "; every trial runs to the end"
                if self.scheduler == "fifo"
                else "; no rung before the last epoch"
            ),
            f"first {len(self.first)} configurations:",
        ]
        for i, point in enumerate(self.first, 1):
            lines.append(f"  {i}. " + "  ".join(f"{k}={_short(v)}" for k, v in point.items()))
        return lines


def plan_sweep(sweep_file: str | Path, overrides: list[str] | None = None, *, address: str | None = None) -> SweepPlan:
    """The plan of ``sweep_file``: validated as the real sweep validates it; no data is read, no Ray started."""
    config = load_config(sweep_file, overrides)
    spec = sweep_spec(config, sweep_file)
    configurations = spec.tune.resolved_samples(spec.search)
    concurrency = None
    if address is None:
        concurrency = trials_at_once(
            spec, ray_session.check_resources(spec.resources, nodes=[ray_session.local_node()])
        )
    r = spec.resources
    per_trial = f"{r.workers} worker(s) x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)"
    sched = spec.tune.scheduler
    epochs = config.pretrain.epochs
    rungs = asha_rungs(spec, epochs) or []
    return SweepPlan(
        trials=spec.tune.planned_trials(spec.search),
        configurations=configurations,
        repeats=spec.tune.repeats,
        per_trial=per_trial,
        concurrency=concurrency,
        first=_first_configurations(config, spec, min(SHOWN_CONFIGURATIONS, configurations)),
        scheduler=sched.type,
        rungs=rungs,
        epochs=epochs,
    )


def asha_rungs(spec: SweepSpec, epochs: int) -> list[int] | None:
    """The epochs at which ASHA compares probe scores and may stop a trial (as Ray's ``ASHAScheduler`` places them:
    ``max_t`` = epochs + 1, ``grace_period`` capped at the epochs; the one at ``max_t`` is never reached); None
    without ASHA (``tune.scheduler.type: fifo``). The sweep's pruner (``engine.make_pruner``) and the plan read it."""
    sched = spec.tune.scheduler
    if sched.type != "asha":
        return None
    min_t, max_t, rf = min(sched.grace_period, epochs), epochs + 1, sched.reduction_factor
    count = int(math.log(max_t / min_t) / math.log(rf) + 1)  # Ray's MAX_RUNGS with one bracket (s = 0)
    milestones = sorted(min_t * rf**k for k in range(count))
    # a trial probes every probe_every epochs and always at its last: every milestone up to the epochs is reached
    return [int(math.ceil(m)) for m in milestones if m <= epochs]


def _first_configurations(config: RunConfig, spec: SweepSpec, count: int) -> list[dict[str, Any]]:
    """What the sweep's study proposes first (the same ``SweepStudy`` as the real sweep, in memory; repeats share a
    configuration, so one is asked per configuration)."""
    import optuna

    from simmtm.tuning.study import SweepStudy  # lazy, as Optuna: the plan's other lines need neither

    study = SweepStudy.of_sweep(
        optuna.storages.InMemoryStorage(), "dry-run", spec, config, mode=spec.tune.mode or "min"
    )
    return [{k: v for k, v in study.ask().params.items() if k in spec.search.keys} for _ in range(count)]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
