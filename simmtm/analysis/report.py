"""``report.html``: one self-contained page (figures embedded, plotly.js inline) plus the PNGs and
``recommendation.json`` beside it.

A sweep with too few finished trials still gets a report: it says how many trials are in which state and which
sections need more, rather than failing.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from simmtm.analysis import figures as F
from simmtm.analysis.evidence import confirmation_figure, confirmed_from_json, probe_figure
from simmtm.analysis.importance import MIN_TRIALS, Importance, param_importances
from simmtm.analysis.load import M_KEY, R_KEY, SHORT_NAMES, Sweep, load_sweep
from simmtm.analysis.recommend import MIN_FINISHED, Recommendation, recommend
from simmtm.analysis.surface import sweep_surface_noise
from simmtm.analysis.tables import failed_trials, top_configurations

__all__ = ["Report", "write_report", "default_report_dir"]

logger = logging.getLogger(__name__)


@dataclass
class Report:
    """What ``write_report`` produced."""

    sweep: Sweep
    html: Path
    recommendation_json: Path
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    recommendation: Recommendation | None = None
    importance: Importance | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it is not there


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    interactive: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> Report:
    """Analyse the sweep in ``sweep_dir`` and write ``report.html``, ``figures/*.png`` and ``recommendation.json``
    to ``out_dir`` (default: ``default_report_dir(sweep_dir)``)."""
    sweep = load_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else default_report_dir(sweep.path)
    out.mkdir(parents=True, exist_ok=True)
    rec = recommend(sweep, n_boot=n_boot, seed=seed)
    rec_path = out / "recommendation.json"
    rec_path.write_text(json.dumps(rec.to_dict(), indent=2, default=_json_default) + "\n")

    n = len(sweep.finished)
    figs: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    importance = None
    if n < MIN_FINISHED:
        skipped = {name: f"needs at least {MIN_FINISHED} finished trials" for name in F.FIGURES}
    else:
        importance = param_importances(sweep, seed=seed)
        relation = rec.m_vs_r
        makers = {
            "importance": (lambda: F.importance_figure(importance)) if importance.ok else importance.note,
            "heatmap": (lambda: F.heatmap_figure(sweep)) if _has_r_m(sweep) else "r and M were not both searched",
            "slices": lambda: F.slices_figure(sweep),
            "history": lambda: F.history_figure(sweep),
            "parallel": lambda: F.parallel_figure(sweep),
            "m_vs_r": (lambda: F.m_vs_r_figure(sweep, relation))
            if _has_r_m(sweep)
            else "r and M were not both searched",
        }
        for name, make in makers.items():
            if isinstance(make, str) or make is None:
                skipped[name] = make or "not available"
                continue
            try:
                figs[name] = make()
            except Exception as exc:  # one figure must not cost the whole report of a live sweep
                logger.warning("figure %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
                skipped[name] = f"could not be drawn: {type(exc).__name__}: {exc}"
    figs.update(_evidence_figures(sweep, skipped))
    for name in (F.FIGURES.keys() | EVIDENCE) - figs.keys():  # an earlier run's figure this one cannot draw: removed
        (out / "figures" / f"{name}.png").unlink(missing_ok=True)
    pngs = F.save_figures(figs, out / "figures")
    plotly_divs = _plotly_divs(sweep) if interactive and n >= MIN_FINISHED else {}
    page = _page(sweep, rec, importance, pngs, skipped, plotly_divs)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d figures)", html_path, len(pngs))
    return Report(sweep, html_path, rec_path, pngs, rec, importance, skipped)


# The confirmation stage's figures (drawn when the sweep has a confirmation.json).
EVIDENCE = {
    "confirmation": "the paired confirmation runs: each configuration's score per fresh seed (a line per seed)",
    "probe": "the rung score ASHA prunes on against the final score, one point per run that has both",
}


def _evidence_figures(sweep: Sweep, skipped: dict[str, str]) -> dict[str, Figure]:
    conf = sweep.confirmation
    if not conf:
        skipped.update(
            {
                name: "the sweep ran no confirmation stage (tune.confirm.seeds: 0, or an older sweep)"
                for name in EVIDENCE
            }
        )
        return {}
    out = {}
    verdict = conf.get("verdict")
    if verdict and conf.get("configs"):
        out["confirmation"] = confirmation_figure(
            confirmed_from_json(conf["configs"]), metric=sweep.metric, sentence=verdict["sentence"]
        )
    else:
        skipped["confirmation"] = "the confirmation stage was off (tune.confirm.seeds: 0)"
    pairs = conf.get("probe_pairs") or []
    check = conf["probe_check"]
    if len(pairs) >= 2:
        out["probe"] = probe_figure(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            metric=sweep.metric,
            rung_name=check["rung"],
            line=check["line"],
            warning=bool(check["warning"]),
        )
    else:
        skipped["probe"] = f"{len(pairs)} run(s) have both a rung score and a final score; a scatter needs 2"
    return out


def default_report_dir(sweep_dir: str | Path) -> Path:
    """``DIR-report`` beside the sweep directory: the sweep's own folder is left as `simmtm sweep --resume` expects."""
    sweep_dir = Path(sweep_dir).resolve()
    return sweep_dir.with_name(f"{sweep_dir.name}-report")


def _has_r_m(sweep: Sweep) -> bool:
    return R_KEY in sweep.distributions and M_KEY in sweep.distributions


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _plotly_divs(sweep: Sweep) -> dict[str, str]:
    try:
        figs = F.interactive_figures(sweep)
    except Exception as exc:
        logger.warning("interactive figures failed: %s", exc)
        return {}
    return {
        name: fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%") for name, fig in figs.items()
    }


# --- HTML ------------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em 1em; margin: .8em 0; }
.rec { background: #eef6ee; border-left: 4px solid #3a8a3a; padding: .5em 1em; }
.muted { color: #777; } img { max-width: 100%; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(frame: pd.DataFrame, *, css_id: str, index: bool = True) -> str:
    return frame.to_html(
        table_id=css_id, index=index, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, escape=True
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _figure_section(name: str, title: str, pngs: dict[str, Path], skipped: dict[str, str], extra: str = "") -> str:
    if name in pngs:
        body = _img(pngs[name], F.FIGURES[name])
    else:
        body = f'<p class="note">Not shown: {_esc(skipped.get(name, "not available"))}.</p>'
    caption = f'<p class="muted">{_esc(F.FIGURES[name])}</p>'
    return f'<section id="{name}"><h2>{_esc(title)}</h2>{caption}{extra}{body}</section>'


def _page(
    sweep: Sweep,
    rec: Recommendation,
    importance: Importance | None,
    pngs: dict[str, Path],
    skipped: dict[str, str],
    plotly_divs: dict[str, str],
) -> str:
    parts = _header(sweep)
    parts.append(_recommendation_section(rec))
    parts.append(_evidence_section("confirmation", "Confirmation: paired runs with fresh seeds", pngs, skipped))
    probe_line = (sweep.confirmation or {}).get("probe_check", {}).get("line", "")
    parts.append(
        _evidence_section(
            "probe",
            "Does the pruning score predict the final score?",
            pngs,
            skipped,
            f"<p>{_esc(probe_line)}</p>" if probe_line else "",
        )
    )
    parts.append(_figure_section("importance", "Parameter importance", pngs, skipped, _importance_text(importance)))
    parts.append(_figure_section("heatmap", "r x M", pngs, skipped, _surface_text(sweep)))
    parts.append(_figure_section("slices", "Slices", pngs, skipped))
    parts.append(_figure_section("history", "Optimisation history", pngs, skipped, plotly_divs.get("history", "")))
    parts.append(_figure_section("parallel", "Parallel coordinates", pngs, skipped))
    rel = rec.m_vs_r or {}
    parts.append(
        _figure_section(
            "m_vs_r",
            "Does the best M grow with r?",
            pngs,
            skipped,
            f"<p>{_esc(rel.get('message', ''))}</p>" if rel.get("message") else "",
        )
    )
    if plotly_divs:
        inter = "".join(f"<h3>{_esc(name)}</h3>{div}" for name, div in plotly_divs.items() if name != "history")
        parts.append(f'<section id="interactive"><h2>Interactive views</h2>{inter}</section>')
    parts.extend(_trial_tables(sweep))

    script = ""
    if plotly_divs:
        from plotly.offline import get_plotlyjs

        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>simmtm sweep report: {_esc(sweep.label())}</title>"
        f"<style>{_CSS}</style>{script}</head><body>{''.join(parts)}</body></html>\n"
    )


def _header(sweep: Sweep) -> list[str]:
    """The title, what the sweep searched, its trials by state, and a note when too few have finished."""
    counts = sweep.counts()
    n = counts["COMPLETE"]
    parts = [
        f"<h1>Sensitivity report: {_esc(sweep.path)}</h1>",
        f'<p class="muted">metric {_esc(sweep.metric)} '
        f"({_esc(sweep.better)}), method {_esc(sweep.method)}, "
        f"searched {_esc(', '.join(sweep.params) or 'nothing')}; read from {_esc(sweep.source)}; "
        f"written {dt.datetime.now().isoformat(timespec='seconds')}</p>",
        "<p>Trials: "
        + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v or k == "COMPLETE")
        + (
            f"; {sweep.n_warm_start} more copied from an earlier sweep (warm start) are not counted here"
            if sweep.n_warm_start
            else ""
        )
        + ".</p>",
    ]
    if n < MIN_FINISHED:
        state = "no finished trials yet" if n == 0 else "only 1 finished trial"
        failed = counts["FAILED"]
        all_failed = failed and failed == len(sweep.trials)
        more = f" All {failed} trial(s) so far failed; their errors are listed below." if all_failed else ""
        parts.append(
            f'<p class="note" id="status">This sweep has {state}: the analysis needs at least {MIN_FINISHED} '
            f"(importances {MIN_TRIALS}).{more} Run the report again when more trials have finished.</p>"
        )
    parts.extend(f'<p class="note">{_esc(note)}</p>' for note in sweep.notes)
    return parts


def _importance_text(importance: Importance | None) -> str:
    """The importance table and whether PED-ANOVA and fANOVA agree, shown above the importance figure."""
    text = ""
    if importance is not None:
        if importance.ok:
            shown = importance.table[["ped_anova", "fanova", "rank_ped_anova", "rank_fanova"]]
            shown = shown.rename(index=lambda p: f"{SHORT_NAMES.get(p, p)} ({p})")
            text += _table(shown, css_id="importance-table")
            dis = importance.disagreements()
            text += (
                f'<p class="note">The methods disagree: {_esc("; ".join(dis))}. PED-ANOVA looks at the top '
                f"{importance.target_quantile:.0%} of trials, fANOVA at the whole score variance.</p>"
                if dis
                else '<p class="muted">Both methods rank the parameters the same way.</p>'
            )
        if importance.note:
            text += f'<p class="note">{_esc(importance.note)}</p>'
    return text


def _surface_text(sweep: Sweep) -> str:
    """How noisy the r x M surface is: the searched (validation) score, and the test split where every trial was
    scored on it."""
    text = ""
    if sweep.counts()["COMPLETE"] >= MIN_FINISHED:
        for column, label in (("score", sweep.metric), ("test_score", f"test {sweep.metric.removeprefix('val_')}")):
            surface = sweep_surface_noise(sweep, column)
            text += f"<p>{_esc(surface.line(label))}</p>" if surface is not None else ""
    return text


def _trial_tables(sweep: Sweep) -> list[str]:
    """The top configurations, and the failed trials with their errors (when any failed)."""
    top = top_configurations(sweep)
    top_html = _table(top, css_id="top-configurations") if not top.empty else '<p class="note">No finished trials.</p>'
    parts = [
        f'<section id="top"><h2>Top configurations</h2><p class="muted">Trials with equal parameters '
        f"(repeats) are one row; scores are their means; test results where scored.</p>{top_html}</section>"
    ]
    failed = failed_trials(sweep)
    if not failed.empty:
        parts.append(
            '<section id="failed"><h2>Failed trials</h2>'
            f"{_table(failed, css_id='failed-trials', index=False)}</section>"
        )
    return parts


def _evidence_section(name: str, title: str, pngs: dict[str, Path], skipped: dict[str, str], extra: str = "") -> str:
    if name in pngs:
        body = _img(pngs[name], EVIDENCE[name])
    else:
        body = f'<p class="note">Not shown: {_esc(skipped.get(name, "not available"))}.</p>'
    return (
        f'<section id="{name}"><h2>{_esc(title)}</h2><p class="muted">{_esc(EVIDENCE[name])}</p>{extra}{body}</section>'
    )


def _recommendation_section(rec: Recommendation) -> str:
    lines = "".join(f"<li>{_esc(line)}</li>" for line in rec.summary())
    body = f'<div class="rec"><ul>{lines}</ul></div>'
    if rec.status == "ok" and rec.sentence is None:
        how = ", ".join(f"{SHORT_NAMES.get(k, k)}: {v}" for k, v in rec.neighbourhood.items())
        best_id, best_score = rec.best_trial.get("trial_id"), rec.best_trial.get("score")
        body += (
            f'<p class="muted">The recommendation is the centre of the best neighbourhood of trials ({_esc(how)}); '
            f"the interval bootstraps the neighbourhood's mean over its trials. For reference, the single best "
            f"trial was {_esc(best_id)} ({best_score:.4g}).</p>"
        )
    return f'<section id="recommendation"><h2>Recommendation</h2>{body}</section>'
