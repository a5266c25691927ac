"""Shipped sweeps meant for a cluster of spot GPU workers survive a reclaim: tune.max_failures >= 1."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cluster_sweeps() -> list[Path]:
    """Sweep files that ask for GPUs or whose header runs them with --address (a cluster)."""
    found = []
    for path in sorted([*ROOT.glob("sweeps/*.yaml"), *ROOT.glob("benchmarks/*.yaml")]):
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        gpus = (raw.get("resources") or {}).get("gpus_per_worker") or 0
        if "tune" in raw and (gpus > 0 or "--address" in header):
            found.append(path)
    return found


def test_every_cluster_sweep_retries_trials_lost_to_a_spot_reclaim() -> None:
    paths = cluster_sweeps()
    assert {p.name for p in paths} >= {"etth1_rm.yaml", "grid_rm_etth1.yaml"}
    for path in paths:
        tune = yaml.safe_load(path.read_text())["tune"]
        assert tune.get("max_failures", 0) >= 1, f"{path.name}: tune.max_failures must be >= 1 on spot workers (docs/cluster.md)"
