"""A sweep's seed noise, read in one place.

``simmtm.verdict.confirmation.sweep_noise`` computes it (the seed-to-seed SD pooled within configuration over the
confirmation's paired runs and the search's repeated configurations); the confirmation stage stores it in its
verdict (``confirmation.json``). Every message and file that quotes the noise (the verdict sentence, the advice to
widen a range, ``simmtm recommend --json``, best.yaml, the report, the heatmap) reads it through ``seed_noise``;
the stored figure through ``tuning.confirm_stage.stored_noise``, which a later sweep's confirmation plan reads too.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from simmtm.analysis.load import Sweep
from simmtm.tuning.confirm_stage import stored_noise
from simmtm.verdict.confirmation import sweep_noise
from simmtm.verdict.stats import SeedSpread

__all__ = ["seed_noise", "search_groups"]


def seed_noise(sweep: Sweep) -> SeedSpread:
    """The figure the confirmation stored, else ``sweep_noise`` of the search's repeats (no confirmation ran)."""
    stored = stored_noise(sweep.confirmation)
    if stored is not None:
        return stored
    done = sweep.finished
    keys = [p for p in sweep.params if p in done]
    return sweep_noise([], search_groups(done, keys, done["score"].to_numpy(float), range(len(done))))


def search_groups(
    done: pd.DataFrame, keys: list[str], values: np.ndarray, rows: Iterable[int]
) -> dict[tuple, list[float]]:
    """``values`` of the given ``rows`` grouped by their searched parameters (repeats of a configuration together)."""
    labels = done[keys].astype(str).to_numpy()
    groups: dict[tuple, list[float]] = {}
    for i in rows:
        groups.setdefault(tuple(labels[i]), []).append(float(values[i]))
    return groups
