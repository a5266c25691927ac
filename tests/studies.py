"""The Optuna study a sweep directory's sweep.json names (sweep and analysis tests read it back)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

__all__ = ["study_of"]


def study_of(out: Path) -> optuna.Study:
    meta = json.loads((Path(out) / "sweep.json").read_text())
    return optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
