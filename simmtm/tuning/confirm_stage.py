"""The confirmation stage, run with Ray Tune: fixed configurations x fresh seeds, paired, resumable.

After the search the driver hands ``confirm_sweep`` the configurations to confirm (the paper's default first,
then the search's top k: ``simmtm.verdict.confirmation.confirmation_candidates``) and the number of seeds. Every
configuration runs with the same fresh seeds (repeat indices ``CONFIRM_SEED_OFFSET + i``, so the trial's seed is
the sweep's seed + that index), at full budget: all pre-training epochs, then the full fine-tune, no pruning.

Each run is named by its configuration and seed (``confirm_points``) and keeps its checkpoint and result in its own
folder (``simmtm.tuning.record``); the driver's ``run_points`` runs the points that have no result yet (on the
search's trainable, resources and concurrency) and returns every point's row, so a resumed sweep re-runs no finished
confirmation run and continues an unfinished one from its checkpoint.

Each confirmation run also scores the test split once (``TrialSpec.score_test``): the verdict reports the confirmed
pair's test difference beside the validation one. Before the runs a log line states the smallest difference the
seeds can tell apart (``power_line``), from the search's seed noise when its repeats measure it, else from the figure
an earlier sweep stored (``tune.confirm.noise_from``, else the ``--warm-start`` folder: ``plan_noise``).
``tune.confirm.seeds: auto`` runs seeds in rounds until the pair's interval is narrow enough or
``tune.confirm.max_seeds`` ran; the first round is 3 seeds, or as many as that noise says a target half-width needs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simmtm.errors import UserError
from simmtm.tuning.outputs import rank_configurations, read_sweep_json
from simmtm.tuning.spec import ConfirmSpec
from simmtm.verdict.confirmation import (
    CONFIRM_SEED_OFFSET,
    ConfirmedConfig,
    Verdict,
    confirmation_candidates,
    detectable_difference,
    judge,
    same_params,
    seeds_for_half_width,
    sweep_noise,
)
from simmtm.verdict.probe_check import ProbeCheck, check_probe
from simmtm.verdict.stats import SeedSpread

__all__ = [
    "CONFIRMATION_FILE",
    "ConfirmPlan",
    "ConfirmOutcome",
    "confirm_points",
    "next_seeds",
    "first_seeds",
    "PlanNoise",
    "plan_noise",
    "stored_noise",
    "earlier_noise",
    "check_noise_from",
    "power_line",
    "confirmed_configs",
    "write_confirmation_json",
    "read_confirmation_json",
    "rung_scores",
    "probe_pairs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfirmPlan:
    """The configurations to confirm (the default first) and the seed offsets they all run with (``seeds: auto``
    grows ``seeds`` by rounds; the runs of earlier rounds have results and are not run again)."""

    candidates: tuple[dict[str, Any], ...]
    seeds: int

    @property
    def repeats(self) -> list[int]:
        return [CONFIRM_SEED_OFFSET + i for i in range(self.seeds)]


def confirm_points(plan: ConfirmPlan) -> dict[str, dict[str, Any]]:
    """One named run per (seed, configuration), seed-major: every configuration gets seed 1 before any gets seed 2,
    so an interrupted confirmation still holds complete pairs. ``confirm-<c>-<repeat>``: configuration ``c`` of the
    plan (0, the paper's default), repeat index ``repeat``."""
    return {
        f"confirm-{c}-{repeat}": {"repeat": repeat, **params}
        for repeat in plan.repeats
        for c, params in enumerate(plan.candidates)
    }


def confirmed_configs(rows: Sequence[Any], plan: ConfirmPlan, *, base_seed: int) -> list[ConfirmedConfig]:
    """The confirmation's scores by configuration and training seed (rows: ``TrialRow`` of the confirm folder;
    a run that did not finish counts as None)."""

    out = []
    for i, params in enumerate(plan.candidates):
        scores: dict[int, float | None] = {base_seed + r: None for r in plan.repeats}
        tests = dict(scores)
        for row in rows:
            if same_params({k: row.params.get(k) for k in params}, params) and row.repeat in plan.repeats:
                complete = row.state == "COMPLETE"
                scores[base_seed + row.repeat] = row.score if complete else None
                tests[base_seed + row.repeat] = row.test_score if complete else None
        out.append(ConfirmedConfig(dict(params), scores, is_default=i == 0, test_scores=tests))
    return out


@dataclass(frozen=True)
class PlanNoise:
    """The seed noise the confirmation plans its seeds with, and where it comes from (in words, for the log line)."""

    spread: SeedSpread | None  # None: no figure yet (``source`` says why)
    source: str


def stored_noise(confirmation: Mapping[str, Any] | None) -> SeedSpread | None:
    """The seed noise a sweep stored with its verdict (``confirmation.json``'s ``verdict.seed_spread``, which
    ``sweep_noise`` pooled over its confirmation runs and search repeats); None when it stored none."""
    verdict = (confirmation or {}).get("verdict") or {}
    return SeedSpread(**verdict["seed_spread"]) if verdict.get("seed_spread") else None


def earlier_noise(folder: str | Path, *, metric: str, key: str) -> SeedSpread | None:
    """The seed noise the earlier sweep in ``folder`` stored (None: it stored none). UserError (naming ``key``, the
    setting that named the folder) when ``folder`` is not a sweep directory or its sweep scored another metric."""

    try:
        meta = read_sweep_json(Path(folder))
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None
    if meta.metric != metric:
        raise UserError(
            f"{key}: the sweep in {folder} scored {meta.metric}, this one scores {metric}; its seed noise does not "
            "apply (name an earlier sweep of the same metric)"
        )
    return stored_noise(read_confirmation_json(Path(folder)))


def check_noise_from(confirm: ConfirmSpec, *, metric: str) -> None:
    """UserError before any trial runs when ``tune.confirm.noise_from`` names no sweep directory of this metric."""
    if confirm.noise_from and confirm.seeds != 0:
        earlier_noise(confirm.noise_from, metric=metric, key="tune.confirm.noise_from")


def plan_noise(search: SeedSpread, confirm: ConfirmSpec, *, metric: str, warm_start: str | None) -> PlanNoise:
    """This search's seed noise when its repeats measure it, else the figure an earlier sweep stored:
    ``tune.confirm.noise_from``, else the ``--warm-start`` folder. One that cannot be read is passed over, warned."""
    if search.sd is not None:
        return PlanNoise(search, f"from this sweep's search, {search.n_runs} runs")
    none = "no searched configuration ran with two seeds"
    folder, key = (
        (confirm.noise_from, "tune.confirm.noise_from") if confirm.noise_from else (warm_start, "--warm-start")
    )
    if folder is None:
        return PlanNoise(None, f"{none}, and no earlier sweep is named: tune.confirm.noise_from or --warm-start")
    try:
        earlier = earlier_noise(folder, metric=metric, key=key)
    except UserError as exc:
        log.warning("%s; the confirmation plans without its seed noise", exc)
        earlier = None
    if earlier is None or earlier.sd is None:
        return PlanNoise(None, f"{none}, and the earlier sweep {folder} has no seed noise figure")
    return PlanNoise(earlier, f"from the earlier sweep {folder}, {earlier.n_runs} runs")


def first_seeds(confirm: ConfirmSpec, noise: SeedSpread | None) -> int:
    """The seeds of the first round: ``seeds``; with ``auto``, 3, or more when the seed noise says that the target
    half-width needs more (as ``detectable_difference`` counts: paired runs taken as independent; ``max_seeds`` at
    most)."""
    if confirm.seeds != "auto":
        return confirm.seeds
    if noise is None or noise.sd is None or confirm.target_half_width is None:
        return 3
    needed = seeds_for_half_width(math.sqrt(2) * noise.sd, confirm.target_half_width, cap=confirm.max_seeds)
    return max(3, needed)


def power_line(plan: ConfirmPlan, noise: PlanNoise, confirm: ConfirmSpec, metric: str) -> str:
    """What the confirmation can tell before it runs: the smallest difference its seeds detect, given the noise."""
    what = f"confirmation: {len(plan.candidates)} configuration(s) x {plan.seeds} fresh paired seed(s)"
    if confirm.seeds == "auto" and plan.seeds < confirm.max_seeds:
        target = f"{confirm.target_half_width:.3g}" if confirm.target_half_width else "the difference it claims"
        what += (
            f" first, more in rounds until the interval's half-width is at most {target} ({confirm.max_seeds} at most)"
        )
    elif confirm.seeds == "auto":
        what += " (tune.confirm.max_seeds: the seed noise asks for at least as many; no further round)"
    spread = noise.spread
    if spread is None or spread.sd is None:
        return f"{what}; no seed noise figure yet ({noise.source}): these runs measure it"
    small = detectable_difference(spread.sd, plan.seeds)
    if small is None:
        return f"{what}; one seed gives no interval (seed noise {spread.sd:.3g} SD {noise.source})"
    return (
        f"{what}; {plan.seeds} seeds tell apart a difference of about {small:.3g} {metric} or more (seed noise "
        f"{spread.sd:.3g} SD {noise.source}; the 95 % interval's half-width were the paired runs independent; "
        "pairing by seed usually narrows it)"
    )


def next_seeds(confirm: ConfirmSpec, verdict: Verdict, n: int) -> int:
    """The seed count after the next round of ``seeds: auto`` (``n``: no further round): enough for the confirmed
    pair's interval to reach the target half-width (else to be narrower than its difference), at most ``max_seeds``."""
    d = verdict.difference
    if confirm.seeds != "auto" or d is None or d.ci is None or d.sd is None or n >= confirm.max_seeds:
        return n
    target = confirm.target_half_width or abs(d.mean)
    if (d.ci[1] - d.ci[0]) / 2 <= target:
        return n
    return max(n + 1, seeds_for_half_width(d.sd, target, cap=confirm.max_seeds, confidence=d.confidence))


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
                {
                    "params": c.params,
                    "scores": {str(s): v for s, v in c.scores.items()},
                    "test_scores": {str(s): v for s, v in c.test_scores.items()},
                    "is_default": c.is_default,
                }
                for c in self.configs
            ],
        }


