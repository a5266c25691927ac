"""Sweeps over SimMTM's pre-training settings: Ray Tune trials, an Optuna study, ASHA on a downstream probe.

The sweep file: ``spec`` (its schema and the ``TrialSpec`` every trial shares), ``sections`` (validating it),
``space`` (the search space), ``resume`` (the file a resumed sweep continues from). Before Ray starts:
``preflight`` (data, model and resource checks), ``plan`` (``--dry-run``). The record: ``study`` (the Optuna study,
public API only), ``record`` (one folder per trial), ``warm_start`` (an earlier sweep's trials). The run:
``driver`` (the entry), ``engine`` (a fresh Tune experiment), ``search`` (the Tune searcher and scheduler over the
study), ``trainable`` and ``multiworker`` (a trial in Tune, on one process or on Ray Train workers), ``trial`` (one
trial as a plain function), ``live`` and ``progress`` (what the terminal shows), ``timing``. Afterwards:
``confirm_stage`` (the confirmation runs), ``results`` (rows, test scores), ``outputs`` (every file of a sweep
directory, read and written). Importing this package imports neither Ray nor torch.

May import: ``simmtm.verdict``, ``simmtm.cluster`` and the layers below them; never ``simmtm.analysis``.
"""

from simmtm.tuning.sections import sweep_spec, validate_sweep_sections
from simmtm.tuning.spec import SweepSpec

__all__ = ["SweepSpec", "sweep_spec", "validate_sweep_sections"]
