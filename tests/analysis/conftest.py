"""Synthetic sweep directories with a known score surface, written exactly as `simmtm sweep` writes them:
sweep.yaml, sweep.json, a real Optuna SQLite study and trials.csv."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

R, M, TAU, ENC = "pretrain.mask_ratio", "pretrain.num_masked", "pretrain.temperature", "model.encoder"

FULL_SPACE: dict[str, BaseDistribution] = {
    R: FloatDistribution(0.1, 0.9),
    M: IntDistribution(1, 8),
    TAU: FloatDistribution(0.02, 1.0, log=True),
    ENC: CategoricalDistribution(["transformer", "patch"]),
}

RUN_CONFIG = {
    "seed": 0,
    "device": "cpu",
    "data": {"name": "ETTh1", "seq_len": 96},
    "model": {"encoder": "transformer", "d_model": 16, "n_heads": 4, "n_layers": 2, "d_ff": 32},
    "pretrain": {"mask_ratio": 0.5, "num_masked": 3, "temperature": 0.2, "epochs": 2},
    "finetune": {"horizons": [96], "epochs": 1, "mode": "probe"},
}


@dataclass
class Row:
    params: dict[str, Any]
    score: float | None
    state: str = "COMPLETE"  # COMPLETE | PRUNED | FAILED | RUNNING
    repeat: int = 0
    test_score: float | None = None
    error: str = ""


def interior_surface(p: Mapping[str, Any]) -> float:
    """val_mse with its minimum 0.40 at r=0.5, M=3, tau=0.2, encoder transformer."""
    return (0.40 + 0.8 * (p.get(R, 0.5) - 0.5) ** 2 + 0.01 * (p.get(M, 3) - 3) ** 2
            + 0.02 * math.log10(p.get(TAU, 0.2) / 0.2) ** 2 + (0.03 if p.get(ENC) == "patch" else 0.0))


def edge_surface(p: Mapping[str, Any]) -> float:
    """val_mse falling all the way to r=0.9 (the upper bound); best M=3."""
    return 0.40 + 0.5 * (0.9 - p[R]) + 0.01 * (p[M] - 3) ** 2


def ridge_surface(p: Mapping[str, Any]) -> float:
    """val_mse whose best M grows with r: M*(r) = 1 + 10 (r - 0.1), so 1 at r=0.1 and 9 at r=0.9."""
    return 0.40 + 0.02 * (p[M] - (1 + 10 * (p[R] - 0.1))) ** 2 + 0.1 * (p[R] - 0.5) ** 2


def flat_m_surface(p: Mapping[str, Any]) -> float:
    """val_mse whose best M is 4 at every r."""
    return 0.40 + 0.02 * (p[M] - 4) ** 2 + 0.1 * (p[R] - 0.5) ** 2


def grid_rows(surface: Callable[[Mapping[str, Any]], float], *, r_values: Iterable[float], m_values: Iterable[int],
              repeats: int = 2, noise: float = 0.0, seed: int = 0, skip: Iterable[tuple[float, int]] = ()) -> list[Row]:
    rng = np.random.default_rng(seed)
    skip = set(skip)
    rows = []
    for r in r_values:
        for m in m_values:
            if (r, m) in skip:
                continue
            for rep in range(repeats):
                p = {R: r, M: m}
                rows.append(Row(p, surface(p) + noise * rng.normal(), repeat=rep))
    return rows


def tpe_rows(surface: Callable[[Mapping[str, Any]], float], space: Mapping[str, BaseDistribution], *, n_trials: int,
             noise: float = 0.0, seed: int = 0, direction: str = "minimize") -> list[Row]:
    """Run Optuna's TPE on the surface (plus noise) in memory and return its trials as rows."""
    rng = np.random.default_rng(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda t: surface({k: suggest(t, k, d) for k, d in space.items()}) + noise * rng.normal(), n_trials=n_trials)
    return [Row(dict(t.params), float(t.value)) for t in study.trials]


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    """Draw ``key`` from ``dist`` through Optuna's public suggest API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)


def write_sweep(root: Path, rows: list[Row], space: Mapping[str, BaseDistribution], *, metric: str = "val_mse",
                mode: str = "min", method: str = "tpe", search: Mapping[str, Any] | None = None,
                write_csv: bool = True, write_db: bool = True, running: int = 0) -> Path:
    """A sweep directory holding ``rows``: sweep.yaml, sweep.json, optuna.db (real study) and trials.csv."""
    root.mkdir(parents=True, exist_ok=True)
    params = list(space)
    search = dict(search) if search is not None else {"method": method, "params": {k: _spec(d) for k, d in space.items()}}
    study_name = f"sweep-{root.name}"
    storage = f"sqlite:///{root.resolve() / 'optuna.db'}"
    tune = {"repeats": max(r.repeat for r in rows) + 1 if rows else 1}
    if method != "grid":
        tune["num_samples"] = max(len(rows), 1)
    sweep_yaml = {**RUN_CONFIG, "search": search, "tune": tune, "resources": {"workers": 1, "cpus_per_worker": 1}}
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep_yaml, sort_keys=False))
    (root / "sweep.json").write_text(json.dumps({
        "metric": metric, "mode": mode, "study_name": study_name, "storage": storage, "params": params,
        "search_space": sweep_yaml["search"], "method": method, "seed": 0}, indent=2))
    if write_db:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rdb = optuna.storages.RDBStorage(storage)
        # No fsync per commit (5x faster to write; the file is the same Optuna database).
        sqlalchemy.event.listen(rdb.engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
        rdb.engine.dispose()
        study = optuna.create_study(storage=rdb, study_name=study_name, direction="minimize" if mode == "min" else "maximize")
        for row in rows:
            state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAILED": TrialState.FAIL}[row.state]
            study.add_trial(optuna.trial.create_trial(
                state=state, value=row.score if state == TrialState.COMPLETE else None, params=row.params,
                distributions={k: space[k] for k in row.params}, user_attrs={"repeat": row.repeat}))
        for _ in range(running):
            study.ask(fixed_distributions=dict(space))
    if write_csv:
        records = []
        for i, row in enumerate(rows):
            records.append({
                "trial_id": f"t{i:04d}", "state": row.state, "score": row.score if row.state != "FAILED" else None,
                "val_score": row.score if row.state != "FAILED" else None, "test_score": row.test_score,
                "repeat": row.repeat, "epochs": 2, "wall_s": 12.5, "error": row.error, **row.params})
        for j in range(running):
            records.append({"trial_id": f"t{len(rows) + j:04d}", "state": "RUNNING", "repeat": 0})
        pd.DataFrame(records, columns=["trial_id", "state", "score", "val_score", "test_score", "repeat", "epochs",
                                       "wall_s", "error", *params]).to_csv(root / "trials.csv", index=False)
    return root


def _spec(dist: BaseDistribution) -> dict[str, Any]:
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log}


@pytest.fixture(scope="session")
def interior_tpe_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-parameter TPE sweep (120 trials, noisy) whose optimum is inside: r=0.5, M=3, tau=0.2, transformer.
    Two extra failed trials and one pruned; test scores on the best three."""
    rows = tpe_rows(interior_surface, FULL_SPACE, n_trials=120, noise=0.004, seed=1)
    for row in sorted(rows, key=lambda r: r.score)[:3]:  # like tune.test_top_k: the best configurations get a test score
        row.test_score = row.score + 0.01
    rows.append(Row({R: 0.3, M: 2, TAU: 0.1, ENC: "patch"}, None, state="FAILED", error="Traceback ...\nRuntimeError: out of memory"))
    rows.append(Row({R: 0.6, M: 5, TAU: 0.5, ENC: "patch"}, None, state="FAILED", error="ValueError: NaN loss"))
    rows.append(Row({R: 0.7, M: 4, TAU: 0.3, ENC: "transformer"}, 0.9, state="PRUNED"))
    return write_sweep(tmp_path_factory.mktemp("interior") / "sweep", rows, FULL_SPACE)


def grid_search(values: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The search section of a grid sweep (simmtm.tuning.spec.SearchSpec)."""
    return {"method": "grid", "grid": {k: list(v) for k, v in values.items()}}


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """The builders and surfaces above, for tests (test modules cannot import conftest under importlib mode)."""
    return SimpleNamespace(
        R=R, M=M, TAU=TAU, ENC=ENC, FULL_SPACE=FULL_SPACE, Row=Row, suggest=suggest, write_sweep=write_sweep, grid_rows=grid_rows,
        tpe_rows=tpe_rows, grid_search=grid_search, interior_surface=interior_surface, edge_surface=edge_surface,
        ridge_surface=ridge_surface, flat_m_surface=flat_m_surface,
    )
