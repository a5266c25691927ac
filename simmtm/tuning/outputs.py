"""The files a sweep leaves under its directory, each read and written here, side by side.

``sweep.yaml`` (the resolved sweep file), ``sweep.json`` (``SweepMeta``: what the analysis needs to read the rest),
``trials.csv``, ``best.yaml`` (a runnable run config; ``write_recommended_yaml`` writes ``simmtm recommend --write``'s),
and a TensorBoard HParams summary (``timing.json``: ``simmtm.tuning.timing``).

``trials.csv`` has one row per Tune trial with the columns ``TRIAL_COLUMNS`` and then one column per searched
dotted key. ``score`` is the trial's result in the sweep's metric (the full fine-tune's validation score; empty
unless COMPLETE); ``val_score`` is the last probe's validation score (the number ASHA ranked it by; set for pruned
trials too); ``test_score`` is the test split's score, filled only for the best configurations, once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sqlite3
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from simmtm.config.keys import apply_params
from simmtm.config.schema import SWEEP_SECTIONS
from simmtm.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = ["TrialRow", "TRIAL_COLUMNS", "STATES", "FINISHED_STATES", "state_counts", "WARM_START_ATTR", "OWNER_ATTR"]
__all__ += ["SweepMeta", "write_sweep_json", "read_sweep_json", "write_sweep_yaml", "read_sweep_yaml", "read_study"]
__all__ += ["write_trials_csv", "read_trials_csv", "rank_configurations", "write_run_yaml", "write_recommended_yaml"]
__all__ += ["RECOMMENDED_MARK", "write_best_yaml", "write_hparams", "write_trial_hparams"]

TRIAL_COLUMNS = ("trial_id", "state", "score", "val_score", "test_score", "repeat", "epochs", "wall_s", "error")
STATES = ("COMPLETE", "PRUNED", "FAILED", "RUNNING", "PENDING")  # a trial's state in trials.csv and TrialRow
FINISHED_STATES = STATES[:3]  # a trial in one of these never runs again
# The Optuna user attribute of the trials a warm start copied from an earlier sweep (not this sweep's own).
WARM_START_ATTR = "warm_start_from"
# The Optuna user attribute naming the driver (host:folder) that ran a trial: in a shared study (tune.shared_study)
# each driver reconciles only its own trials.
OWNER_ATTR = "owner"


@dataclass
class TrialRow:
    """One Tune trial as the sweep reports it."""

    trial_id: str
    state: str  # one of STATES
    params: dict[str, Any]
    repeat: int = 0
    score: float | None = None
    val_score: float | None = None
    test_score: float | None = None
    epochs: int | None = None
    wall_s: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # not written: checkpoint path and the like

    def config_key(self, keys: list[str]) -> tuple:
        """What identifies a configuration across its repeats."""
        return tuple(repr(self.params.get(k)) for k in keys)


# --- sweep.json and sweep.yaml ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepMeta:
    """``sweep.json``: what a sweep optimised and where its study lives; its presence makes a sweep directory.

    The defaults are those of files written before a field existed (the analysis reads older sweeps too).
    """

    metric: str
    mode: str  # min or max
    params: list[str]  # the searched dotted keys, in file order
    study_name: str = ""
    storage: str = ""  # the Optuna database URL
    search_space: dict[str, Any] = field(default_factory=dict)  # the search section (simmtm.tuning.spec.SearchSpec)
    method: str = "unknown"
    seed: int = 0
    search_seed: int | None = None
    probe_metric: str | None = None
    repeats: int = 1
    num_samples: int | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    warm_start: str | None = None  # the earlier sweep whose finished trials seeded the study


_SWEEP_JSON_HINT = "pass the --out directory of a `simmtm sweep` run"


def write_sweep_json(out: Path, meta: SweepMeta) -> None:
    data = {k: v for k, v in dataclasses.asdict(meta).items() if not (k == "warm_start" and v is None)}
    (out / "sweep.json").write_text(json.dumps(data, indent=2) + "\n")


def read_sweep_json(out: Path) -> SweepMeta:
    """Read ``out/sweep.json``; UserError (one line) when ``out`` is not a sweep directory."""
    if not out.exists():
        raise UserError(f"{out}: no such directory; {_SWEEP_JSON_HINT}")
    if not out.is_dir():
        raise UserError(f"{out}: not a directory; {_SWEEP_JSON_HINT}")
    path = out / "sweep.json"
    if not path.is_file():
        raise UserError(f"{out}: not a sweep directory (no sweep.json); {_SWEEP_JSON_HINT}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object with metric, mode, params, ...")
    for key in ("metric", "mode", "params"):
        if key not in raw:
            raise UserError(
                f"{path}: missing key '{key}' (a sweep.json holds metric, mode, study_name, storage, "
                "params, search_space, method, seed)"
            )
    if raw["mode"] not in ("min", "max"):
        raise UserError(f"{path}: mode must be 'min' or 'max', got {raw['mode']!r}")
    if not isinstance(raw["params"], list):
        raise UserError(f"{path}: params must be a list of dotted keys, got {raw['params']!r}")
    known = {f.name for f in dataclasses.fields(SweepMeta)}
    values = {k: v for k, v in raw.items() if k in known and v is not None}
    values["params"] = [str(p) for p in raw["params"]]
    if not isinstance(values.get("search_space", {}), dict):
        values.pop("search_space")
    return SweepMeta(**values)


def write_sweep_yaml(out: Path, resolved: dict[str, Any]) -> None:
    (out / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def read_sweep_yaml(out: Path, *, run_only: bool = False) -> dict[str, Any]:
    """The resolved sweep file of ``out`` ({} when absent); ``run_only``: without search/tune/resources."""
    path = out / "sweep.yaml"
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not readable YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, pretrain, ...)")
    return {k: v for k, v in raw.items() if k not in SWEEP_SECTIONS} if run_only else raw


# --- optuna.db ----------------------------------------------------------------------------------------------


def read_study(path: Path, meta: SweepMeta, notes: list[str] | None = None) -> optuna.Study | None:
    """The sweep's Optuna study, in memory: from a consistent copy of ``optuna.db`` (a running sweep's file is only
    read), else from the database ``sweep.json`` names; None when there is none. Why a study could not be read is
    appended to ``notes``."""
    import optuna

    notes = [] if notes is None else notes
    db = path / "optuna.db"
    storage_url = meta.storage
    name = meta.study_name
    if not db.is_file():
        if storage_url and not storage_url.startswith("sqlite"):
            return _load_remote_study(storage_url, name, notes)
        return None
    with tempfile.TemporaryDirectory(prefix="simmtm-study-") as tmp:  # nothing is left behind in /tmp
        snapshot = Path(tmp) / "optuna.db"
        try:
            src = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=30)
            dst = sqlite3.connect(snapshot)
            with dst:
                src.backup(dst)
            src.close()
            dst.close()
        except sqlite3.Error as exc:
            notes.append(f"optuna.db could not be read ({exc}); trials.csv only")
            return None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{snapshot}")
        try:
            return _study_in_memory(storage, name, notes)
        finally:
            storage.remove_session()
            storage.engine.dispose()


def _study_in_memory(storage: optuna.storages.RDBStorage, name: Any, notes: list[str]) -> optuna.Study | None:
    import optuna

    """The sweep's study (by name, or the only one) copied into memory, so its snapshot file can go."""
    try:
        # the names alone: a study summary reads every trial of every study (as long again as the copy below)
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # a file that is not an Optuna database
        notes.append(f"optuna.db is not an Optuna study database ({type(exc).__name__}); trials.csv only")
        return None
    if not names:
        return None
    if name not in names:
        if len(names) > 1:
            notes.append(f"optuna.db has no study '{name}' (has {', '.join(names)}); trials.csv only")
            return None
        name = names[0]
    memory = optuna.storages.InMemoryStorage()
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=memory)
    return optuna.load_study(study_name=name, storage=memory)


