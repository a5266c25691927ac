"""Two sweeps side by side (two data sets, or in-domain against cross-domain): do the same parameters matter, is
the best region in the same place, does M grow with r in both?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from simmtm.analysis.importance import Importance, param_importances
from simmtm.analysis.load import ENCODER_KEY, M_KEY, R_KEY, SHORT_NAMES, TAU_KEY, Sweep
from simmtm.analysis.r_m_figures import draw_heatmap, heatmap_matrix
from simmtm.analysis.recommend import Recommendation, recommend

__all__ = [
    "Comparison",
    "compare_sweeps",
    "compare_heatmaps_figure",
    "compare_importance_figure",
    "compare_m_vs_r_figure",
]


@dataclass
class Comparison:
    sweeps: tuple[Sweep, Sweep]
    labels: tuple[str, str]
    recommendations: tuple[Recommendation, Recommendation]
    importances: tuple[Importance, Importance]
    summary: pd.DataFrame  # rows: quantities; columns: the two labels
    importance: pd.DataFrame  # rows: parameters; columns: (label, method)


def compare_sweeps(
    a: Sweep, b: Sweep, *, labels: tuple[str, str] | None = None, n_boot: int = 1000, seed: int = 0
) -> Comparison:
    """Recommendations, importances and the M-versus-r relation of two sweeps, in tables side by side."""
    if labels is None:
        labels = (a.label(), b.label())
        if labels[0] == labels[1]:
            labels = (f"A: {labels[0]}", f"B: {labels[1]}")
    recs = (recommend(a, n_boot=n_boot, seed=seed), recommend(b, n_boot=n_boot, seed=seed))
    imps = (param_importances(a, seed=seed), param_importances(b, seed=seed))
    summary = pd.DataFrame({label: _summary(s, r) for label, s, r in zip(labels, (a, b), recs)})
    cols = {}
    for label, imp in zip(labels, imps):
        for method in ("ped_anova", "fanova"):
            cols[(label, method)] = imp.table[method] if imp.ok else pd.Series(dtype=float)
    importance = pd.DataFrame(cols)
    importance.index = [f"{SHORT_NAMES.get(p, p)}" for p in importance.index]
    return Comparison((a, b), labels, recs, imps, summary, importance)


def _summary(sweep: Sweep, rec: Recommendation) -> dict[str, Any]:
    counts = sweep.counts()
    done = sweep.finished
    best = (done["score"].min() if sweep.mode == "min" else done["score"].max()) if not done.empty else np.nan
    values = {**rec.fixed, **rec.params}
    rel = rec.m_vs_r or {}
    ci = rel.get("ci")
    return {
        "data": (sweep.run_config.get("data") or {}).get("name") or (sweep.run_config.get("data") or {}).get("path"),
        "metric": f"{sweep.metric} ({sweep.mode})",
        "method": sweep.method,
        "finished / failed": f"{counts['COMPLETE']} / {counts['FAILED']}",
        "best single trial": best,
        "recommended r": values.get(R_KEY),
        "recommended M": values.get(M_KEY),
        "recommended tau": values.get(TAU_KEY),
        "recommended encoder": values.get(ENCODER_KEY),
        "expected score": rec.expected_score,
        "95% CI": f"{rec.ci[0]:.4g} to {rec.ci[1]:.4g}" if rec.ci else "",
        "trials supporting it": rec.n_support,
        "at the edge": "; ".join(e["param"] for e in rec.edges) or ("no" if rec.status == "ok" else ""),
        "M vs r slope": rel.get("slope"),
        "slope CI": f"{ci[0]:.3g} to {ci[1]:.3g}" if ci else "",
        "M vs r": rel.get("verdict") or rel.get("status", ""),
    }


def compare_heatmaps_figure(a: Sweep, b: Sweep, *, labels: tuple[str, str] | None = None) -> Figure:
    """The two r x M heatmaps side by side; one colour scale when both sweeps optimise the same metric."""
    labels = labels or (a.label(), b.label())
    mats = [heatmap_matrix(s) for s in (a, b)]
    same = a.metric == b.metric
    vals = np.concatenate([m.to_numpy().ravel() for m, _ in mats])
    vmin, vmax = (np.nanmin(vals), np.nanmax(vals)) if same and np.isfinite(vals).any() else (None, None)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    for ax, (means, counts), sweep, label in zip(fig.subplots(1, 2), mats, (a, b), labels):
        image = draw_heatmap(ax, means, counts, sweep, vmin=vmin, vmax=vmax, fontsize=7)
        ax.set_xlabel("M")
        ax.set_ylabel("r")
        ax.set_title(f"{label}: {sweep.metric}")
        fig.colorbar(image, ax=ax)
    return fig


def compare_importance_figure(cmp: Comparison) -> Figure:
    """fANOVA and PED-ANOVA importances of both sweeps as grouped bars."""
    table = cmp.importance.fillna(0.0)
    fig = Figure(figsize=(9, 0.5 * max(len(table), 2) + 2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(table))
    for ax, method in zip(axes, ("ped_anova", "fanova")):
        for k, label in enumerate(cmp.labels):
            col = (label, method)
            values = table[col].to_numpy(float) if col in table.columns else np.zeros(len(table))
            ax.barh(y + (k - 0.5) * 0.38, values, height=0.38, label=label)
        ax.set_yticks(y, table.index)
        ax.set_title("PED-ANOVA" if method == "ped_anova" else "fANOVA")
        ax.set_xlim(0, 1)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    return fig


def compare_m_vs_r_figure(cmp: Comparison) -> Figure:
    """The best M per bin of r for both sweeps, with their fitted lines."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for k, (label, rec) in enumerate(zip(cmp.labels, cmp.recommendations)):
        rel = rec.m_vs_r or {}
        points = rel.get("points") or []
        if not points:
            continue
        r = np.array([p["r"] for p in points])
        ax.scatter(
            r,
            [p["best_M"] for p in points],
            color=f"C{k}",
            label=f"{label}: {rel.get('verdict', rel.get('status', ''))}",
        )
        if rel.get("slope") is not None:
            xs = np.linspace(r.min(), r.max(), 20)
            ax.plot(xs, rel["intercept"] + rel["slope"] * xs, color=f"C{k}")
    ax.set_xlabel("r")
    ax.set_ylabel("best M")
    ax.set_title("best M against r")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
