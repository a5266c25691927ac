"""The confirmation verdict and its one sentence."""

import random

import pytest

from simmtm.tuning.spec import PAPER_DEFAULTS
from simmtm.verdict.confirmation import (
    ConfirmedConfig,
    confirmation_candidates,
    confirmation_seeds,
    detectable_difference,
    format_params,
    judge,
    seeds_for_half_width,
    sweep_noise,
)

CAND = {"pretrain.mask_ratio": 0.3, "pretrain.num_masked": 4, "pretrain.temperature": 0.2}


def _default(scores):
    return ConfirmedConfig(dict(PAPER_DEFAULTS), dict(zip(confirmation_seeds(0, len(scores)), scores)), is_default=True)


def _cand(params, scores, test=()):
    seeds = confirmation_seeds(0, len(scores))
    return ConfirmedConfig(dict(params), dict(zip(seeds, scores)), test_scores=dict(zip(seeds, test)))


def test_candidates_put_the_default_first_and_skip_it_among_the_top():
    ranked = [dict(PAPER_DEFAULTS), CAND, {"pretrain.mask_ratio": 0.7, "pretrain.num_masked": 2, "pretrain.temperature": 0.2}]
    out = confirmation_candidates(ranked, PAPER_DEFAULTS, top_k=2)
    assert out == [PAPER_DEFAULTS, CAND, ranked[2]]
    assert confirmation_candidates(ranked, PAPER_DEFAULTS, top_k=1) == [PAPER_DEFAULTS, CAND]
    assert confirmation_seeds(7, 3) == [1007, 1008, 1009]


def test_a_clear_winner_beats_the_default():
    v = judge([_default([1.00, 1.05, 1.10]), _cand(CAND, [0.90, 0.96, 0.99])], metric="val_mse", mode="min")
    assert v.status == "beats" and v.recommended == CAND
    s = v.sentence()
    assert s.startswith(
        "r = 0.3, M = 4, tau = 0.2 beats the paper's r = 0.5, M = 3 on validation by 0.1 val_mse (95 % interval"
    )
    assert "3 paired seeds" in s and "seed-to-seed spread" in s and s.endswith("the test split was not scored")
    assert v.to_dict()["sentence"] == s


def test_noise_keeps_the_default_and_bonferroni_widens_the_intervals():
    v = judge([_default([1.00, 1.05, 1.10]), _cand(CAND, [0.99, 1.07, 1.08]),
               _cand({**CAND, "pretrain.num_masked": 2}, [1.2, 1.0, 1.3])], metric="val_mse", mode="min")
    assert v.status == "keep_default" and v.recommended == PAPER_DEFAULTS and v.too_few_seeds
    assert v.sentence().startswith("too few seeds to tell whether r = 0.3, M = 4, tau = 0.2 beats the paper's")
    assert "0.00333 val_mse better than the default on validation" in v.sentence()
    assert v.sentence().endswith("keep r = 0.5, M = 3, or add seeds (tune.confirm.seeds)")
    assert "97.5 % interval" in v.sentence()  # two candidates share 5 %
    assert v.best_candidate == CAND


def test_too_few_paired_seeds_is_insufficient_and_r_beyond_the_official_range_is_marked():
    v = judge([_default([1.0, None, None]), _cand(CAND, [0.9, 0.8, 0.7])], metric="val_mse", mode="min")
    assert v.status == "insufficient" and v.sentence().startswith("no confirmed recommendation:")
    assert "beyond the official" in format_params({"pretrain.mask_ratio": 0.8, "pretrain.num_masked": 3})
    assert "beyond" not in format_params({"pretrain.mask_ratio": 0.75})
    with pytest.raises(ValueError, match="exactly one default"):
        judge([_cand(CAND, [1.0, 2.0])], metric="val_mse", mode="min")


