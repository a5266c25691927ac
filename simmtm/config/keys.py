"""Dotted config keys and config errors: the helpers every reader and writer of a config shares.

A dotted key (``pretrain.mask_ratio``) addresses a value in a nested run dict. ``get_key``/``set_key`` walk it,
``flatten`` and ``apply_params`` convert between the nested and the dotted form, ``known_keys`` lists what a schema
accepts, ``diff_keys`` names what two configs disagree on, and ``error_line`` turns a pydantic error into the one
line (naming the key, with a did-you-mean) that the CLI prints.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from simmtm.errors import ConfigError

__all__ = ["get_key", "set_key", "flatten", "apply_params", "known_keys", "diff_keys", "error_line", "SHORT_NAMES"]

# Short names of the keys the paper is about, for tables, axes and messages.
SHORT_NAMES = {
    "pretrain.mask_ratio": "r",
    "pretrain.num_masked": "M",
    "pretrain.temperature": "tau",
    "model.encoder": "encoder",
}


def get_key(raw: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at a dotted key, or ``default`` when any part of the path is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_key(raw: dict[str, Any], key: str, value: Any, *, source: str = "config") -> None:
    """Set a dotted key in place, creating missing (or null) sections; ConfigError when a part is a value."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{dotted key: leaf value}``."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted key of ``params`` set."""
    raw = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_key(raw, key, value)
    return raw


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key a pydantic schema accepts: sections and the fields inside them."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(known_keys(ann, prefix + name + "."))
    return keys


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (sorted; a key missing on one side differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def error_line(exc: ValidationError, source: str, model: type[BaseModel], *, prefix: str = "") -> str:
    """The first problem of a pydantic error as one line naming ``source`` and the dotted key (``prefix`` + loc).

    An unknown key gets a did-you-mean and the keys valid at its place in ``model``; more problems are counted.
    """
    errors = exc.errors()
    err = errors[0]
    key = prefix + ".".join(str(p) for p in err["loc"])
    head = f"{source}: " if source else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        local = key[len(prefix) :]
        parent = local.rsplit(".", 1)[0] + "." if "." in local else ""
        siblings = [k for k in known_keys(model) if k.startswith(parent) and "." not in k[len(parent) :]]
        close = difflib.get_close_matches(local, siblings, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        valid = f"; valid keys here: {', '.join(k[len(parent) :] for k in siblings)}" if siblings else ""
        return f"{head}unknown key '{key}'{hint}{valid}{more}"
    if err["type"] == "missing":
        return f"{head}missing key '{key}'{more}"
    msg = err["msg"].removeprefix("Value error, ")
    if not key:
        return f"{head}{msg}{more}"
    return f"{head}{key}: {msg} (got {err.get('input')!r}){more}"
