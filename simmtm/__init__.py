"""simmtm: SimMTM masked time-series pre-training that tunes its own masking ratio and masked-series count.

The Python API (``simmtm.pretrain``, ``finetune``, ``run``, ``export``, ``sweep``, ``analyze``, ``recommend``; typed
results in ``simmtm.api``; docs/api.md) and ``simmtm.load_encoder`` / ``load_pretrained`` load lazily:
``import simmtm`` imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from simmtm.config.schema import RunConfig, load_config
from simmtm.errors import ConfigError, DataError, UserError

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from simmtm.api import analyze, export, finetune, pretrain, recommend, run, sweep
    from simmtm.weights.exporting import load_encoder
    from simmtm.weights.from_run import load_pretrained

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

# name -> the module that defines it, imported on first use (PEP 562); no submodule of simmtm shares one of these
# names, so an import never rebinds them
_LAZY = {
    "analyze": "simmtm.api",
    "export": "simmtm.api",
    "finetune": "simmtm.api",
    "pretrain": "simmtm.api",
    "recommend": "simmtm.api",
    "run": "simmtm.api",
    "sweep": "simmtm.api",
    "load_encoder": "simmtm.weights.exporting",
    "load_pretrained": "simmtm.weights.from_run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simmtm' has no attribute {name!r}")
