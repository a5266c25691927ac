"""Sweeps over SimMTM's pre-training settings: Ray Tune trials, an Optuna study, ASHA on a downstream probe.

``spec`` (the sweep file schema and the ``TrialSpec`` every trial shares), ``trial`` (one trial as a plain
function), ``trainable`` and ``multiworker`` (a trial in Tune, on one process or on Ray Train workers), ``search``
(the Optuna searcher), ``warm_start`` (seeding the study from an earlier sweep), ``driver`` (the entry and the Tune
experiment), ``results`` (rows, study reconciliation, test scores) and ``outputs`` (every file of a sweep directory,
read and written). Importing this package imports neither Ray nor torch.
"""

from simmtm.tuning.sections import sweep_spec, validate_sweep_sections
from simmtm.tuning.spec import SweepSpec

__all__ = ["SweepSpec", "sweep_spec", "validate_sweep_sections"]
