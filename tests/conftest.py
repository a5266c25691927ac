"""Shared fixtures: a tiny synthetic forecasting CSV, a tiny run-config factory, the shared data folder, one local Ray,
one local two-node Ray cluster."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

# Ray Train's controller collects its workers' reports every 2 s by default, and the tiny runs here finish an epoch
# in well under that: each epoch, and the run's end, waited for the next poll. A 0.25 s poll (this process, the local
# Rays it starts and the processes the tests start inherit it) saves 4-8 s a Ray Train run; what is collected and when
# a failure is handled do not change.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray's background work that no test looks at, trimmed for the 2 shared cores (the suite is CPU-bound there): Ray
# Train's spot-preemption watcher (an actor per run), the log monitor's search for new log files on every 0.1 s pass
# (every 0.5 s instead, as Ray does past 1000 files), the dashboard agent's node statistics every 5 s (every 60 s).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
os.environ.setdefault("REPORTER_UPDATE_INTERVAL_MS", "60000")

# Small enough that a pre-training step takes milliseconds on one CPU core.
TINY_MODEL = {"encoder": "transformer", "d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16, "dropout": 0.0,
              "projector_dim": 8}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs with ``threads`` set torch's process-wide thread count; give the next test the original back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_series_csv(path: Path, *, rows: int = 320, columns: int = 2, seed: int = 0) -> Path:
    """An hourly CSV (``date`` plus ``columns`` numeric columns: noisy sines); not an ETT name, so 70/10/20 split."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    values = np.sin(2 * np.pi * t / (12 + 5 * np.arange(columns))) + 0.1 * rng.normal(size=(rows, columns))
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(columns)])
    frame.insert(0, "date", pd.date_range("2021-01-01", periods=rows, freq="h"))
    frame.to_csv(path, index=False)
    return path


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture(scope="session")
def csv_writer() -> Callable[..., Path]:
    """``csv_writer(path, rows=..., columns=..., seed=...)``: the tiny CSV writer, for tests that need several files."""
    return write_series_csv


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_series_csv(tmp_path / "series.csv")


def tiny_raw_config(csv: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw config dict for a seconds-long run over ``csv`` (nested ``changes`` merge per section)."""
    raw = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,  # tiny models: one thread is fastest and does not fight other processes for the 2 cores
        "data": {"path": str(csv), "seq_len": 24},
        "model": copy.deepcopy(TINY_MODEL),
        "pretrain": {"num_masked": 2, "epochs": 1, "batch_size": 8, "max_steps": 3, "val_batches": 1},
        "finetune": {"horizons": [4, 8], "epochs": 1, "batch_size": 16, "max_steps": 2, "val_batches": 1},
    }
    return deep_update(raw, copy.deepcopy(changes or {}))


@pytest.fixture(scope="session")
def make_config() -> Callable[..., dict[str, Any]]:
    """``make_config(csv, changes)``: ``tiny_raw_config`` for fixtures of any scope."""
    return tiny_raw_config


@pytest.fixture
def tiny_config(tiny_csv: Path) -> Callable[..., dict[str, Any]]:
    """``tiny_config(changes)`` -> a raw config dict over ``tiny_csv``."""
    return lambda changes=None: tiny_raw_config(tiny_csv, changes)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(raw, name)`` -> a YAML file under tmp_path holding ``raw``."""

    def write(raw: dict[str, Any], name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture
def shared_data() -> Path:
    value = os.environ.get("SIMMTM_DATA_DIR")
    assert value, "set SIMMTM_DATA_DIR to the shared data folder (CI: ../shared/data)"
    return Path(value)


# Clusters that their tests start once and share: under pytest-xdist (scripts/test.sh runs 2 processes) each one's
# tests go to one process (--dist loadgroup), so no cluster is started twice.
SHARED_CLUSTERS = ("two_node_ray", "local_cluster")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first (in file order), so that the long ones start early and the short ones fill the end of
    a parallel run; each shared cluster's tests in one xdist group."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            for name in SHARED_CLUSTERS:
                if name in getattr(item, "fixturenames", ()):
                    item.add_marker(pytest.mark.xdist_group(name))


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[None]:
    """One local Ray (2 CPUs) for every test that kills no Ray process: started by the first test that asks, shut
    down at the end of the session (one per process under pytest-xdist). Drivers called in-process join it
    (``simmtm.cluster.ray_session.connect`` leaves an initialised Ray alone), so each test saves a Ray start and stop
    (5-15 s on this machine)."""
    import ray

    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def ray_by_value(shared_ray: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """The shared Ray, with the test module's functions sent to its workers by value (tests/ is not importable
    there): for hooks and worker functions a test defines."""
    import ray

    ray.cloudpickle.register_pickle_by_value(request.module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture(scope="session")
def two_node_ray() -> Iterator[tuple[str, dict[str, str]]]:
    """``(address, env)`` of a head and a worker node of one CPU each (``ray_nodes.two_nodes``): started by the first
    multi-node test, kept for the others (a start and stop of two nodes each saved), stopped at the end of the
    session. Each test's driver runs in a process of its own and leaves nothing behind when it ends."""
    from ray_nodes import two_nodes

    with two_nodes("simmtm-2n-") as cluster:
        yield cluster
