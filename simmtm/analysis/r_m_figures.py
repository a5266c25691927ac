"""The figures of r against M (matplotlib): the r x M heatmap of mean scores, with the cells tied with the best
marked, and the best M in each bin of r with the fitted line (``simmtm.analysis.best_m``).

Like every figure function (``simmtm.analysis.figures``), each takes a loaded ``Sweep`` and returns a figure; none
reads files or keeps global pyplot state.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from simmtm.analysis.evidence import NOISE_SPAN, heatmap_scale
from simmtm.analysis.levels import levels_of
from simmtm.analysis.load import M_KEY, R_KEY, Sweep
from simmtm.analysis.noise import seed_noise
from simmtm.verdict.confirmation import OFFICIAL_MAX_R
from simmtm.verdict.stats import tied_with_best

__all__ = ["heatmap_matrix", "cell_digits", "draw_heatmap", "heatmap_ties", "heatmap_figure", "m_vs_r_figure"]


def _cmap(sweep: Sweep) -> str:
    return "viridis_r" if sweep.mode == "min" else "viridis"  # the better end is always yellow


# --- r x M -----------------------------------------------------------------------------------------------------


def heatmap_matrix(sweep: Sweep, *, n_bins: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean score, trial count) per r level (rows) and M level (columns); NaN where no trial landed."""
    if R_KEY not in sweep.params or M_KEY not in sweep.params:
        raise ValueError("the sweep did not search both r (pretrain.mask_ratio) and M (pretrain.num_masked)")
    done = sweep.finished.dropna(subset=[R_KEY, M_KEY])
    r = levels_of(done[R_KEY], sweep.distributions.get(R_KEY), n_bins=n_bins)
    m = levels_of(done[M_KEY], sweep.distributions.get(M_KEY), n_bins=n_bins)
    sums = np.zeros((len(r.labels), len(m.labels)))
    counts = np.zeros_like(sums)
    np.add.at(sums, (r.index, m.index), done["score"].to_numpy(float))
    np.add.at(counts, (r.index, m.index), 1)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)
    index = pd.Index(r.labels, name="r")
    columns = pd.Index(m.labels, name="M")
    return pd.DataFrame(means, index=index, columns=columns), pd.DataFrame(
        counts.astype(int), index=index, columns=columns
    )


def cell_digits(values: np.ndarray) -> int:
    """Decimals that tell the cells apart: one below the order of the spread (at least 3; 0.1065 vs 0.1079 needs 4)."""
    finite = values[np.isfinite(values)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    if spread <= 0:
        return 3
    return int(min(8, max(3, math.ceil(-math.log10(spread)) + 1)))


def draw_heatmap(
    ax: Any,
    means: pd.DataFrame,
    counts: pd.DataFrame,
    sweep: Sweep,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    fontsize: int = 8,
) -> Any:
    """The r x M cells on ``ax``: mean score and trial count in each, blank where no trial ran; returns the image."""
    cmap = matplotlib.colormaps[_cmap(sweep)].with_extremes(bad="white")  # empty cells stay blank
    image = ax.imshow(
        np.ma.masked_invalid(means.to_numpy()), cmap=cmap, aspect="auto", origin="lower", vmin=vmin, vmax=vmax
    )
    digits = cell_digits(means.to_numpy())
    for i in range(means.shape[0]):
        for j in range(means.shape[1]):
            if counts.iat[i, j]:
                ax.text(
                    j,
                    i,
                    f"{means.iat[i, j]:.{digits}f}\nn={counts.iat[i, j]}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="black",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.6, lw=0),
                )
    ax.set_xticks(range(len(means.columns)), means.columns)
    ax.set_yticks(range(len(means.index)), means.index)
    return image


def heatmap_ties(sweep: Sweep, *, n_bins: int = 5, noise_sd: float | None = None) -> set[tuple[int, int]]:
    """The (r level, M level) cells statistically tied with the best cell, given the seed noise."""
    done = sweep.finished.dropna(subset=[R_KEY, M_KEY])
    r = levels_of(done[R_KEY], sweep.distributions.get(R_KEY), n_bins=n_bins)
    m = levels_of(done[M_KEY], sweep.distributions.get(M_KEY), n_bins=n_bins)
    groups: dict[tuple[int, int], list[float]] = {}
    for i, j, score in zip(r.index, m.index, done["score"].to_numpy(float)):
        groups.setdefault((int(i), int(j)), []).append(float(score))
    return {k for k in tied_with_best(groups, mode=sweep.mode, noise_sd=noise_sd) if isinstance(k, tuple)}


def heatmap_figure(sweep: Sweep, *, n_bins: int = 5) -> Figure:
    """Mean score per r x M cell on the searched levels; cells tied with the best (seed noise) outlined, the colour
    scale at least ``NOISE_SPAN`` noise SDs wide, and r above the official code's reachable 0.75 marked."""
    means, counts = heatmap_matrix(sweep, n_bins=n_bins)
    noise = seed_noise(sweep).sd  # the sweep's one noise figure
    vmin, vmax = heatmap_scale(means.to_numpy(), noise_sd=noise, mode=sweep.mode)
    fig = Figure(figsize=(1.1 * len(means.columns) + 2.5, 0.6 * len(means.index) + 2.4), layout="constrained")
    ax = fig.add_subplot()
    image = draw_heatmap(ax, means, counts, sweep, vmin=vmin, vmax=vmax)
    ties = heatmap_ties(sweep, n_bins=n_bins, noise_sd=noise)
    for i, j in ties:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.2, clip_on=False, zorder=5))
    centres = levels_of(sweep.finished[R_KEY], sweep.distributions.get(R_KEY), n_bins=n_bins).centres
    labels = [
        f"{label} (beyond official)" if c > OFFICIAL_MAX_R + 1e-9 else label for label, c in zip(means.index, centres)
    ]
    ax.set_yticks(range(len(means.index)), labels)
    ax.set_xlabel("M (masked series per sample)")
    ax.set_ylabel("r (masking ratio)")
    noise_text = (
        f"red: tied with the best given seed noise {noise:.3g} SD; colours span >= {NOISE_SPAN:g} SD"
        if noise is not None
        else "seed noise not measured: no ties marked, colours span the cells' range"
    )
    ax.set_title(f"{sweep.metric} by r and M (mean over trials; blank: no trial)\n{noise_text}", fontsize=9)
    fig.colorbar(image, ax=ax, label=f"{sweep.metric} ({sweep.better})")
    return fig


