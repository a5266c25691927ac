"""Checks of a sweep file's sections (``search``, ``tune``, ``resources``): every problem one ``ConfigError`` line
that names the file and the key, before any data is read or Ray starts."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simmtm.config.keys import apply_params, error_line
from simmtm.config.schema import RunConfig, parse_config
from simmtm.errors import ConfigError
from simmtm.tuning.spec import NOT_SEARCHABLE, SweepSpec, TuneSpec, searchable_keys

__all__ = ["sweep_spec", "validate_sweep_sections", "resolve_metric", "CLASSIFICATION_METRICS"]


def sweep_spec(config: RunConfig, path: str | Path = "sweep") -> SweepSpec:
    """The validated sweep sections of ``config``; ConfigError (one line, naming file and key) otherwise."""
    validate_sweep_sections(config, path)
    if config.search is None:
        raise ConfigError(f"{path}: not a sweep file: it has no 'search' section (sweeps/quick.yaml shows one)")
    return SweepSpec.model_validate(
        {"search": config.search, "tune": config.tune or {}, "resources": config.resources or {}}
    )


def validate_sweep_sections(config: RunConfig, path: str | Path) -> None:
    """Check the ``search``/``tune``/``resources`` sections of a config (a no-op for a plain run config).

    Raises ConfigError naming the file and key: unknown sections or parameters, empty choices, low >= high, values
    the run config would reject, conditions on keys that are not set, a metric that does not fit the task.
    """
    source = str(path)
    sections = {"search": config.search, "tune": config.tune, "resources": config.resources}
    if all(v is None for v in sections.values()):
        return
    if config.search is None:
        raise ConfigError(f"{source}: a sweep needs a 'search' section (tune/resources are set but search is not)")
    try:
        spec = SweepSpec.model_validate({k: v if v is not None else {} for k, v in sections.items()})
    except ValidationError as exc:
        raise ConfigError(error_line(exc, source, SweepSpec)) from None

    known = searchable_keys()
    base = config.run_dict()
    if spec.search.method == "grid":
        for key, values in (spec.search.grid or {}).items():
            _check_key(key, known, source, where=f"search.grid.{key}")
            for value in values:
                _check_value(base, key, value, source, where=f"search.grid.{key}")
    else:
        seen: list[str] = []
        for key, param in spec.search.params.items():
            where = f"search.params.{key}"
            _check_key(key, known, source, where=where)
            for value in param.values_to_check():
                _check_value(base, key, value, source, where=where)
            for cond_key, wanted in (param.when or {}).items():
                if cond_key not in seen and cond_key not in known:
                    raise ConfigError(
                        f"{source}: {where}.when: '{cond_key}' is neither a parameter searched before it "
                        "nor a config key"
                    )
                if cond_key in seen:
                    cond = spec.search.params[cond_key]
                    allowed = wanted if isinstance(wanted, list) else [wanted]
                    if cond.type == "categorical" and not any(a in (cond.choices or []) for a in allowed):
                        raise ConfigError(
                            f"{source}: {where}.when: {cond_key} never takes {wanted!r} (its choices: {cond.choices})"
                        )
            seen.append(key)
    for key, value in spec.tune.probe_overrides.items():
        _check_key(key, known, source, where=f"tune.probe_overrides.{key}")
        _check_value(base, key, value, source, where=f"tune.probe_overrides.{key}")
    _check_metric(spec.tune, source)
    if spec.search.method == "grid" and spec.tune.num_samples is not None:
        cells = len(spec.search.grid_cells())
        raise ConfigError(
            f"{source}: tune.num_samples: leave it out with method: grid (the grid runs all {cells} cells, "
            f"times tune.repeats={spec.tune.repeats})"
        )
    r = spec.resources
    if r.workers > 1 and (r.cpus_per_worker != int(r.cpus_per_worker)):
        raise ConfigError(
            f"{source}: resources.cpus_per_worker: use whole CPUs with workers > 1 (got {r.cpus_per_worker})"
        )


def _check_key(key: str, known: list[str], source: str, *, where: str) -> None:
    if key in known:
        return
    if key in NOT_SEARCHABLE:
        raise ConfigError(
            f"{source}: {where}: '{key}' cannot be searched (it decides where a trial runs, not what it learns)"
        )
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"{source}: {where}: unknown parameter '{key}'{hint}; a parameter is a dotted config key such as "
        "pretrain.mask_ratio"
    )


def _check_value(base: dict[str, Any], key: str, value: Any, source: str, *, where: str) -> None:
    raw = apply_params(base, {key: value})
    try:
        config = parse_config(raw, source=where)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: value {value!r} is not valid for the run ({exc})") from None
    if key == "model.encoder":
        from simmtm.method.encoders import ENCODERS  # torch: `simmtm validate` imports this module

        if config.model.encoder not in ENCODERS:
            raise ConfigError(f"{source}: {where}: unknown encoder {value!r}; valid: {', '.join(sorted(ENCODERS))}")


# classification scores; val_log_loss (the mean cross-entropy) is minimised, the others maximised
CLASSIFICATION_METRICS = ("val_accuracy", "val_f1", "val_log_loss")


def _check_metric(tune: TuneSpec, source: str) -> None:
    if tune.metric is None:
        return
    valid = ("val_mse", "val_mae", *CLASSIFICATION_METRICS)
    if tune.metric not in valid:
        raise ConfigError(
            f"{source}: tune.metric: '{tune.metric}' is not a validation score; valid: {', '.join(valid)}"
        )


def resolve_metric(tune: TuneSpec, task: str) -> tuple[str, str]:
    """The sweep's metric and mode for a task: val_mse/min for forecasting, val_accuracy/max for classification."""
    metric = tune.metric or ("val_accuracy" if task == "classification" else "val_mse")
    if task == "classification" and metric in ("val_mse", "val_mae"):
        raise ConfigError(
            f"tune.metric: {metric} is a forecasting score but the data is a classification task; "
            "use val_accuracy, val_f1 or val_log_loss"
        )
    if task == "forecasting" and metric in CLASSIFICATION_METRICS:
        raise ConfigError(
            f"tune.metric: {metric} is a classification score but the data is a forecasting task; "
            "use val_mse or val_mae"
        )
    mode = tune.mode or ("max" if metric in ("val_accuracy", "val_f1") else "min")
    return metric, mode