def _load_remote_study(url: str, name: Any, notes: list[str]) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=url)
    except Exception as exc:  # unreachable database, missing driver, unknown study
        notes.append(f"study storage {url} could not be read ({type(exc).__name__}: {exc}); trials.csv only")
        return None


# --- trials.csv ----------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value


def write_trials_csv(path: Path, rows: list[TrialRow], param_keys: list[str]) -> None:
    """Write ``trials.csv`` atomically, rows in trial-id order."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*TRIAL_COLUMNS, *param_keys])
        for r in sorted(rows, key=lambda r: r.trial_id):
            writer.writerow(
                [
                    r.trial_id,
                    r.state,
                    _cell(r.score),
                    _cell(r.val_score),
                    _cell(r.test_score),
                    r.repeat,
                    _cell(r.epochs),
                    _cell(None if r.wall_s is None else round(r.wall_s, 2)),
                    r.error.replace("\n", " ")[:500],
                    *[_cell(r.params.get(k)) for k in param_keys],
                ]
            )
    tmp.replace(path)


def read_trials_csv(path: Path) -> list[dict[str, str]]:
    """The rows of ``trials.csv`` as written (every cell a string; empty for no value)."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def state_counts(rows: list[TrialRow]) -> dict[str, int]:
    """How many rows are in each of ``STATES`` (zeros included), in that order."""
    return {s: sum(r.state == s for r in rows) for s in STATES}


def rank_configurations(rows: list[TrialRow], param_keys: list[str], mode: str) -> list[list[TrialRow]]:
    """COMPLETE trials grouped by configuration (repeats together), best mean score first."""
    groups: dict[tuple, list[TrialRow]] = {}
    for r in rows:
        if r.state == "COMPLETE" and r.score is not None:
            groups.setdefault(r.config_key(param_keys), []).append(r)
    sign = 1.0 if mode == "min" else -1.0
    return sorted(groups.values(), key=lambda g: sign * statistics.fmean(r.score for r in g if r.score is not None))