def test_the_search_summary_marks_r_beyond_the_official_range():
    from simmtm.analysis.recommend import Recommendation

    rec = Recommendation("ok", "", "val_mse", "min", 3, params={"pretrain.mask_ratio": 0.8, "pretrain.num_masked": 3})
    assert "beyond the official code's reachable 0.75" in rec.summary()[0]
    rec.params["pretrain.mask_ratio"] = 0.7
    assert "beyond" not in rec.summary()[0]


def _pair(val, test):
    """The default at 1.0 on both splits, a candidate whose per-seed differences are ``val`` and ``test``."""
    n = len(val)
    default = ConfirmedConfig(
        dict(PAPER_DEFAULTS),
        dict(zip(confirmation_seeds(0, n), [1.0] * n)),
        is_default=True,
        test_scores=dict(zip(confirmation_seeds(0, n), [1.0] * n)),
    )
    return [default, _cand(CAND, [1.0 - d for d in val], [1.0 - d for d in test])]


def test_the_verdict_says_whether_the_test_split_agrees():
    carried = judge(_pair([0.10, 0.11, 0.12], [0.05, 0.06, 0.07]), metric="val_mse", mode="min")
    assert carried.status == "beats" and carried.test_agrees is True
    assert "; on the test split by 0.06 test mse (95 % interval 0.0352 to 0.0848)" in carried.sentence()
    lost = judge(_pair([0.10, 0.11, 0.12], [0.02, -0.03, 0.02]), metric="val_mse", mode="min")
    assert lost.status == "beats" and lost.test_agrees is False
    assert "on the test split the difference is within seed noise (0.00333 test mse better than the default" in (
        lost.sentence()
    )
    d = lost.to_dict()
    assert d["test_difference"]["n"] == 3 and d["test_agrees"] is False and d["difference"]["mean"] > 0


def test_a_candidate_worse_beyond_noise_is_said_to_be_worse():
    v = judge(_pair([-0.10, -0.11, -0.12], [-0.05, -0.06, -0.07]), metric="val_mse", mode="min")
    assert v.status == "keep_default" and not v.too_few_seeds and v.test_agrees is True
    s = v.sentence()
    assert "best candidate r = 0.3, M = 4, tau = 0.2: 0.11 val_mse worse than the default on validation" in s
    assert "on the test split 0.06 test mse worse than the default" in s and "+0." not in s


def test_one_noise_figure_pools_confirmation_and_search_repeats():
    configs = [_default([1.0, 3.0]), _cand(CAND, [8.0, 10.0, None])]
    spread = sweep_noise(configs, {"a": [12.0, 14.0, 16.0], "b": [5.0]})
    assert spread.n_configs == 3 and spread.n_runs == 7 and spread.sd == pytest.approx((12 / 4) ** 0.5)  # (2 + 2 + 8) / (7 - 3)
    assert judge(configs, metric="val_mse", mode="min", search={"a": [12.0, 14.0, 16.0]}).spread == spread


def test_power_the_detectable_difference_and_the_seeds_a_half_width_needs():
    # t(0.975, 2) = 4.303: three seeds of runs with SD 0.01 tell apart 4.303 * sqrt(2) * 0.01 / sqrt(3)
    assert detectable_difference(0.01, 3) == pytest.approx(0.035133, rel=1e-4)
    assert detectable_difference(0.01, 1) is None
    assert detectable_difference(0.01, 10) < detectable_difference(0.01, 5) < detectable_difference(0.01, 3)
    n = seeds_for_half_width(0.01, 0.01, cap=20)  # t(n-1) / sqrt(n) <= 1 first at n = 7 (2.447 / 2.646)
    assert n == 7
    assert seeds_for_half_width(0.01, 1e-6, cap=9) == 9


def _stage(tmp_path, confirm):
    from simmtm.tuning.confirm_stage import StageInputs
    from simmtm.tuning.spec import ConfirmSpec

    return StageInputs(
        out=tmp_path, metric="val_mse", mode="min", param_keys=list(CAND), base_seed=0,
        confirm=ConfirmSpec(**confirm), rung_epoch=1, prunes=False, rung="probe", max_concurrent=2,
    )


