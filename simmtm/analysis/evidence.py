"""Figures of the evidence behind a recommendation: the paired confirmation runs and the probe-versus-final check,
plus the r x M heatmap's noise-aware colour scale.

The functions take plain data (scores, the verdict, the probe check), so the report, the notebooks and the tests
call them the same way; none reads files or keeps pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from simmtm.verdict.confirmation import ConfirmedConfig, format_params

__all__ = ["heatmap_scale", "NOISE_SPAN", "confirmation_figure", "probe_figure", "confirmed_from_json"]

# The colour scale of a heatmap spans at least this many seed-noise SDs: a surface flatter than the noise then
# shows as flat instead of stretching its noise over the whole colour range.
NOISE_SPAN = 4.0


def heatmap_scale(means: np.ndarray, *, noise_sd: float | None, mode: str) -> tuple[float | None, float | None]:
    """(vmin, vmax) for the heatmap's colours: the cell means' range, widened on the worse side to ``NOISE_SPAN``
    seed-noise SDs when it is narrower (None, None: matplotlib's own range, when the noise is unknown)."""
    finite = means[np.isfinite(means)]
    if noise_sd is None or not finite.size or not math.isfinite(noise_sd) or noise_sd <= 0:
        return None, None
    low, high = float(finite.min()), float(finite.max())
    span = NOISE_SPAN * noise_sd
    if high - low >= span:
        return low, high
    return (low, low + span) if mode == "min" else (high - span, high)


def confirmation_figure(configs: Sequence[ConfirmedConfig], *, metric: str, sentence: str) -> Figure:
    """Each confirmed configuration's score per seed; a grey line joins the runs of one seed (the pairing)."""
    fig = Figure(figsize=(max(6.0, 2.3 * len(configs) + 1.5), 4.4), layout="constrained")
    ax = fig.add_subplot()
    labels = [
        ("paper default\n" if c.is_default else "") + format_params(c.params).replace(", ", "\n") for c in configs
    ]
    seeds = sorted({s for c in configs for s in c.scores})
    for seed in seeds:
        ys = [c.finished().get(seed, np.nan) for c in configs]
        ax.plot(range(len(configs)), ys, color="grey", alpha=0.5, lw=1, marker="o", ms=4)
    means = np.array([np.mean(list(c.finished().values())) if c.finished() else np.nan for c in configs])
    ax.scatter(range(len(configs)), means, marker="_", s=900, color="tab:red", zorder=3, label="mean over seeds")
    ax.set_xticks(range(len(configs)), labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(_wrap(sentence, 95), fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def probe_figure(
    rung: Sequence[float], final: Sequence[float], *, metric: str, rung_name: str, line: str, warning: bool
) -> Figure:
    """The rung score (what ASHA prunes on) against the final score, one point per run that has both."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(rung, final, s=22, alpha=0.8)
    ax.set_xlabel(f"{rung_name} score ({metric}, the rung ASHA prunes on)")
    ax.set_ylabel(f"final {metric} (full fine-tune)")
    ax.set_title(_wrap(line, 70), fontsize=8, color="tab:red" if warning else "black")
    ax.grid(alpha=0.3)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return textwrap.fill(text, width)


def confirmed_from_json(configs: Sequence[dict]) -> list[ConfirmedConfig]:
    """``confirmation.json``'s ``configs`` back as ``ConfirmedConfig`` (seeds are written as strings)."""
    return [
        ConfirmedConfig(
            dict(c["params"]),
            {int(s): v for s, v in c["scores"].items()},
            bool(c["is_default"]),
            {int(s): v for s, v in c.get("test_scores", {}).items()},  # absent in sweeps before the test split
        )
        for c in configs
    ]
