"""Ray's own offline check of a cluster launcher file (``cluster.yaml``, ``cluster/*.yaml``): the first layer of
``simmtm cluster check`` (``simmtm.cluster.cluster_check`` adds this project's rules).

``prepare_config`` fills the provider's defaults from the wheel's ``defaults.yaml``, ``validate_config`` applies
``ray-schema.json``: unknown keys, non-integer node resources, a head type missing from ``available_node_types``,
min/max worker conflicts. Both run without cloud credentials or network. They are private Ray APIs (no public one
exists): ``_launcher_prepare`` is the one place that uses them, and says so when a release moves them. Its errors
become one-line ConfigErrors that name the key at fault and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
import logging
from typing import Any

from simmtm.errors import ConfigError

__all__ = ["prepare_cluster_config", "ray_version"]


def prepare_cluster_config(raw: dict[str, Any], *, source: str = "cluster.yaml") -> dict[str, Any]:
    """Ray's launcher preparation and schema check on a copy of ``raw``; errors become one-line ConfigErrors.

    Offline: the preparation only merges the provider's ``defaults.yaml`` shipped in the Ray wheel.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping (cluster_name, provider, available_node_types, ...)")
    node_types = raw.get("available_node_types")
    if node_types is not None and not (
        isinstance(node_types, dict) and all(isinstance(v, dict) for v in node_types.values())
    ):
        raise ConfigError(
            f"{source}: available_node_types: expected a mapping of node type name -> "
            "{resources, node_config, min_workers, max_workers}"
        )
    return _launcher_prepare(raw, source)


def _launcher_prepare(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The one use of Ray's private launcher API (no public one checks a cluster file offline); a Ray release that
    moves it gives a ConfigError saying so. Tests run it on the oldest and newest declared Ray."""
    import jsonschema

    try:
        from ray.autoscaler._private.providers import _DEFAULT_CONFIGS
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:
        raise ConfigError(
            f"{source}: cannot check cluster files with Ray {ray_version()}: its launcher's offline check (a private "
            f"API) has moved ({exc}); `ray up` still validates the file, or use a Ray in pyproject.toml's range"
        ) from None
    provider = raw.get("provider")
    valid = ", ".join(sorted(_DEFAULT_CONFIGS))
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        raise ConfigError(f"{source}: missing key 'provider.type' (one of: {valid})")
    if provider["type"] not in _DEFAULT_CONFIGS:
        close = difflib.get_close_matches(provider["type"], list(_DEFAULT_CONFIGS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: provider.type: unknown provider '{provider['type']}'{hint}; valid: {valid}")
    ray_logger = logging.getLogger(prepare_config.__module__)
    level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)  # its INFO lines ("setting max workers ...") are noise here
    try:
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except jsonschema.ValidationError as exc:
        raise ConfigError(f"{source}: {_schema_message(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {_value_message(str(exc), raw)}") from None
    except (AssertionError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ConfigError(f"{source}: Ray could not prepare the config: {type(exc).__name__}: {exc}") from None
    finally:
        ray_logger.setLevel(level)
    return config


def _schema_message(exc: Any) -> str:
    """A jsonschema error as 'key.path: what is wrong (and what would be valid)'."""
    path = ".".join(str(p) for p in exc.absolute_path)
    where = path or "top level"
    if exc.validator == "additionalProperties" and isinstance(exc.instance, dict):
        known = list(exc.schema.get("properties", {}))
        unknown = [k for k in exc.instance if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            full = f"{path}.{key}" if path else str(key)
            where_valid = f"in {path}" if path else "at top level"
            return f"unknown key '{full}'{hint}; valid keys {where_valid}: {', '.join(known)}"
    if exc.validator == "type" and exc.validator_value == "integer" and ".resources." in f".{path}.":
        return (
            f"{path}: {exc.instance!r} is not a whole number; Ray node resources are integers (a node has 1 GPU, "
            "not 0.5; fractional GPUs per trial belong in the sweep file's resources.gpus_per_worker)"
        )
    return f"{where}: {exc.message}"


def _value_message(message: str, raw: dict[str, Any]) -> str:
    if "head_node_type" in message and "available_node_types" in message:
        names = ", ".join(raw.get("available_node_types") or {}) or "none"
        head = raw.get("head_node_type")
        if head is None:
            return f"missing key 'head_node_type' (one of available_node_types: {names})"
        return f"head_node_type: '{head}' is not one of available_node_types ({names})"
    return message


def ray_version() -> str:
    """The installed Ray's version (what `ray up` on this machine runs)."""
    import ray

    return ray.__version__
