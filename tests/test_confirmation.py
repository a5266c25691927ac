"""The confirmation verdict and its one sentence."""

import pytest

from simmtm.confirmation import (
    PAPER_DEFAULTS,
    ConfirmedConfig,
    confirmation_candidates,
    confirmation_seeds,
    format_params,
    judge,
)

CAND = {"pretrain.mask_ratio": 0.3, "pretrain.num_masked": 4, "pretrain.temperature": 0.2}


def _default(scores):
    return ConfirmedConfig(dict(PAPER_DEFAULTS), dict(zip(confirmation_seeds(0, len(scores)), scores)), is_default=True)


def _cand(params, scores):
    return ConfirmedConfig(dict(params), dict(zip(confirmation_seeds(0, len(scores)), scores)))


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
    assert s.startswith("r = 0.3, M = 4, tau = 0.2 beats the paper's r = 0.5, M = 3 by 0.1 val_mse (95 % interval")
    assert "3 paired seeds" in s and "seed-to-seed spread" in s
    assert v.to_dict()["sentence"] == s


def test_noise_keeps_the_default_and_bonferroni_widens_the_intervals():
    v = judge([_default([1.00, 1.05, 1.10]), _cand(CAND, [0.99, 1.07, 1.08]),
               _cand({**CAND, "pretrain.num_masked": 2}, [1.2, 1.0, 1.3])], metric="val_mse", mode="min")
    assert v.status == "keep_default" and v.recommended == PAPER_DEFAULTS
    assert v.sentence().startswith("nothing beats the paper's defaults beyond seed noise (seed-to-seed spread")
    assert v.sentence().endswith("keep r = 0.5, M = 3")
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
