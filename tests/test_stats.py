"""The statistics of the recommendation, on hand-computed numbers."""

import math

import numpy as np
import pytest

from simmtm.verdict.stats import paired_difference, seed_spread, spearman, tied_with_best


def test_seed_spread_pools_within_configuration_deviations():
    # group a: mean 2, squares 1+1 = 2; group b: mean 10, squares 4+0+4 = 8; c has one run and is left out.
    spread = seed_spread({"a": [1.0, 3.0], "b": [8.0, 10.0, 12.0], "c": [100.0]})
    assert spread.n_configs == 2 and spread.n_runs == 5 and spread.df == 3
    assert spread.sd == pytest.approx(math.sqrt(10 / 3))
    assert seed_spread({"a": [1.0], "b": [2.0]}).sd is None


def test_paired_difference_is_an_improvement_in_the_better_direction():
    a, b = [0.90, 0.95, 1.00], [1.00, 1.06, 1.09]  # A lower every seed: better when minimising
    d = paired_difference(a, b, mode="min")
    diffs = np.array([0.10, 0.11, 0.09])
    assert d.mean == pytest.approx(diffs.mean())
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert d.ci == pytest.approx((diffs.mean() - half, diffs.mean() + half), rel=1e-5)
    assert d.significant
    assert paired_difference(a, b, mode="max").mean == pytest.approx(-diffs.mean())
    assert not paired_difference(a, b, mode="max").significant


def test_paired_difference_within_noise_is_not_significant():
    d = paired_difference([1.0, 2.0, 3.0], [1.5, 1.0, 3.2], mode="min")
    assert d.ci[0] < 0 < d.ci[1] and not d.significant
    one = paired_difference([1.0], [2.0], mode="min")
    assert one.ci is None and not one.significant
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0], mode="min")


def test_spearman_and_its_interval():
    r = spearman([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert r.rho == pytest.approx(-1.0) and r.ci[1] < 0
    r = spearman([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7])
    assert 0 < r.ci[0] < r.rho < r.ci[1] < 1
    assert spearman([1, 2], [2, 1]).rho is None  # too few runs
    assert spearman([1, 2, 3], [1, 3, 2]).ci is None  # a rho, but no interval below 4 runs
    assert spearman([1, 2, 3, 4], [5, 5, 5, 5]).rho is None  # a constant score ranks nothing
    assert "Spearman -1.00" in spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]).describe()


def test_tied_with_best_uses_the_seed_noise():
    groups = {"best": [1.00, 1.02], "close": [1.03, 1.01], "far": [2.0, 2.1]}
    assert tied_with_best(groups, mode="min") == {"best", "close"}
    # With a much larger seed noise everything is a tie; without any noise estimate only the best is named.
    assert tied_with_best(groups, mode="min", noise_sd=5.0) == {"best", "close", "far"}
    assert tied_with_best({"a": [1.0], "b": [1.1]}, mode="max") == {"b"}
    assert tied_with_best({"a": [1.0], "b": [1.1]}, mode="max", noise_sd=0.01) == {"b"}


def test_the_probe_check_warns_only_when_pruning_on_a_probe_that_does_not_predict():
    from simmtm.verdict.probe_check import check_probe

    final = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    good = check_probe([0.5 + 0.1 * i for i in range(10)], final, prunes=True)
    assert good.correlation.rho == pytest.approx(1.0) and good.warning is None
    reverse = check_probe(final[::-1], final, prunes=True)
    assert "ranks trials against the final score" in reverse.warning and "WARNING" in reverse.line()
    assert check_probe(final[::-1], final, prunes=False).warning is None  # FIFO: nothing was pruned on it
    few = check_probe([1.0, 2.0], [1.0, 2.0], prunes=True)
    assert few.correlation.rho is None and "could not be checked" in few.warning