def write_confirmation_json(out: Path, outcome: ConfirmOutcome) -> None:
    (out / CONFIRMATION_FILE).write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")


def read_confirmation_json(out: Path) -> dict[str, Any] | None:
    """``DIR/confirmation.json`` as written (None when the sweep has none: an older or unfinished sweep)."""
    path = Path(out) / CONFIRMATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def rung_scores(rows: Sequence[Any], epoch: int) -> dict[str, float]:
    """Each run's rung score (its probe score at pre-training ``epoch``), from its row (``extra["probes"]``)."""
    return {r.trial_id: r.extra["probes"][epoch] for r in rows if epoch in r.extra.get("probes", {})}


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
    confirm: ConfirmSpec  # tune.confirm (seeds 0: no confirmation)
    rung_epoch: int  # the pre-training epoch ASHA first prunes at
    prunes: bool  # ASHA was on
    rung: str  # what the rung score is: probe or finetune
    max_concurrent: int
    warm_start: str | None = None  # the earlier sweep --warm-start seeded the study from (sweep.json's warm_start)


def confirm_sweep(
    stage: StageInputs,
    search_rows: Sequence[Any],
    *,
    run_points: Callable[[dict[str, dict[str, Any]]], list[Any]],
    default: Mapping[str, Any],
) -> ConfirmOutcome:
    """Run the confirmation after the search, judge it, check the probe, write ``confirmation.json``.

    ``run_points(points)`` runs the named points (``confirm_points``) that have not finished and returns the rows of
    all of them; ``default``: the paper's values of the searched keys.
    """

    groups = rank_configurations(list(search_rows), stage.param_keys, stage.mode)
    search = {i: [r.score for r in g if r.score is not None] for i, g in enumerate(groups)}
    configs: list[ConfirmedConfig] = []
    confirm_rows: list[Any] = []
    verdict = None
    if stage.confirm.seeds != 0:
        candidates = confirmation_candidates([g[0].params for g in groups], default, stage.confirm.top_k)
        noise = plan_noise(sweep_noise([], search), stage.confirm, metric=stage.metric, warm_start=stage.warm_start)
        plan = ConfirmPlan(tuple(candidates), first_seeds(stage.confirm, noise.spread))
        log.info("%s", power_line(plan, noise, stage.confirm, stage.metric))
        confirm_rows, configs, verdict = _confirm_rounds(stage, plan, run_points, search)
    rows = [*search_rows, *confirm_rows]
    pairs = probe_pairs(rows, rung_scores(rows, stage.rung_epoch))
    check = check_probe([p[0] for p in pairs], [p[1] for p in pairs], prunes=stage.prunes, rung=stage.rung)
    outcome = ConfirmOutcome(verdict, check, configs, pairs)
    write_confirmation_json(stage.out, outcome)
    return outcome


def _confirm_rounds(
    stage: StageInputs, plan: ConfirmPlan, run_points: Any, search: Mapping[Any, Sequence[float]]
) -> tuple[list[Any], list[ConfirmedConfig], Verdict]:
    """Run the plan's seeds, then (``seeds: auto``) rounds of more seeds while the verdict asks for them."""
    while True:
        rows = run_points(confirm_points(plan))  # the seeds of earlier rounds have results: not run again
        configs = confirmed_configs(rows, plan, base_seed=stage.base_seed)
        verdict = judge(configs, metric=stage.metric, mode=stage.mode, search=search)
        more = next_seeds(stage.confirm, verdict, plan.seeds)
        if more == plan.seeds:
            return rows, configs, verdict
        if verdict.difference is None or verdict.difference.n < plan.seeds:
            log.warning("confirmation: the round of %d seeds finished fewer pairs; no further round", plan.seeds)
            return rows, configs, verdict
        log.info(
            "confirmation: the interval is wider than asked after %d seeds: %d more", plan.seeds, more - plan.seeds
        )
        plan = ConfirmPlan(plan.candidates, more)
