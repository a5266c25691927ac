"""The fault suite, bad inputs: every case runs the real `simmtm` entry point in this process and must end with
the documented exit code (2), exactly one line on stderr naming the file or key at fault, and nothing written
anywhere under the test's folder (no output folder created, an existing one untouched).

Cases are grouped by what is bad: configs, data files, sweep files, cluster files, checkpoints and output paths.
A case whose ``hole`` names a point of issue 14 that is not closed yet is an expected failure (strict: it must
start passing when the point is done, and the marker then goes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from simmtm.cli import main

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- the workspace each case builds its inputs in -----------------------------------------------------------------


class Workspace:
    """A tmp folder with a tiny CSV, and builders for the files a case breaks. ``out`` is where output would go."""

    def __init__(self, root: Path, make_config: Callable[..., dict], csv_writer: Callable[..., Path]) -> None:
        self.root = root
        self.csv = csv_writer(root / "series.csv")
        self.out = root / "out"
        self._make_config = make_config
        self._csv_writer = csv_writer
        self.holders: list[subprocess.Popen] = []

    def held(self, folder: Path) -> str:
        """``folder``, owned by another live process (holding its lock until the case ends)."""
        code = "import sys, time; from simmtm.outdir.folder_lock import lock_folder; lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(120)"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.holders.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return str(folder)

    def study(self, name: str = "shared") -> str:
        """A database URL whose study ``name`` exists already (another sweep's)."""
        import optuna

        url = f"sqlite:///{self.root / 'studies.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(storage=url, study_name=name)
        return url

    def raw(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._make_config(self.csv, changes)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def config(
        self, changes: dict[str, Any] | None = None, *, drop: tuple[str, ...] = (), name: str = "config.yaml"
    ) -> str:
        raw = self.raw(changes)
        for key in drop:
            section, _, leaf = key.rpartition(".")
            (raw[section] if section else raw).pop(leaf)
        return str(self.write(name, yaml.safe_dump(raw, sort_keys=False)))

    def data(self, name: str, write: Callable[[Path], Any]) -> str:
        """A config over a data file that ``write(path)`` produces."""
        path = self.root / name
        write(path)
        return self.config({"data": {"path": str(path)}})

    def sweep(
        self,
        search: dict[str, Any] | None = None,
        *,
        tune: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        run: dict[str, Any] | None = None,
    ) -> str:
        raw = self.raw(run)
        raw["search"] = (
            search
            if search is not None
            else {"method": "tpe", "params": {"pretrain.mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}}}
        )
        raw["tune"] = {"num_samples": 2, "probe_steps": 2, **(tune or {})}
        raw["resources"] = resources if resources is not None else {"workers": 1, "cpus_per_worker": 1}
        return str(self.write("sweep.yaml", yaml.safe_dump(raw, sort_keys=False)))

    def cluster(self, change: Callable[[dict[str, Any]], Any]) -> str:
        raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
        change(raw)
        return str(self.write("cluster.yaml", yaml.safe_dump(raw, sort_keys=False)))

    def checkpoint(self, state: Any, name: str = "ckpt.pt") -> str:
        path = self.root / name
        torch.save(state, path)
        return str(path)

    def pretrain_run(self, name: str = "pre") -> Path:
        """A real (tiny, 3-step) pre-training run folder."""
        run = self.root / name
        assert main(["pretrain", self.config(name=f"{name}.yaml"), "--out", str(run), "--no-progress"]) == 0
        return run

    def sweep_dir(self, name: str = "sweep-done", *, csv: bool = True, db: bool = True) -> Path:
        """A finished sweep folder as `simmtm sweep` writes it (sweep.yaml, sweep.json, optuna.db, trials.csv)."""
        import optuna

        root = self.root / name
        root.mkdir()
        key = "pretrain.mask_ratio"
        raw = self.raw()
        raw["search"] = {"method": "tpe", "params": {key: {"type": "float", "low": 0.1, "high": 0.9}}}
        (root / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        storage = f"sqlite:///{root / 'optuna.db'}"
        (root / "sweep.json").write_text(
            json.dumps(
                {
                    "metric": "val_mse",
                    "mode": "min",
                    "study_name": name,
                    "storage": storage,
                    "params": [key],
                    "search_space": raw["search"],
                    "method": "tpe",
                    "seed": 0,
                }
            )
        )
        values = [(0.1 + 0.1 * i, 0.5 + (0.1 * i - 0.4) ** 2) for i in range(8)]
        if db:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(storage=storage, study_name=name)
            dist = optuna.distributions.FloatDistribution(0.1, 0.9)
            for r, score in values:
                study.add_trial(optuna.trial.create_trial(value=score, params={key: r}, distributions={key: dist}))
        if csv:
            pd.DataFrame(
                [
                    {
                        "trial_id": f"t{i}",
                        "state": "COMPLETE",
                        "score": s,
                        "val_score": s,
                        "test_score": None,
                        "repeat": 0,
                        "epochs": 1,
                        "wall_s": 1.0,
                        "error": "",
                        key: r,
                    }
                    for i, (r, s) in enumerate(values)
                ]
            ).to_csv(root / "trials.csv", index=False)
        return root


@pytest.fixture
def ws(tmp_path: Path, make_config, csv_writer):
    workspace = Workspace(tmp_path, make_config, csv_writer)
    yield workspace
    for proc in workspace.holders:
        proc.kill()
        proc.wait()


# --- the table ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    kind: str  # configs | data files | sweep files | cluster files | checkpoints | output paths
    argv: Callable[[Workspace], list[str]]  # the command line; built inside the case's workspace
    expected: str  # a pattern the error line must match
    code: int = 2
    hole: str | None = None  # the issue-14 point that will close it; until then an expected failure


CASES: dict[str, BadInput] = {}


def case(name: str, kind: str, argv: Callable[[Workspace], list[str]], expected: str, **kw: Any) -> None:
    assert name not in CASES, name
    CASES[name] = BadInput(kind, argv, expected, **kw)


def pretrain(config: Callable[[Workspace], str], *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda w: ["pretrain", config(w), "--out", str(w.out), "--no-progress", *extra]


def finetune(config: Callable[[Workspace], str], *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda w: ["finetune", config(w), "--out", str(w.out), "--no-progress", *extra]


def with_changes(changes: dict[str, Any]) -> Callable[[Workspace], str]:
    return lambda w: w.config(changes)


# configs: values outside their range, of the wrong type, non-finite; structure; overrides
INF, NAN = float("inf"), float("nan")
for key, value, pattern in [
    ("pretrain.mask_ratio", 0, "greater than 0"),
    ("pretrain.mask_ratio", 1, "less than 1"),
    ("pretrain.mask_ratio", -0.2, "greater than 0"),
    ("pretrain.mask_ratio", 1.5, "less than 1"),
    ("pretrain.num_masked", 0, "greater than or equal to 1"),
    ("pretrain.num_masked", -3, "greater than or equal to 1"),
    ("pretrain.mask_length", 0.5, "greater than or equal to 1"),
    ("pretrain.temperature", 0, "greater than 0"),
    ("pretrain.temperature", -0.2, "greater than 0"),
    ("pretrain.epochs", 0, "greater than or equal to 1"),
    ("pretrain.batch_size", 1, "greater than or equal to 2"),
    ("pretrain.lr", 0, "greater than 0"),
    ("pretrain.lr", -1e-3, "greater than 0"),
    ("pretrain.weight_decay", -1, "greater than or equal to 0"),
    ("pretrain.grad_clip", 0, "greater than 0"),
    ("pretrain.max_steps", 0, "greater than or equal to 1"),
    ("pretrain.val_batches", 0, "greater than or equal to 1"),
    ("pretrain.constraint_weight", -1, "greater than or equal to 0"),
    ("model.dropout", 1, "less than 1"),
    ("model.dropout", -0.1, "greater than or equal to 0"),
    ("model.d_model", 0, "greater than or equal to 1"),
    ("model.n_heads", 0, "greater than or equal to 1"),
    ("model.n_layers", 0, "greater than or equal to 1"),
    ("model.projector_dim", 0, "greater than or equal to 1"),
    ("data.seq_len", 1, "greater than or equal to 2"),
    ("data.stride", 0, "greater than or equal to 1"),
    ("data.val_fraction", 1, "less than 1"),
    ("data.num_workers", -1, "greater than or equal to 0"),
    ("finetune.lr_decay", 0, "greater than 0"),
    ("finetune.lr_decay", 1.5, "less than or equal to 1"),
    ("finetune.patience", 0, "greater than or equal to 1"),
    ("finetune.horizons", [], "non-empty list"),
    ("finetune.horizons", [0, 4], "positive integers"),
    ("finetune.horizons", [4, 2.5], "valid integer"),
    ("finetune.batch_size", 0, "greater than or equal to 1"),
    ("threads", 0, "greater than or equal to 1"),
    # non-finite floats (14.3): never a valid setting
    ("pretrain.mask_length", INF, "finite number"),
    ("pretrain.temperature", INF, "finite number"),
    ("pretrain.lr", NAN, "finite number"),
    ("pretrain.lr", INF, "finite number"),
    ("pretrain.weight_decay", INF, "finite number"),
    ("pretrain.constraint_weight", NAN, "finite number"),
    ("pretrain.grad_clip", INF, "finite number"),
    ("model.dropout", NAN, "finite number"),
    ("finetune.lr", INF, "finite number"),
    ("finetune.lr_decay", NAN, "finite number"),
    ("data.val_fraction", NAN, "finite number"),
    ("model.attention_dropout", NAN, "finite number"),
    # wrong types and unknown choices
    ("pretrain.num_masked", "three", "valid integer"),
    ("pretrain.num_masked", 2.5, "valid integer"),
    ("pretrain.mask_ratio", "high", "valid number"),
    ("pretrain.masking", "zigzag", "geometric'?,? (or )?'?random"),
    ("pretrain.loss_weighting", "learned", "'auto' or 'fixed'"),
    ("pretrain.scheduler", "step", "'cosine' or 'none'"),
    ("device", "tpu", "'auto', 'cpu' or 'cuda'"),
    ("data.features", "X", "'M' or 'S'"),
    ("data.task", "regression", "'forecasting' or 'classification'"),
    ("seed", "abc", "valid integer"),
    ("finetune.horizons", "96", "valid list"),
    ("model.projector_norm", "group", "'batch', 'layer' or 'none'"),
    ("finetune.mode", "frozen", "'full' or 'probe'"),
    ("model.kernel_sizes", 3, "valid list"),
]:
    section, _, leaf = key.rpartition(".")
    changes = {section: {leaf: value}} if section else {leaf: value}
    where = re.escape(key) if leaf != "horizons" else "finetune[.:] ?horizons"  # also checked across the section
    case(f"config {key}={value!r}", "configs", pretrain(with_changes(changes)), rf"{where}\b.*{pattern}")

case(
    "config unknown key",
    "configs",
    pretrain(with_changes({"pretrain": {"mask_ratoi": 0.3}})),
    r"unknown key 'pretrain.mask_ratoi' \(did you mean 'pretrain.mask_ratio'\?\)",
)
case(
    "config unknown section", "configs", pretrain(with_changes({"pretrian": {"epochs": 1}})), r"unknown key 'pretrian'"
)
case("config section as a value", "configs", pretrain(with_changes({"pretrain": 3})), r"pretrain: .*valid dictionary")
case("config no data section", "configs", pretrain(lambda w: w.config(drop=("data",))), r"missing key 'data'")
case(
    "config neither name nor path",
    "configs",
    pretrain(lambda w: w.config({"data": {"path": None}})),
    r"set data.name .* or data.path",
)
case("config unknown encoder", "configs", pretrain(with_changes({"model": {"encoder": "lstm"}})), r"lstm")
case(
    "config heads do not divide width",
    "configs",
    pretrain(with_changes({"model": {"n_heads": 3}})),
    r"model.d_model \(8\) must be divisible by model.n_heads \(3\)",
)
case(
    "config batch larger than the data",
    "configs",
    pretrain(with_changes({"pretrain": {"batch_size": 1000}})),
    r"pretrain.batch_size \(1000\) exceeds the \d+ training samples",
)
case(
    "config horizon longer than a split",
    "configs",
    finetune(with_changes({"finetune": {"horizons": [4, 100]}})),
    r"horizon 100 is longer than the validation split",
)
case("config file missing", "configs", pretrain(lambda w: str(w.root / "nope.yaml")), r"nope.yaml: no such config file")
case("config file is a folder", "configs", pretrain(lambda w: str(w.root)), r"is a directory")
case(
    "config file empty", "configs", pretrain(lambda w: str(w.write("empty.yaml", ""))), r"empty.yaml: the file is empty"
)
case(
    "config file a list",
    "configs",
    pretrain(lambda w: str(w.write("list.yaml", "- a\n- b\n"))),
    r"list.yaml: expected a mapping",
)
case(
    "config file bad YAML",
    "configs",
    pretrain(lambda w: str(w.write("bad.yaml", "data:\n  path: [x\n"))),
    r"bad.yaml: not valid YAML at line \d+",
)
case(
    "config file binary",
    "configs",
    pretrain(lambda w: str(w.write("bin.yaml", b"\x00\xff\xfe\x81garbage"))),
    r"bin.yaml: cannot read",
)
case(
    "config file unreadable",
    "configs",
    pretrain(lambda w: (p := w.config(name="locked.yaml"), os.chmod(p, 0))[0]),
    r"locked.yaml: cannot read: .*Permission denied",
    hole="skip-root",
)
case("--set without =", "configs", pretrain(lambda w: w.config(), "--set", "pretrain.mask_ratio"), r"is not key=value")
case(
    "--set unknown key",
    "configs",
    pretrain(lambda w: w.config(), "--set", "pretrain.ratio=0.3"),
    r"unknown key 'pretrain.ratio'",
)
case(
    "--set wrong type", "configs", pretrain(lambda w: w.config(), "--set", "pretrain.mask_ratio=high"), r"valid number"
)
case(
    "--set into a value",
    "configs",
    pretrain(lambda w: w.config(), "--set", "seed.x=1"),
    r"'seed' is a value, not a section",
)
case("--set .inf", "configs", pretrain(lambda w: w.config(), "--set", "pretrain.temperature=.inf"), r"finite number")
case("--set .nan", "configs", pretrain(lambda w: w.config(), "--set", "pretrain.mask_length=.nan"), r"finite number")
case(
    "validate a bad value",
    "configs",
    lambda w: ["validate", w.config({"pretrain": {"mask_length": INF}})],
    r"pretrain.mask_length: .*finite number",
)


# data files


def _csv_column(values: list) -> Callable[[Path], Any]:
    def write(path: Path) -> None:
        frame = pd.DataFrame(
            {
                "date": pd.date_range("2021-01-01", periods=320, freq="h"),
                "c0": np.sin(np.arange(320) / 5.0),
                "c1": (values * 320)[:320],
            }
        )
        frame.to_csv(path, index=False)

    return write


def _ts_files(train: str, test: str = "1,2,3,4:a\n1,2,3,4:b\n") -> Callable[[Path], Any]:
    head = "@problemName toy\n@univariate true\n@equalLength true\n@classLabel true a b\n@data\n"

    def write(path: Path) -> None:
        path.write_text(head + train if train.startswith(("1", "2", "x")) else train)
        path.with_name(path.name.replace("TRAIN", "TEST")).write_text(head + test)

    return write


def ts_config(w: Workspace, train: str, **data: Any) -> str:
    path = w.root / "toy_TRAIN.ts"
    _ts_files(train)(path)
    return w.config({"data": {"path": str(path), "seq_len": 4, **data}})


def _npz(**arrays: Any) -> Callable[[Path], Any]:
    return lambda path: np.savez(path, **arrays)


for name, build, pattern in [
    ("missing file", lambda w: w.config({"data": {"path": str(w.root / "nope.csv")}}), r"nope.csv does not exist"),
    ("folder as a CSV", lambda w: w.data("folder.csv", lambda p: p.mkdir()), r"folder.csv: "),
    (
        "binary CSV",
        lambda w: w.data(
            "garbage.csv",
            lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ),
        r"garbage.csv: cannot read as CSV",
    ),
    ("non-numeric column", lambda w: w.data("bad.csv", _csv_column(["a", "b"])), r"bad.csv: non-numeric column"),
    ("NaN column", lambda w: w.data("bad.csv", _csv_column([1.0, NAN])), r"bad.csv: missing values in column"),
    ("inf column", lambda w: w.data("bad.csv", _csv_column([1.0, INF])), r"bad.csv: .*(inf|finite)"),
    (
        "header only",
        lambda w: w.data("empty.csv", lambda p: p.write_text("date,c0,c1\n")),
        r"empty.csv: the CSV has no data rows",
    ),
    ("empty CSV", lambda w: w.data("zero.csv", lambda p: p.write_text("")), r"zero.csv: "),
    (
        "dates that are not dates",
        lambda w: w.data("dates.csv", lambda p: p.write_text("date,c0\n" + "x,1\n" * 300)),
        r"dates.csv: column 'date' does not parse as dates",
    ),
    (
        "too short for seq_len",
        lambda w: w.data("short.csv", lambda p: w._csv_writer(p, rows=20)),
        r"short.csv: seq_len 24 .*longer than",
    ),
    ("target column missing", lambda w: w.config({"data": {"features": "S", "target": "OT"}}), r"OT"),
    ("unknown extension", lambda w: w.data("series.txt", lambda p: p.write_text("1,2\n")), r"series.txt"),
    (
        "unknown data set name",
        lambda w: w.config({"data": {"path": None, "name": "ETTh9"}}),
        r"unknown data set 'ETTh9'",
    ),
    (
        ".ts unequal lengths",
        lambda w: ts_config(w, "1,2,3,4:a\n1,2,3:b\n2,3,4,5:a\n"),
        r"toy_TRAIN.ts: line \d+: series length 3 differs from 4",
    ),
    (
        ".ts label not declared",
        lambda w: ts_config(w, "1,2,3,4:a\n1,2,3,4:z\n2,3,4,5:a\n"),
        r"toy_TRAIN.ts: line \d+: label 'z'",
    ),
    (
        ".ts value not a number",
        lambda w: ts_config(w, "1,2,x,4:a\n1,2,3,4:b\n2,3,4,5:a\n"),
        r"toy_TRAIN.ts: line \d+: a value is not a number",
    ),
    (
        ".ts without @data",
        lambda w: ts_config(w, "@problemName toy\n@classLabel true a b\n"),
        r"toy_TRAIN.ts: no @data line",
    ),
    (
        ".ts partner missing",
        lambda w: w.data("solo_TRAIN.ts", lambda p: p.write_text("@classLabel true a\n@data\n1,2,3,4:a\n")),
        r"partner file solo_TEST.ts is missing",
    ),
    (
        ".npz without labels",
        lambda w: w.data("x.npz", _npz(samples=np.zeros((8, 1, 24)))),
        r"x.npz: expected a mapping with 'samples'",
    ),
    (
        ".npz labels of another length",
        lambda w: w.data("x.npz", _npz(samples=np.zeros((8, 1, 24)), labels=np.zeros(5))),
        r"x.npz: 'labels' must have shape \[8\]",
    ),
    (
        ".npz with NaN",
        lambda w: w.data("x.npz", _npz(samples=np.full((8, 1, 24), NAN), labels=np.zeros(8))),
        r"x.npz: 'samples' holds NaN",
    ),
    (".pt garbage", lambda w: w.data("x.pt", lambda p: p.write_bytes(b"not a tensor file")), r"x.pt: cannot load"),
    (
        "CSV without read permission",
        lambda w: (w.csv.chmod(0), w.config())[1],
        r"series.csv: cannot read as CSV: .*Permission denied",
    ),
]:
    case(f"data {name}", "data files", pretrain(build), pattern, hole="skip-root" if "permission" in name else None)


# sweep files (checked before Ray starts)


def sweep(search: dict[str, Any] | None = None, *extra: str, **kw: Any) -> Callable[[Workspace], list[str]]:
    return lambda w: ["sweep", w.sweep(search, **kw), "--out", str(w.out), "--quiet-table", *extra]


def param(**spec: Any) -> dict[str, Any]:
    key = spec.pop("key", "pretrain.mask_ratio")
    return {"method": "tpe", "params": {key: spec}}


R_KEY = "pretrain.mask_ratio"
for name, argv, pattern, hole in [
    ("tpe without params", sweep({"method": "tpe", "params": {}}), r"needs at least one entry under 'params'", None),
    ("grid without grid", sweep({"method": "grid"}), r"method: grid needs a 'grid' mapping", None),
    (
        "grid with params",
        sweep(
            {"method": "grid", "grid": {R_KEY: [0.5]}, "params": {R_KEY: {"type": "float", "low": 0.1, "high": 0.9}}}
        ),
        r"not 'params'",
        None,
    ),
    ("grid with an empty list", sweep({"method": "grid", "grid": {R_KEY: []}}), r"needs at least one value", None),
    ("grid with repeated values", sweep({"method": "grid", "grid": {R_KEY: [0.5, 0.5]}}), r"repeated values", None),
    (
        "grid value out of range",
        sweep({"method": "grid", "grid": {R_KEY: [0.5, 1.5]}}),
        r"value 1.5 is not valid",
        None,
    ),
    (
        "grid with num_samples",
        sweep({"method": "grid", "grid": {R_KEY: [0.3, 0.5]}}),
        r"tune.num_samples: leave it out",
        None,
    ),
    ("unknown method", sweep({"method": "bayes", "params": {}}), r"search.method", None),
    (
        "unknown parameter",
        sweep(param(key="pretrain.mask_ratoi", type="float", low=0.1, high=0.9)),
        r"unknown parameter 'pretrain.mask_ratoi'",
        None,
    ),
    (
        "unsearchable parameter",
        sweep(param(key="device", type="categorical", choices=["cpu"])),
        r"'device' cannot be searched",
        None,
    ),
    ("low above high", sweep(param(type="float", low=0.9, high=0.1)), r"low \(0.9\) must be below high \(0.1\)", None),
    ("low equals high", sweep(param(type="float", low=0.5, high=0.5)), r"must be below high", None),
    (
        "log with low 0",
        sweep(param(key="pretrain.temperature", type="float", low=0, high=1, log=True)),
        r"log: true needs low > 0",
        None,
    ),
    (
        "log with step",
        sweep(param(key="pretrain.temperature", type="float", low=0.1, high=1, log=True, step=0.1)),
        r"log and step cannot",
        None,
    ),
    (
        "int with fractional bounds",
        sweep(param(key="pretrain.num_masked", type="int", low=1.5, high=4)),
        r"whole-number bounds",
        None,
    ),
    (
        "int with a fractional step",
        sweep(param(key="pretrain.num_masked", type="int", low=1, high=5, step=0.5)),
        r"step",
        None,
    ),
    ("float step wider than its range", sweep(param(type="float", low=0.1, high=0.3, step=0.5)), r"step", None),
    (
        "high - low not a multiple of step",
        sweep(param(type="float", low=0.1, high=0.9, step=0.3)),
        r"not a multiple of step",
        None,
    ),
    ("step 0", sweep(param(type="float", low=0.1, high=0.9, step=0)), r"step: .*greater than 0", None),
    ("infinite high", sweep(param(key="pretrain.num_masked", type="int", low=1, high=INF)), r"finite", None),
    ("NaN low", sweep(param(type="float", low=NAN, high=0.9)), r"finite", None),
    (
        "categorical without choices",
        sweep(param(key="model.encoder", type="categorical", choices=[])),
        r"non-empty 'choices'",
        None,
    ),
    (
        "categorical with bounds",
        sweep(param(key="model.encoder", type="categorical", choices=["transformer"], low=1)),
        r"choices' only",
        None,
    ),
    (
        "float with choices",
        sweep(param(type="float", low=0.1, high=0.9, choices=[0.2])),
        r"use type: categorical",
        None,
    ),
    (
        "range outside the run's",
        sweep(param(type="float", low=0.1, high=1.5)),
        r"value 1.5 is not valid for the run",
        None,
    ),
    (
        "unknown encoder choice",
        sweep(param(key="model.encoder", type="categorical", choices=["transformer", "lstm"])),
        r"unknown encoder 'lstm'",
        None,
    ),
    ("unknown parameter type", sweep(param(type="double", low=0.1, high=0.9)), r"type", None),
    (
        "when on an unknown key",
        sweep(
            {
                "method": "tpe",
                "params": {R_KEY: {"type": "float", "low": 0.1, "high": 0.9, "when": {"model.encodr": "patch"}}},
            }
        ),
        r"'model.encodr' is neither",
        None,
    ),
    (
        "when never true",
        sweep(
            {
                "method": "tpe",
                "params": {
                    "model.encoder": {"type": "categorical", "choices": ["transformer"]},
                    "model.patch_len": {"type": "int", "low": 4, "high": 8, "when": {"model.encoder": "patch"}},
                },
            }
        ),
        r"never takes 'patch'",
        None,
    ),
    (
        "probe override unknown key",
        sweep(tune={"probe_overrides": {"data.featurez": "S"}}),
        r"unknown parameter 'data.featurez'",
        None,
    ),
    (
        "probe override bad value",
        sweep(tune={"probe_overrides": {"data.features": "X"}}),
        r"value 'X' is not valid",
        None,
    ),
    ("metric unknown", sweep(tune={"metric": "val_loss"}), r"'val_loss' is not a validation score", None),
    (
        "metric for another task",
        sweep(tune={"metric": "val_accuracy"}),
        r"classification score but the data is a forecasting task",
        None,
    ),
    ("unknown tune key", sweep(tune={"num_sample": 3}), r"unknown key 'tune.num_sample'", None),
    ("num_samples 0", sweep(tune={"num_samples": 0}), r"tune.num_samples: .*greater than or equal to 1", None),
    ("time budget NaN", sweep(tune={"time_budget_s": NAN}), r"tune.time_budget_s", None),
    ("scheduler unknown", sweep(tune={"scheduler": {"type": "hyperband"}}), r"tune.scheduler.type", None),
    (
        "reduction factor 1",
        sweep(tune={"scheduler": {"type": "asha", "reduction_factor": 1}}),
        r"reduction_factor: .*greater than 1",
        None,
    ),
    ("unknown resources key", sweep(resources={"gpus": 1}), r"unknown key 'resources.gpus'", None),
    ("workers 0", sweep(resources={"workers": 0}), r"resources.workers: .*greater than or equal to 1", None),
    ("fractional CPUs with workers", sweep(resources={"workers": 2, "cpus_per_worker": 0.5}), r"use whole CPUs", None),
    ("more CPUs than the machine", sweep(resources={"workers": 1, "cpus_per_worker": 4096}), r"4096", None),
    (
        "search section missing",
        lambda w: ["sweep", w.config({"tune": {"num_samples": 2}}), "--out", str(w.out)],
        r"needs a 'search' section",
        None,
    ),
    ("not a sweep file", lambda w: ["sweep", w.config(), "--out", str(w.out)], r"search", None),
    ("warm start from nowhere", sweep(None, "--warm-start", "/nonexistent/sweep"), r"/nonexistent/sweep", None),
    ("resume without a sweep", sweep(None, "--resume"), r"resume", None),
    (
        "an existing study, not shared",
        lambda w: ["sweep", w.sweep(tune={"storage": w.study(), "study_name": "shared"}), "--out", str(w.out)],
        r"already holds a study 'shared'",
        None,
    ),
    (
        "shared study without a database",
        sweep(tune={"shared_study": True}),
        r"shared_study: true needs tune.storage",
        None,
    ),
]:
    case(f"sweep {name}", "sweep files", argv, pattern, hole=hole)


# cluster files (`simmtm cluster check`: one FAIL line per broken file, then the summary)


def _drop(*keys: str) -> Callable[[dict], Any]:
    def change(raw: dict) -> None:
        node = raw
        for k in keys[:-1]:
            node = node[k]
        node.pop(keys[-1])

    return change


def _set(value: Any, *keys: str) -> Callable[[dict], Any]:
    def change(raw: dict) -> None:
        node = raw
        for k in keys[:-1]:
            node = node[k] if k != "<gpu>" else next(v for v in node.values() if v["resources"].get("GPU"))
        node[keys[-1]] = value

    return change


def _head(raw: dict) -> dict:
    return raw["available_node_types"][raw["head_node_type"]]


for name, change, pattern in [
    ("unknown top-level key", _set(1, "max_worker"), r"max_worker"),
    ("unknown provider", _set("azzure", "provider", "type"), r"unknown provider 'azzure'"),
    ("head type not declared", _set("nohead", "head_node_type"), r"nohead"),
    ("node types not a mapping", _set([1, 2], "available_node_types"), r"available_node_types"),
    ("fractional GPU resource", _set({"GPU": 0.5, "CPU": 4}, "available_node_types", "<gpu>", "resources"), r"GPU"),
    (
        "min workers above max",
        lambda raw: (
            _set(9, "available_node_types", "<gpu>", "min_workers")(raw)
            or _set(2, "available_node_types", "<gpu>", "max_workers")(raw)
        ),
        r"min_workers|max_workers",
    ),
    ("no driver resource on the head", lambda raw: _head(raw)["resources"].clear(), r"simmtm_driver"),
    ("no provider", _drop("provider"), r"provider"),
]:
    case(f"cluster {name}", "cluster files", lambda w, change=change: ["cluster", "check", w.cluster(change)], pattern)
case("cluster file missing", "cluster files", lambda w: ["cluster", "check", str(w.root / "nope.yaml")], r"nope.yaml")
case(
    "cluster file bad YAML",
    "cluster files",
    lambda w: ["cluster", "check", str(w.write("c.yaml", "a: [\n"))],
    r"c.yaml",
)


# checkpoints (`finetune --from`, and the checkpoint a pre-training resumes from)


class Foreign:  # a class torch's safe loader refuses
    pass


def _truncated(w: Workspace) -> str:
    run = w.pretrain_run()
    data = (run / "checkpoints" / "last.pt").read_bytes()
    return str(w.write("truncated.pt", data[: len(data) // 2]))


def _finetuned(w: Workspace) -> str:
    """A fine-tuning run's folder (kind simmtm-finetune), given where a pre-training is expected."""
    assert main(["finetune", w.config(name="ft.yaml"), "--out", str(w.root / "ft"), "--no-progress"]) == 0
    return str(w.root / "ft")


for name, source, pattern, hole in [
    ("missing", lambda w: str(w.root / "nope"), r"nope", None),
    (
        "empty folder",
        lambda w: (w.root / "empty").mkdir() or str(w.root / "empty"),
        r"empty: not a pre-training run directory",
        None,
    ),
    (
        "zero-byte file",
        lambda w: str(w.write("zero.pt", b"")),
        r"zero.pt: not a readable simmtm checkpoint: the file is empty",
        None,
    ),
    (
        "text file",
        lambda w: str(w.write("notes.pt", "hello\n")),
        r"notes.pt: not a readable simmtm checkpoint: not a torch file",
        None,
    ),
    (
        "truncated checkpoint",
        _truncated,
        r"truncated.pt: not a readable simmtm checkpoint: truncated or not a torch file",
        None,
    ),
    (
        "pickle of a foreign class",
        lambda w: w.checkpoint({"obj": Foreign()}),
        r"ckpt.pt: not a readable simmtm checkpoint: it holds a Python object \(.*Foreign\)",
        None,
    ),
    (
        "a bare tensor",
        lambda w: w.checkpoint(torch.zeros(3)),
        r"ckpt.pt: not a simmtm checkpoint \(it holds a Tensor",
        None,
    ),
    (
        "a state without a kind",
        lambda w: w.checkpoint({"model": {}}),
        r"ckpt.pt: not a simmtm pre-training checkpoint",
        None,
    ),
    ("a fine-tuning run", _finetuned, r"ft", None),
    ("unreadable file", lambda w: (p := w.write("locked.pt", b"x"), p.chmod(0), str(p))[2], r"locked.pt", "skip-root"),
]:
    case(
        f"checkpoint {name}",
        "checkpoints",
        lambda w, source=source: ["finetune", w.config(), "--from", source(w), "--out", str(w.out), "--no-progress"],
        pattern,
        hole=hole,
    )
case(
    "checkpoint to resume from is garbage",
    "checkpoints",
    lambda w: (
        w.out.mkdir(),
        (w.out / "checkpoints").mkdir(),
        (w.out / "checkpoints" / "last.pt").write_bytes(b"junk"),
        ["pretrain", w.config(), "--out", str(w.out), "--no-progress"],
    )[-1],
    r"last.pt: not a readable simmtm checkpoint: not a torch file",
    hole=None,
)


# output paths: checked before any work; nothing simmtm did not write is overwritten


def _readonly(w: Workspace) -> Path:
    if IS_ROOT:  # root writes into any folder it owns; sysfs refuses even root
        return Path("/sys/simmtm-readonly")
    folder = w.root / "readonly"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder


def _foreign(w: Workspace) -> Path:
    folder = w.root / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work\n")
    return folder


def _a_file(w: Workspace) -> Path:
    return w.write("afile", "not a folder\n")


for name, argv, pattern, hole in [
    (
        "pretrain --out is a file",
        lambda w: ["pretrain", w.config(), "--out", str(_a_file(w))],
        r"afile: is a file, not a folder",
        None,
    ),
    (
        "pretrain --out under a file",
        lambda w: ["pretrain", w.config(), "--out", str(_a_file(w) / "run")],
        r"afile",
        None,
    ),
    (
        "pretrain --out read-only",
        lambda w: ["pretrain", w.config(), "--out", str(_readonly(w) / "run")],
        r"readonly|/sys",
        None,
    ),
    (
        "pretrain --out somebody's folder",
        lambda w: ["pretrain", w.config(), "--out", str(_foreign(w))],
        r"not a simmtm run directory",
        None,
    ),
    (
        "pretrain --overwrite somebody's folder",
        lambda w: ["pretrain", w.config(), "--out", str(_foreign(w)), "--overwrite"],
        r"not a simmtm run directory",
        None,
    ),
    ("finetune --out is a file", lambda w: ["finetune", w.config(), "--out", str(_a_file(w))], r"afile", None),
    (
        "finetune --out read-only",
        lambda w: ["finetune", w.config(), "--out", str(_readonly(w) / "run")],
        r"readonly|/sys",
        None,
    ),
    (
        "finetune --overwrite somebody's folder",
        lambda w: ["finetune", w.config(), "--out", str(_foreign(w)), "--overwrite"],
        r"not a simmtm run directory",
        None,
    ),
    (
        "finetune --out a pre-training run",
        lambda w: ["finetune", w.config(), "--out", str(w.pretrain_run())],
        r"already exists",
        None,
    ),
    ("run --out is a file", lambda w: ["run", w.config(), "--out", str(_a_file(w))], r"afile", None),
    ("run --out read-only", lambda w: ["run", w.config(), "--out", str(_readonly(w) / "run")], r"readonly|/sys", None),
    ("run --out somebody's folder", lambda w: ["run", w.config(), "--out", str(_foreign(w))], r"mine", None),
    ("sweep --out is a file", lambda w: ["sweep", w.sweep(), "--out", str(_a_file(w))], r"afile", None),
    ("sweep --out read-only", lambda w: ["sweep", w.sweep(), "--out", str(_readonly(w) / "s")], r"readonly|/sys", None),
    ("sweep --out somebody's folder", lambda w: ["sweep", w.sweep(), "--out", str(_foreign(w))], r"mine", None),
    ("sweep --out a pre-training run", lambda w: ["sweep", w.sweep(), "--out", str(w.pretrain_run())], r"pre", None),
    ("analyze a missing folder", lambda w: ["analyze", str(w.root / "nosweep")], r"nosweep", None),
    (
        "analyze an empty folder",
        lambda w: ["analyze", str((w.root / "e").mkdir() or w.root / "e"), "--out", str(w.out)],
        r"e",
        None,
    ),
    ("analyze --out is a file", lambda w: ["analyze", str(w.sweep_dir()), "--out", str(_a_file(w))], r"afile", None),
    (
        "analyze --out read-only",
        lambda w: ["analyze", str(w.sweep_dir()), "--out", str(_readonly(w) / "r")],
        r"readonly|/sys",
        None,
    ),
    (
        "analyze --out a run folder",
        lambda w: ["analyze", str(w.sweep_dir()), "--out", str(w.pretrain_run())],
        r"pre",
        None,
    ),
    (
        "analyze --out somebody's folder",
        lambda w: ["analyze", str(w.sweep_dir()), "--out", str(_foreign(w))],
        r"mine",
        None,
    ),
    (
        "analyze with both tables corrupt",
        lambda w: ["analyze", str(_corrupt_both(w)), "--out", str(w.out)],
        r"trials.csv|optuna.db",
        None,
    ),
    (
        "recommend --write a data file",
        lambda w: ["recommend", str(w.sweep_dir()), "--write", str(w.csv)],
        r"series.csv",
        None,
    ),
    (
        "recommend --write a folder",
        lambda w: ["recommend", str(w.sweep_dir()), "--write", str(_foreign(w))],
        r"mine",
        None,
    ),
    (
        "recommend --write read-only",
        lambda w: ["recommend", str(w.sweep_dir()), "--write", str(_readonly(w) / "b.yaml")],
        r"readonly|/sys",
        None,
    ),
    (
        "pretrain --out owned by a running process",
        lambda w: ["pretrain", w.config(), "--out", w.held(w.out)],
        r"out: in use by pid \d+ on .* since",
        None,
    ),
    (
        "finetune --out owned by a running process",
        lambda w: ["finetune", w.config(), "--out", w.held(w.out)],
        r"out: in use by pid \d+",
        None,
    ),
    (
        "run --out owned by a running process",
        lambda w: ["run", w.config(), "--out", w.held(w.out)],
        r"out: in use by pid \d+",
        None,
    ),
    (
        "sweep --out owned by a running driver",
        lambda w: ["sweep", w.sweep(), "--out", w.held(w.out)],
        r"out: in use by pid \d+",
        None,
    ),
    (
        "analyze --out owned by a running process",
        lambda w: ["analyze", str(w.sweep_dir()), "--out", w.held(w.out)],
        r"out: in use by pid \d+",
        None,
    ),
    (
        "recommend with both tables corrupt",
        lambda w: ["recommend", str(_corrupt_both(w))],
        r"trials.csv|optuna.db",
        None,
    ),
]:
    case(f"output {name}", "output paths", argv, pattern, hole=hole)


def _corrupt_both(w: Workspace) -> Path:
    root = w.sweep_dir()
    (root / "trials.csv").write_bytes(b"\x00\x01garbage")
    (root / "optuna.db").write_bytes(b"not a database")
    return root


# issue 25, the third round: each cause with variants of its own (other columns, sections, commands)
NO_CUDA = "skip-cuda"  # a device case: meaningful only where torch sees no CUDA device


def validate_data(config: Callable[[Workspace], str]) -> Callable[[Workspace], list[str]]:
    return lambda w: ["validate", config(w), "--data"]


def run_all(config: Callable[[Workspace], str], *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda w: ["run", config(w), "--out", str(w.out), "--no-progress", *extra]


def _csv_with(column: str, row: int, value: float, header: str | None = None) -> Callable[[Path], Any]:
    """The tiny two-column CSV (320 hourly rows: train 0-223, val 224-255, test 256-319) with one value changed."""

    def write(path: Path) -> None:
        frame = pd.DataFrame(
            {
                "date": pd.date_range("2021-01-01", periods=320, freq="h"),
                "c0": np.sin(np.arange(320) / 5.0),
                "c1": np.cos(np.arange(320) / 3.0),
            }
        )
        frame.loc[row, column] = value
        frame.to_csv(path, index=False)
        if header is not None:  # the same values under another header line
            lines = path.read_text().splitlines(keepends=True)
            path.write_text(header + "\n" + "".join(lines[1:]))

    return write


def _ts_pair(w: Workspace, train: str, test: str, labels: str = "a b", **data: Any) -> str:
    head = f"@problemName toy\n@univariate true\n@equalLength true\n@classLabel true {labels}\n@data\n"
    (w.root / "toy_TRAIN.ts").write_text(head + train)
    (w.root / "toy_TEST.ts").write_text(head + test)
    return w.config({"data": {"path": str(w.root / "toy_TRAIN.ts"), "seq_len": 4, **data}})


TS_OK = "1,2,3,4:a\n2,3,4,5:b\n1,3,2,4:a\n2,4,3,5:b\n3,1,2,4:a\n4,2,3,5:b\n"
TS_BIG = TS_OK.replace("2,4,3,5:b", "2,4,1e308,5:b").replace("3,1,2,4:a", "3,1,1e308,4:a")


def _labelled_dir(w: Workspace, val_labels: list[int], train_labels: tuple[int, ...] = (0, 1) * 4) -> str:
    """The official layout (train/val/test.npz) with these labels for the train and validation files."""
    folder = w.root / "official"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, labels in (("train", list(train_labels)), ("val", val_labels), ("test", [0, 1, 0, 1])):
        np.savez(folder / f"{split}.npz", samples=rng.normal(size=(len(labels), 1, 16)), labels=np.array(labels))
    return w.config({"data": {"path": str(folder)}})


OVERFLOW = r"overflows (float64|when standardised)"
for name, argv, pattern in [
    ("CSV 1e308 in a train row", pretrain(lambda w: w.data("big.csv", _csv_with("c1", 5, 1e308))),
     rf"big.csv: column 'c1', row 6 \(line 7\): .*{OVERFLOW}"),
    ("CSV -1.7e308 in another column", finetune(lambda w: w.data("big.csv", _csv_with("c0", 10, -1.7e308))),
     rf"big.csv: column 'c0', row 11 \(line 12\): .*{OVERFLOW}"),
    ("CSV 1e308 in a test row", pretrain(lambda w: w.data("big.csv", _csv_with("c0", 300, 1e308))),
     rf"big.csv: column 'c0', row 301 \(line 302\): .*{OVERFLOW}"),
    ("CSV 1e308 in a validation row", run_all(lambda w: w.data("big.csv", _csv_with("c1", 230, 1e308))),
     rf"big.csv: column 'c1', row 231 \(line 232\): .*{OVERFLOW}"),
    ("CSV 1e308 under validate --data", validate_data(lambda w: w.data("big.csv", _csv_with("c1", 5, 1e308))),
     rf"big.csv: column 'c1', row 6 .*{OVERFLOW}"),
    ("CSV 3e38 in a test row (float32 after scaling)", pretrain(lambda w: w.data("big.csv", _csv_with("c0", 310, 3e38))),
     rf"big.csv: column 'c0', row 311 .*{OVERFLOW}"),
    (".ts 1e308 in the TRAIN file", pretrain(lambda w: _ts_pair(w, TS_BIG, TS_OK)),
     rf"toy_TRAIN.ts: line \d+, channel 1, step 3: .*{OVERFLOW}"),
    (".ts 1e308 in the TEST file", finetune(lambda w: _ts_pair(w, TS_OK, TS_BIG)),
     rf"toy_TEST.ts: line \d+, channel 1, step 3: .*{OVERFLOW}"),
    (".ts 1e308 under validate --data", validate_data(lambda w: _ts_pair(w, TS_OK, TS_BIG)),
     rf"toy_TEST.ts: line \d+, channel 1, step 3: .*{OVERFLOW}"),
    (".npz value beyond float32", pretrain(lambda w: w.data("x.npz", _npz(
        samples=np.where(np.arange(8 * 24).reshape(8, 1, 24) == 29, 1e300, 1.0), labels=np.arange(8) % 2))),
     r"x.npz: sample 1, channel 1, step 6: a value overflows when cast to float32"),
    (".pt value beyond float32", finetune(lambda w: w.data("x.pt", lambda p: torch.save(
        {"samples": torch.full((8, 2, 24), 1.0, dtype=torch.float64).index_fill_(2, torch.tensor([3]), 1e200),
         "labels": torch.arange(8) % 2}, p))),
     r"x.pt: sample 0, channel 1, step 4: a value overflows when cast to float32"),
    # labels a classifier cannot learn from
    (".ts training file of one class", pretrain(lambda w: _ts_pair(w, TS_OK.replace(":b", ":a"), TS_OK)),
     r"toy_TRAIN.ts: the training split holds one class \('a'\)"),
    (".ts test labels never seen in training", finetune(lambda w: _ts_pair(
        w, TS_OK, TS_OK.replace("2,3,4,5:b", "2,3,4,5:c").replace("2,4,3,5:b", "2,4,3,5:d"), labels="a b c d")),
     r"toy_TEST.ts: test label\(s\) 'c', 'd' never occur in the training split \(it holds 'a', 'b'\)"),
    (".ts test labels unseen, validate --data", validate_data(lambda w: _ts_pair(
        w, TS_OK, TS_OK.replace(":b", ":c"), labels="a b c")),
     r"toy_TEST.ts: test label\(s\) 'c' never occur"),
    (".npz file of one class", pretrain(lambda w: w.data("one.npz", _npz(
        samples=np.random.default_rng(0).normal(size=(10, 1, 24)), labels=np.zeros(10)))),
     r"one.npz: the training split holds one class \('0'\)"),
    ("official layout, a validation label never trained on", finetune(lambda w: _labelled_dir(w, [0, 1, 2, 2])),
     r"val.npz: validation label\(s\) '2' never occur in the training split"),
    ("official layout, one class, under run", run_all(lambda w: _labelled_dir(w, [1, 1], (1,) * 8)),
     r"train.npz: the training split holds one class \('1'\)"),
    # a repeated column name
    ("CSV target column OT twice", pretrain(lambda w: w.config({"data": {
        "path": str((_csv_with("c0", 0, 0.0, "date,OT,OT")(w.root / "dup.csv"), w.root / "dup.csv")[1]),
        "features": "S", "target": "OT"}})),
     r"dup.csv: the target column 'OT' occurs 2 times in the header"),
    ("CSV target column c1 twice, finetune", finetune(lambda w: w.config({"data": {
        "path": str((_csv_with("c0", 0, 0.0, "date,c1,c1")(w.root / "dup.csv"), w.root / "dup.csv")[1]),
        "features": "S", "target": "c1"}})),
     r"dup.csv: the target column 'c1' occurs 2 times"),
    ("CSV target repeated, validate --data", validate_data(lambda w: w.config({"data": {
        "path": str((_csv_with("c0", 0, 0.0, "date,OT,OT")(w.root / "dup.csv"), w.root / "dup.csv")[1]),
        "features": "S", "target": "OT"}})),
     r"dup.csv: the target column 'OT' occurs 2 times"),
    # paths that are not what they seem
    ("data path a symbolic-link loop", pretrain(lambda w: (
        (w.root / "a.csv").symlink_to(w.root / "b.csv"), (w.root / "b.csv").symlink_to(w.root / "a.csv"),
        w.config({"data": {"path": str(w.root / "a.csv")}}))[-1]),
     r"a.csv: cannot open \(Too many levels of symbolic links\)"),
    ("data path a broken symbolic link", finetune(lambda w: (
        (w.root / "gone.csv").symlink_to(w.root / "moved.csv"), w.config({"data": {"path": str(w.root / "gone.csv")}})
    )[-1]), r"gone.csv is a symbolic link to .*moved.csv, which does not exist"),
    ("folder named x.ts", pretrain(lambda w: w.data("x.ts", lambda p: p.mkdir())), r"x.ts: is a folder"),
    ("folder named x.npz, validate --data", validate_data(lambda w: w.data("x.npz", lambda p: p.mkdir())),
     r"x.npz: is a folder"),
]:
    case(f"data (25) {name}", "data files", argv, pattern)


def _twice(w: Workspace, text: str, name: str = "twice.yaml", *, drop: str = "") -> str:
    """The tiny config (less its ``drop`` section) as YAML with ``text`` appended."""
    raw = {k: v for k, v in w.raw().items() if k != drop}
    return str(w.write(name, yaml.safe_dump(raw, sort_keys=False) + text))


def _quick_twice(w: Workspace) -> str:
    return str(w.write("quick.yaml", (REPO / "sweeps" / "quick.yaml").read_text() + "\npretrain:\n  epochs: 1\n"))


SEARCH_TWICE = (
    "search:\n  method: tpe\n  params:\n    pretrain.num_masked: {type: int, low: 1, high: 3}\n"
    "    pretrain.num_masked: {type: int, low: 2, high: 4}\ntune: {num_samples: 2}\n"
)
for name, argv, pattern in [
    ("a key twice in a section", finetune(lambda w: _twice(w, "finetune:\n  lr: 0.1\n  patience: 2\n  lr: 0.2\n", drop="finetune")),
     r"twice.yaml: key 'finetune.lr' appears twice, at lines (\d+) and (?!\1)\d+"),
    ("a section twice", pretrain(lambda w: _twice(w, "pretrain:\n  epochs: 1\n")),
     r"twice.yaml: key 'pretrain' appears twice, at lines \d+ and \d+"),
    ("a second pretrain section after sweeps/quick.yaml", lambda w: ["validate", _quick_twice(w)],
     r"quick.yaml: key 'pretrain' appears twice, at lines 2\d and 6\d"),
    ("a top-level value twice", run_all(lambda w: _twice(w, "seed: 3\n")), r"key 'seed' appears twice"),
    ("a flow mapping with a key twice", pretrain(lambda w: _twice(w, "model: {d_model: 8, d_model: 16}\n", drop="model")),
     r"twice.yaml: key 'model.d_model' appears twice, at lines (\d+) and \1"),
    ("a search parameter twice", lambda w: ["sweep", _twice(w, SEARCH_TWICE, "sweep.yaml"), "--out", str(w.out)],
     r"sweep.yaml: key 'search.params.pretrain.num_masked' appears twice"),
    ("a sweep file checked by validate", lambda w: ["validate", _twice(w, SEARCH_TWICE, "sweep.yaml")],
     r"key 'search.params.pretrain.num_masked' appears twice"),
    ("a key twice in a --set value", pretrain(lambda w: w.config(), "--set", "finetune.horizons=[4]",
                                                "--set", "model={d_model: 8, d_model: 16}"),
     r"key 'd_model' appears twice"),
]:
    case(f"config (25) {name}", "configs", argv, pattern)
case(
    "cluster (25) a key twice",
    "cluster files",
    lambda w: ["cluster", "check", str(w.write("cluster.yaml", (REPO / "cluster.yaml").read_text() + "\nmax_workers: 2\n"))],
    r"cluster.yaml: key 'max_workers' appears twice",
)

CUDA_PATTERN = r"device: cuda, but this machine has no CUDA device \(torch .*\); set device: cpu or auto"
for name, argv in [
    ("pretrain", pretrain(with_changes({"device": "cuda"}))),
    ("finetune", finetune(with_changes({"device": "cuda"}))),
    ("run via --set", run_all(lambda w: w.config(), "--set", "device=cuda")),
    ("validate --data", validate_data(with_changes({"device": "cuda"}))),
    ("finetune --from a run", lambda w: ["finetune", w.config({"device": "cuda"}), "--from", str(w.pretrain_run()),
                                         "--out", str(w.out), "--no-progress"]),
]:
    case(f"config (25) device: cuda, {name}", "configs", argv, CUDA_PATTERN, hole=NO_CUDA)


def _export(out: Callable[[Workspace], Path | str]) -> Callable[[Workspace], list[str]]:
    return lambda w: ["export", str(w.pretrain_run()), "--out", str(out(w))]


def _users_card(w: Workspace) -> Path:
    folder = w.root / "card"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    (folder / "config.json").write_text('{"lr": 0.1}\n')
    return folder


for name, argv, pattern in [
    ("an existing file", _export(_a_file), r"afile: is a file, not a folder"),
    ("under a file", _export(lambda w: _a_file(w) / "enc"), r"afile is a file, so no folder can be made"),
    ("read-only", _export(lambda w: _readonly(w) / "enc"), r"cannot write in"),
    ("a user's README.md and config.json", _export(_users_card), r"card: not a simmtm export folder"),
    ("somebody's folder", _export(_foreign), r"mine: not a simmtm export folder \(holds thesis.tex\)"),
    ("a pre-training run", lambda w: ["export", str(w.pretrain_run()), "--out", str(w.pretrain_run("other"))],
     r"other: not a simmtm export folder"),
    ("owned by a running process", _export(lambda w: w.held(w.out)), r"out: in use by pid \d+"),
]:
    case(f"output (25) export --out {name}", "output paths", argv, pattern)


def _official_checkpoint(w: Workspace, state: Any) -> list[str]:
    return ["import-official", str(REPO / "sweeps" / "etth1.yaml"), w.checkpoint(state), "--out", str(w.out)]


for name, argv, pattern in [
    ("import-official of a pickle of Python objects", lambda w: _official_checkpoint(w, {"args": Foreign()}),
     r"ckpt.pt: not a readable PyTorch checkpoint: it holds a Python object \(.*Foreign\)"),
    ("import-official of a model with an argparse namespace", lambda w: _official_checkpoint(
        w, {"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}),
     r"ckpt.pt: not a readable PyTorch checkpoint: it holds a Python object \(argparse.Namespace\)"),
    ("import-official of a truncated checkpoint", lambda w: [
        "import-official", str(REPO / "sweeps" / "etth1.yaml"), _truncated(w), "--out", str(w.out)],
     r"truncated.pt: not a readable PyTorch checkpoint: truncated or not a torch file"),
    ("import-official of a text file", lambda w: [
        "import-official", str(REPO / "sweeps" / "etth1.yaml"), str(w.write("notes.pt", "hi\n")), "--out", str(w.out)],
     r"notes.pt: not a readable PyTorch checkpoint: not a torch file"),
]:
    case(f"checkpoint (25) {name}", "checkpoints", argv, pattern)


# --- the check ----------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``root`` with its mode and (for a readable file) its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = p.lstat().st_mode
        data = b"<dir>" if p.is_dir() else p.read_bytes() if os.access(p, os.R_OK) else b"<unreadable>"
        out[str(p.relative_to(root))] = (mode, data)
    return out


CHECKERS = {"validate": "validate", "cluster": "cluster"}  # report per file: FAIL lines plus a summary line


def params():
    for name, spec in CASES.items():
        marks = []
        if spec.hole == "skip-root":
            marks.append(pytest.mark.skipif(IS_ROOT, reason="root reads and writes regardless of permissions"))
        elif spec.hole == NO_CUDA:
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device"))
        elif spec.hole:
            marks.append(
                pytest.mark.xfail(
                    reason=f"issue 14.{spec.hole.removeprefix('14.')} not closed yet", strict=True, run=False
                )
            )
        yield pytest.param(name, marks=marks, id=f"{spec.kind}: {name}")


@pytest.mark.parametrize("name", params())
def test_bad_input_is_refused_cleanly(name: str, ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    spec = CASES[name]
    try:
        argv = spec.argv(ws)
        capsys.readouterr()  # what building the inputs printed
        before = snapshot(ws.root)
        code = main(argv)
        out, err = capsys.readouterr()
        after = snapshot(ws.root)
    finally:
        for p in ws.root.rglob("*"):  # let pytest remove what a case locked
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
    assert code == spec.code, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
    lines = err.strip().splitlines()
    if argv[0] in CHECKERS:
        fails = [line for line in lines if line.startswith("FAIL ")]
        assert len(fails) == 1 and len(lines) == 2 and lines[-1].startswith(f"simmtm {argv[0]}: error: "), err
        line = fails[0]
    else:
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith(f"simmtm {argv[0]}: error: "), line
    assert re.search(spec.expected, line), line
    assert "Traceback" not in err and "weights_only" not in err and "\x1b[" not in err  # no colour codes
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


@pytest.mark.parametrize("broken", ["trials.csv", "optuna.db"])
def test_a_corrupt_table_is_reported_and_the_other_one_used(broken: str, ws: Workspace, capsys) -> None:
    root = ws.sweep_dir()
    (root / broken).write_bytes(b"\x00\x01garbage" * 10)
    capsys.readouterr()
    assert main(["recommend", str(root)]) == 0
    err = capsys.readouterr().err
    used = "optuna.db" if broken == "trials.csv" else "trials.csv"
    assert re.search(
        rf"note: .*sweep-done: {re.escape(broken)} .*{'Optuna study' if used == 'optuna.db' else 'trials.csv only'}",
        err,
    ), err


def test_the_table_covers_every_kind_with_over_100_cases() -> None:
    kinds = {}
    for spec in CASES.values():
        kinds[spec.kind] = kinds.get(spec.kind, 0) + 1
    assert set(kinds) == {"configs", "data files", "sweep files", "cluster files", "checkpoints", "output paths"}, kinds
    assert len(CASES) >= 100, kinds
