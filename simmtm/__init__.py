"""simmtm: SimMTM masked time-series pre-training that tunes its own masking ratio and masked-series count.

The Python API (``simmtm.pretrain``, ``finetune``, ``run``, ``export``, ``sweep``, ``analyze``, ``recommend``; typed
results in ``simmtm.api``; docs/api.md) and ``simmtm.load_encoder`` / ``load_pretrained`` load lazily:
``import simmtm`` imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from simmtm.config import RunConfig, load_config
from simmtm.errors import ConfigError, DataError, UserError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "RunConfig",
    "UserError",
    "__version__",
    "analyze",
    "export",
    "finetune",
    "load_config",
    "load_encoder",
    "load_pretrained",
    "pretrain",
    "recommend",
    "run",
    "sweep",
]

# name -> the module that defines it, imported on first use
_LAZY = {
    "analyze": "simmtm.api",
    "recommend": "simmtm.api",
    "run": "simmtm.api",
    "load_encoder": "simmtm.export",
    "load_pretrained": "simmtm.pretrained",
}
# API functions that share their name with a submodule (simmtm/pretrain.py, finetune.py, export.py, sweep/)
_CALLABLE_SUBMODULES = ("pretrain", "finetune", "export", "sweep")


class _CallableModule(types.ModuleType):
    """``simmtm.pretrain`` is both the module simmtm/pretrain.py and, called, ``simmtm.api.pretrain``: Python's
    import binds a package attribute to each imported submodule, so a plain function of that name would be replaced
    by the module the first time anything imported it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from simmtm import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_SUBMODULES and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_SUBMODULES:
        return importlib.import_module(f"simmtm.{name}")  # binds simmtm.<name> as a callable module
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simmtm' has no attribute {name!r}")
