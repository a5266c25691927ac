"""Sensitivity analysis of a sweep directory: importance, r x M, slices, history, the recommendation, the report.

    from simmtm.analysis import load_sweep, param_importances, recommend, write_report
    sweep = load_sweep("runs/sweep")
    recommend(sweep).summary()

The notebooks in ``analysis/`` and the ``simmtm analyze`` / ``simmtm recommend`` commands call these functions.

May import: ``simmtm.tuning`` (the sweep's own readers), ``simmtm.verdict`` and the layers below them.
"""

from simmtm.analysis.best_m import m_vs_r
from simmtm.analysis.compare import compare_sweeps
from simmtm.analysis.importance import Importance, param_importances
from simmtm.analysis.load import Sweep, analysis_study, finished_trials, load_sweep, search_distributions
from simmtm.analysis.noise import seed_noise
from simmtm.analysis.recommend import Recommendation, best_config, recommend, write_best_config
from simmtm.analysis.report import Report, write_report
from simmtm.analysis.surface import SurfaceNoise, surface_noise, sweep_surface_noise
from simmtm.analysis.tables import failed_trials, top_configurations
from simmtm.tuning.warm_start import warm_start_study

__all__ = [
    "Sweep",
    "load_sweep",
    "finished_trials",
    "search_distributions",
    "analysis_study",
    "Importance",
    "param_importances",
    "Recommendation",
    "recommend",
    "m_vs_r",
    "seed_noise",
    "best_config",
    "write_best_config",
    "top_configurations",
    "failed_trials",
    "Report",
    "write_report",
    "warm_start_study",
    "compare_sweeps",
    "SurfaceNoise",
    "surface_noise",
    "sweep_surface_noise",
]