# --- best.yaml (and any run config a sweep recommends) --------------------------------------------------------

# The first line of a config `simmtm recommend --write` wrote (``write_recommended_yaml``): such a file may be
# replaced; any other needs --force.
RECOMMENDED_MARK = "the run config recommended by `simmtm recommend"


def write_run_yaml(path: Path, raw: dict[str, Any], header: list[str]) -> None:
    """A runnable run config under a ``#`` header saying where it comes from and how to run it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"# {line}\n" for line in header) + yaml.safe_dump(raw, sort_keys=False))


def write_recommended_yaml(path: Path, raw: dict[str, Any], *, sweep_dir: Path, params: str, evidence: str) -> None:
    """``simmtm recommend --write``: the recommended run config (``raw``) under a header naming the sweep, the
    recommended ``params`` and the ``evidence`` line (``simmtm.verdict.recommendation.Recommendation``)."""
    run = f"Run it:   simmtm pretrain {path} --out runs/{path.stem}"
    write_run_yaml(path, raw, [f"{path.name}: {RECOMMENDED_MARK} {sweep_dir}`", params, evidence, run])


def write_best_yaml(
    path: Path, base_run: dict[str, Any], best: list[TrialRow], *, metric: str, sweep_dir: Path, confirmed: Any = None
) -> dict[str, Any]:
    """A run config with the best parameters (and the sweep's own seed), runnable by ``simmtm pretrain``.

    ``confirmed``: the confirmation's verdict (``verdict.confirmation.Verdict``); its recommendation (the winner, or
    the paper's default) is then written instead of the search's single best configuration.
    """
    if confirmed is not None:
        raw = apply_params(base_run, confirmed.recommended)
        write_run_yaml(
            path,
            raw,
            [
                f"best.yaml: the configuration the confirmation stage of the sweep in {sweep_dir} recommends:",
                confirmed.sentence(),
                f"Run it:   simmtm pretrain {path} --out runs/best",
            ],
        )
        return raw
    params = best[0].params
    raw = apply_params(base_run, {k: v for k, v in params.items() if v is not None})
    mean = statistics.fmean(r.score for r in best if r.score is not None)
    write_run_yaml(
        path,
        raw,
        [
            f"best.yaml: the best configuration of the sweep in {sweep_dir} ({metric} = {mean:.6g}, mean of "
            f"{len(best)} repeat(s): trial(s) {', '.join(r.trial_id for r in best)}).",
            f"Run it:   simmtm pretrain {path} --out runs/best",
            f"          simmtm run {path} --out runs/best-run",
        ],
    )
    return raw


# --- TensorBoard HParams -------------------------------------------------------------------------------------


def write_hparams(tb_dir: Path, rows: list[TrialRow], param_keys: list[str], *, metric: str) -> None:
    """One HParams run per finished trial under ``tb_dir/hparams`` (TensorBoard's HPARAMS tab).

    Written whole after the sweep (final states: a trial stopped by ASHA is PRUNED); ``write_trial_hparams`` adds
    each trial's run as it ends, so the tab fills while the sweep runs.
    """
    from torch.utils.tensorboard import SummaryWriter

    target = tb_dir / "hparams"
    if target.exists():
        shutil.rmtree(target)  # rewritten whole: a resumed sweep must not show a trial twice
    writer = SummaryWriter(str(target))
    try:
        for r in rows:
            if r.state in FINISHED_STATES:
                _add_hparams(writer, r, param_keys, metric=metric)
    finally:
        writer.close()


def write_trial_hparams(tb_dir: Path, row: TrialRow, param_keys: list[str], *, metric: str) -> None:
    """The HParams run of one trial that just ended (replacing an earlier one of the same trial: a retry)."""
    from torch.utils.tensorboard import SummaryWriter

    target = tb_dir / "hparams"
    if (target / row.trial_id).exists():
        shutil.rmtree(target / row.trial_id)
    writer = SummaryWriter(str(target))
    try:
        _add_hparams(writer, row, param_keys, metric=metric)
    finally:
        writer.close()


def _add_hparams(writer: Any, r: TrialRow, param_keys: list[str], *, metric: str) -> None:
    hparams = {k: _hparam(r.params.get(k)) for k in param_keys}
    hparams.update(repeat=r.repeat, state=r.state)
    metrics = {f"hparam/{metric}": r.score, f"hparam/probe_{metric}": r.val_score, "hparam/epochs": r.epochs}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    writer.add_hparams(hparams, metrics or {"hparam/epochs": 0.0}, run_name=r.trial_id)


def _hparam(value: Any) -> Any:
    if value is None:
        return "n/a"  # a conditional parameter this trial did not use
    return value if isinstance(value, (int, float, str, bool)) else str(value)
