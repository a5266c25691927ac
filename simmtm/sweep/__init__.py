"""Sweeps over SimMTM's pre-training settings: Ray Tune trials, an Optuna study, ASHA on a downstream probe.

``spec`` (the sweep file schema), ``trial`` (one trial as a plain function), ``search`` (the Optuna searcher),
``driver`` (the Tune experiment, resume, results) and ``outputs`` (trials.csv, best.yaml, HParams).
Importing this package imports neither Ray nor torch.
"""

from simmtm.sweep.spec import SweepSpec, sweep_spec, validate_sweep_sections

__all__ = ["SweepSpec", "sweep_spec", "validate_sweep_sections"]
