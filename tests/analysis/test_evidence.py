"""The evidence figures and the heatmap's noise-aware colour scale."""

import numpy as np

from simmtm.analysis.evidence import NOISE_SPAN, confirmation_figure, heatmap_scale, probe_figure
from simmtm.tuning.spec import PAPER_DEFAULTS
from simmtm.verdict.confirmation import ConfirmedConfig, judge
from simmtm.verdict.probe_check import check_probe


def test_the_colour_scale_does_not_stretch_noise_over_the_full_range():
    flat = np.array([[1.000, 1.001], [1.002, np.nan]])
    assert heatmap_scale(flat, noise_sd=0.01, mode="min") == (1.0, 1.0 + NOISE_SPAN * 0.01)
    assert heatmap_scale(flat, noise_sd=0.01, mode="max") == (1.002 - NOISE_SPAN * 0.01, 1.002)
    steep = np.array([1.0, 2.0])
    assert heatmap_scale(steep, noise_sd=0.01, mode="min") == (1.0, 2.0)  # a real surface keeps its own range
    assert heatmap_scale(flat, noise_sd=None, mode="min") == (None, None)


def test_the_figures_draw_the_data_and_the_sentence():
    configs = [ConfirmedConfig(dict(PAPER_DEFAULTS), {1000: 1.0, 1001: 1.1}, is_default=True),
               ConfirmedConfig({**PAPER_DEFAULTS, "pretrain.mask_ratio": 0.3}, {1000: 0.98, 1001: 1.12})]
    verdict = judge(configs, metric="val_mse", mode="min")
    fig = confirmation_figure(configs, metric="val_mse", sentence=verdict.sentence())
    ax = fig.axes[0]
    assert len(ax.lines) == 2  # one line per seed joins its runs
    assert "keep r = 0.5, M = 3" in ax.get_title().replace("\n", " ")
    check = check_probe([1, 2, 3, 4], [4, 3, 2, 1], prunes=True)
    fig = probe_figure([1, 2, 3, 4], [4, 3, 2, 1], metric="val_mse", rung_name=check.rung, line=check.line(),
                       warning=check.warning is not None)
    assert len(fig.axes[0].collections[0].get_offsets()) == 4 and "WARNING" in fig.axes[0].get_title().replace("\n", " ")