# --- M against r -----------------------------------------------------------------------------------------------


def m_vs_r_figure(sweep: Sweep, relation: dict[str, Any]) -> Figure:
    """The best M per bin of r (marker size: trials in the bin), with the fitted line and its slope interval."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    points = relation.get("points") or []
    has_line = relation.get("slope") is not None and relation.get("intercept") is not None
    if points:
        r = np.array([p["r"] for p in points])
        m = np.array([p["best_M"] for p in points])
        n = np.array([p["n_trials"] for p in points])
        ax.scatter(r, m, s=20 + 80 * n / n.max(), label="best mean score in the bin of r")
    if has_line:  # over the points' r, else over the searched r (no bin of r tried two M: no points)
        dist = sweep.distributions.get(R_KEY)
        low, high = (
            (r.min(), r.max()) if points else (float(getattr(dist, "low", 0.0)), float(getattr(dist, "high", 1.0)))
        )
        xs = np.linspace(low, high, 20)
        ax.plot(
            xs, relation["intercept"] + relation["slope"] * xs, color="tab:red", label="best M of the fitted surface"
        )
    if not points and not has_line:  # too few trials to fit or bin: show where the trials lie, and say why
        done = sweep.finished.dropna(subset=[R_KEY, M_KEY])
        dots = ax.scatter(
            done[R_KEY].astype(float),
            done[M_KEY].astype(float),
            c=done["score"].astype(float),
            cmap=_cmap(sweep),
            s=40,
            label="finished trials (colour: score)",
        )
        fig.colorbar(dots, ax=ax, label=f"{sweep.metric} ({sweep.better})")
        ax.legend(fontsize=8)
    ci = relation.get("ci")
    sub = (
        f"slope {relation['slope']:.3g} M per unit r"
        if relation.get("slope") is not None
        else relation.get("message", "")
    )
    if ci:
        sub += f", {relation.get('confidence', 0.95):.0%} CI [{ci[0]:.3g}, {ci[1]:.3g}]"
    ax.set_title("does the best M grow with r?\n" + textwrap.fill(sub, 70), fontsize=9)
    ax.set_xlabel("r (masking ratio)")
    ax.set_ylabel("best M")
    ax.grid(alpha=0.3)
    if points or has_line:
        ax.legend(fontsize=8)
    return fig
