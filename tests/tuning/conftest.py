"""Tiny sweep files over the shared tiny CSV: each trial pre-trains and fine-tunes in about a second. A test that
runs a sweep in this process asks for ``shared_ray`` (tests/conftest.py): the suite's one Ray, up until its end."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def tiny_sweep(tmp_path: Path, csv_writer, make_config) -> Callable[..., Path]:
    """``tiny_sweep(search, tune=..., resources=..., run=...)`` -> a sweep file over a tiny CSV (3 pre-training epochs)."""

    def write(search: dict[str, Any], *, tune: dict[str, Any] | None = None, resources: dict[str, Any] | None = None,
              run: dict[str, Any] | None = None, name: str = "sweep.yaml") -> Path:
        csv = tmp_path / "series.csv"
        if not csv.exists():
            csv_writer(csv)
        changes = {"pretrain": {"epochs": 3, "max_steps": None}, "finetune": {"horizons": [4, 8]}}
        raw = make_config(csv, changes)
        for section, values in (run or {}).items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
        raw["search"] = copy.deepcopy(search)
        # No confirmation stage unless a test asks for one (tests/tuning/test_confirm.py): it would triple each sweep.
        raw["tune"] = {"probe_steps": 5, "confirm": {"seeds": 0}, **(tune or {})}
        raw["resources"] = resources or {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
        path = tmp_path / name
        path.write_text("# a tiny sweep for the tests\n# Run it: simmtm sweep sweep.yaml --out out\n" + yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
