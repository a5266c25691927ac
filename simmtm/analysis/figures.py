"""The sensitivity figures, drawn with matplotlib (PNG files, the report, notebooks) and Optuna's plotly plots
(interactive views in the report and notebooks).

Every function takes a loaded ``Sweep`` (and what was computed from it) and returns a figure; nothing here reads
files or keeps global pyplot state, so the same calls serve the report and the notebooks. The figures of r against
M (the r x M heatmap, the best M per r) are drawn in ``simmtm.analysis.r_m_figures`` and named here with the rest.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from optuna.distributions import FloatDistribution, IntDistribution

from simmtm.analysis.importance import Importance
from simmtm.analysis.load import ENCODER_KEY, M_KEY, R_KEY, SHORT_NAMES, TAU_KEY, Sweep, analysis_study
from simmtm.analysis.r_m_figures import draw_heatmap, heatmap_figure, heatmap_matrix, m_vs_r_figure

__all__ = [
    "heatmap_matrix",
    "draw_heatmap",
    "heatmap_figure",
    "importance_figure",
    "slices_figure",
    "history_figure",
    "parallel_figure",
    "m_vs_r_figure",
    "interactive_figures",
    "save_figures",
    "FIGURES",
]

logger = logging.getLogger(__name__)

# name -> what it shows; the report's sections and the PNG file names follow this order.
FIGURES = {
    "importance": "parameter importance, PED-ANOVA and fANOVA side by side",
    "heatmap": "r x M: mean score per cell (over seeds, repeats and the other parameters), trial count per cell",
    "slices": "score against each searched parameter, coloured by encoder",
    "history": "optimisation history: score per trial and best so far",
    "parallel": "parallel coordinates of the finished trials",
    "m_vs_r": "the best M in each bin of r, and the fitted line",
}


def _name(key: str) -> str:
    return SHORT_NAMES.get(key, key)


# --- importance ------------------------------------------------------------------------------------------------


def importance_figure(importance: Importance) -> Figure:
    table = importance.table
    fig = Figure(figsize=(8, 0.45 * max(len(table), 2) + 1.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labels = [_name(p) for p in table.index]
    for ax, (col, title) in zip(
        axes,
        (("ped_anova", "PED-ANOVA (what sets the top trials apart)"), ("fanova", "fANOVA (share of score variance)")),
    ):
        ax.barh(labels, table[col].to_numpy(float), color="tab:blue" if col == "ped_anova" else "tab:orange")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (sums to 1)")
    axes[0].invert_yaxis()
    fig.suptitle(f"parameter importance, {importance.n_trials} finished trials")
    return fig


# --- slices ----------------------------------------------------------------------------------------------------


def _encoders(sweep: Sweep, done: pd.DataFrame) -> pd.Series:
    if ENCODER_KEY in done.columns:
        return done[ENCODER_KEY].map(str)
    return pd.Series([str(sweep.fixed_value(ENCODER_KEY) or "encoder")] * len(done), index=done.index)


def slices_figure(sweep: Sweep) -> Figure:
    """Score against tau and each other parameter, one panel per parameter, one colour per encoder."""
    done = sweep.finished
    params = [p for p in sweep.params if p != ENCODER_KEY and p in done.columns]
    params.sort(key=lambda p: (p != TAU_KEY, p))  # tau first, as the issue asks to see it
    panels = params + ([ENCODER_KEY] if ENCODER_KEY in sweep.params else [])
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    enc = _encoders(sweep, done)
    names = sorted(enc.unique())
    colours = {e: f"C{i}" for i, e in enumerate(names)}
    for ax, p in zip(axes, panels):
        if p == ENCODER_KEY:
            for i, e in enumerate(names):
                y = done.loc[enc == e, "score"].to_numpy(float)
                x = i + np.linspace(-0.15, 0.15, len(y)) if len(y) > 1 else np.full(len(y), float(i))
                ax.scatter(x, y, color=colours[e], alpha=0.7, s=18)
            ax.set_xticks(range(len(names)), names)
        else:
            dist = sweep.distributions.get(p)
            x = pd.to_numeric(done[p], errors="coerce")
            for e in names:
                sel = enc == e
                ax.scatter(x[sel], done.loc[sel, "score"], color=colours[e], alpha=0.7, s=18, label=e)
            if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log:
                ax.set_xscale("log")
        ax.set_xlabel(f"{_name(p)} ({p})" if _name(p) != p else p)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if len(names) > 1 and panels:
        axes[0].legend(title="encoder", fontsize=8)
    fig.suptitle(f"{sweep.metric} against each parameter ({sweep.better})")
    return fig


# --- history and parallel coordinates --------------------------------------------------------------------------


def history_figure(sweep: Sweep) -> Figure:
    """Score of each finished trial in the order trials were started, and the best so far."""
    t = sweep.trials.reset_index(drop=True)
    ok = (t["state"] == "COMPLETE") & t["score"].notna()
    x = np.flatnonzero(ok.to_numpy())
    y = t.loc[ok, "score"].to_numpy(float)
    best = np.minimum.accumulate(y) if sweep.mode == "min" else np.maximum.accumulate(y)
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x, y, s=18, alpha=0.7, label="trial")
    ax.step(x, best, where="post", color="tab:red", label="best so far")
    failed = np.flatnonzero((t["state"] == "FAILED").to_numpy())
    if len(failed) and len(y):
        ax.scatter(failed, np.full(len(failed), best[-1]), marker="x", color="grey", label="failed")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"optimisation history ({sweep.better})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def parallel_figure(sweep: Sweep) -> Figure:
    """Parallel coordinates of the finished trials: one axis per searched parameter (its searched range, log where
    searched so; choices evenly spaced) and the score last; one line per trial, the best in bright colours on top."""
    done = sweep.finished
    params = [p for p in sweep.params if p in done.columns]
    fig = Figure(figsize=(max(7.0, 1.9 * (len(params) + 1) + 1.5), 4.6), layout="constrained")
    ax = fig.add_subplot()
    columns, ticks = [], []
    for p in params:
        unit, lo_label, hi_label = _axis_unit(done[p], sweep.distributions.get(p))
        columns.append(unit)
        ticks.append((lo_label, hi_label))
    score = done["score"].to_numpy(float)
    lo, hi = float(np.nanmin(score)), float(np.nanmax(score))
    columns.append((score - lo) / (hi - lo) if hi > lo else np.full(len(score), 0.5))
    ticks.append((f"{lo:.4g}", f"{hi:.4g}"))
    data = np.vstack(columns).T  # (trials, axes)
    good = sweep.sign * score
    order = np.argsort(good)  # worst first: the best are drawn last, on top
    cmap = matplotlib.colormaps["viridis"]
    span = float(good.max() - good.min()) or 1.0
    for k in order:
        ax.plot(range(data.shape[1]), data[k], color=cmap((good[k] - good.min()) / span), alpha=0.75, lw=1.3)
    names = [_name(p) for p in params] + [sweep.metric]
    for x, (low, high) in enumerate(ticks):
        ax.axvline(x, color="grey", lw=0.8)
        ax.text(x, -0.06, low, ha="center", va="top", fontsize=8)
        ax.text(x, 1.06, high, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=10)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_title(f"parallel coordinates, {len(done)} finished trials (bright: better; {sweep.better})", fontsize=9)
    return fig


def _axis_unit(values: pd.Series, dist: Any) -> tuple[np.ndarray, str, str]:
    """Values mapped to [0, 1] over the searched range, and the labels of its ends."""
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        low, high = float(dist.low), float(dist.high)
        v = values.astype(float).to_numpy()
        if dist.log:
            unit = (np.log(v) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            unit = (v - low) / (high - low) if high > low else np.full(len(v), 0.5)
        return unit, f"{low:.3g}", f"{high:.3g}"
    choices = list(getattr(dist, "choices", None) or sorted(values.map(str).unique()))
    index = {str(c): i for i, c in enumerate(choices)}
    unit = np.array([index.get(str(v), 0) for v in values], float) / max(len(choices) - 1, 1)
    return unit, str(choices[0]), str(choices[-1])


# --- interactive ----------------------------------------------------------------------------------------------


def interactive_figures(sweep: Sweep) -> dict[str, Any]:
    """Optuna's plotly views of the finished trials: parallel coordinates, slices, history and the r-M contour."""
    from optuna import visualization as vis

    study = analysis_study(sweep)
    out = {
        "parallel": vis.plot_parallel_coordinate(study, target_name=sweep.metric),
        "slices": vis.plot_slice(study, target_name=sweep.metric),
        "history": vis.plot_optimization_history(study, target_name=sweep.metric),
    }
    if R_KEY in sweep.distributions and M_KEY in sweep.distributions and len(study.trials) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["contour"] = vis.plot_contour(study, params=[R_KEY, M_KEY], target_name=sweep.metric)
    return out


# --- files -----------------------------------------------------------------------------------------------------


def save_figures(figures: dict[str, Figure], out_dir: str | Path, *, dpi: int = 110) -> dict[str, Path]:
    """Write each figure as ``out_dir/<name>.png``; return the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths[name] = path
    return paths