def _rounds(tmp_path, confirm, gain):
    """``seeds: auto`` on a fake runner: the candidate's score is the default's minus gain(seed). Like the driver's,
    the runner runs the named points that have no result yet and returns the rows of all; each round's new seeds."""
    import numpy as np

    from simmtm.tuning.confirm_stage import ConfirmPlan, _confirm_rounds
    from simmtm.tuning.outputs import TrialRow

    rounds, rows = [], {}
    noise = np.random.default_rng(0).normal(0, 0.01, 100)

    def run_points(points):
        new = [name for name in points if name not in rows]
        rounds.append(sorted({points[name]["repeat"] for name in new}))
        for name in new:
            point = points[name]
            params = {k: v for k, v in point.items() if k != "repeat"}
            score = 1.0 + noise[point["repeat"] - 1000] - (gain(point["repeat"]) if params == CAND else 0.0)
            rows[name] = TrialRow(name, "COMPLETE", params, repeat=point["repeat"], score=score, test_score=score)
        return [rows[name] for name in points]

    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), 3)
    _, configs, verdict = _confirm_rounds(_stage(tmp_path, confirm), plan, run_points, {})
    return rounds, verdict


_JITTER = {r: random.Random(r).gauss(0, 0.01) for r in range(1000, 1100)}  # per-seed noise of a difference


def test_auto_seeds_run_rounds_of_new_seeds_until_the_interval_is_narrow_enough(tmp_path):
    rounds, verdict = _rounds(tmp_path, {"seeds": "auto", "max_seeds": 12, "target_half_width": 0.01},
                              lambda r: 0.02 + _JITTER[r])
    assert rounds[0] == [1000, 1001, 1002] and len(rounds) >= 2
    flat = [r for rnd in rounds for r in rnd]
    assert flat == list(range(1000, 1000 + len(flat)))  # each round runs new seeds only, none twice
    d = verdict.difference
    assert d.n == len(flat) and ((d.ci[1] - d.ci[0]) / 2 <= 0.01 or d.n == 12)
    assert verdict.test_difference.n == d.n


def test_fixed_seeds_run_one_round_and_auto_stops_at_the_cap(tmp_path):
    rounds, verdict = _rounds(tmp_path, {"seeds": 3}, lambda r: 0.0)
    assert rounds == [[1000, 1001, 1002]] and verdict.difference.n == 3
    rounds, verdict = _rounds(tmp_path, {"seeds": "auto", "max_seeds": 5}, _JITTER.get)  # no difference to find
    assert [r for rnd in rounds for r in rnd] == [1000, 1001, 1002, 1003, 1004] and verdict.too_few_seeds


def test_the_power_line_states_the_smallest_difference_the_seeds_detect():
    from simmtm.tuning.confirm_stage import ConfirmPlan, PlanNoise, power_line
    from simmtm.tuning.spec import ConfirmSpec
    from simmtm.verdict.stats import SeedSpread

    plan = ConfirmPlan((dict(PAPER_DEFAULTS), CAND), 3)
    line = power_line(plan, PlanNoise(SeedSpread(0.01, 2, 6, 4), "from this sweep's search, 6 runs"),
                      ConfirmSpec(seeds=3), "val_mse")
    assert "2 configuration(s) x 3 fresh paired seed(s)" in line and "about 0.0351 val_mse or more" in line
    assert "(seed noise 0.01 SD from this sweep's search, 6 runs;" in line
    line = power_line(plan, PlanNoise(None, "none measured"), ConfirmSpec(seeds="auto", max_seeds=8), "val_mse")
    assert "no seed noise figure yet (none measured)" in line and "8 at most" in line
    one = power_line(ConfirmPlan((dict(PAPER_DEFAULTS), CAND), 1), PlanNoise(SeedSpread(0.01, 2, 6, 4), "x"),
                     ConfirmSpec(seeds=1), "val_mse")
    assert "one seed gives no interval" in one  # no t interval from one seed (was a format error on None)
