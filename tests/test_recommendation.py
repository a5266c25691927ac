"""The recommendation's choice on plain numbers (``simmtm.verdict.recommendation``); the sweep-level tests are in
tests/analysis/test_recommend.py."""

import numpy as np

from simmtm.verdict.recommendation import pick_centre, stability


def test_stability_by_counts_equals_picking_in_every_resample() -> None:
    rng = np.random.default_rng(0)
    for case in range(10):
        n = int(rng.integers(3, 60))
        u = rng.random((n, 2))
        near = (np.abs(u[:, None, :] - u[None, :, :]) <= 0.2).all(-1)
        good = -rng.random(n)  # continuous scores: no two neighbourhood means tie
        need, centre = int(rng.integers(1, 6)), int(rng.integers(0, n))
        draws = np.random.default_rng(case).integers(0, n, size=(40, n))
        hits = 0
        for idx in draws:  # the definition: pick a centre among the resample's own rows
            sub = near[np.ix_(idx, idx)]
            hits += bool(near[centre, idx[pick_centre(sub, good[idx], min(need, int(sub.sum(axis=1).max())))]])
        assert stability(near, good, need, centre, n_boot=40, rng=np.random.default_rng(case)) == hits / 40
