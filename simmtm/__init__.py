"""simmtm: SimMTM masked time-series pre-training that tunes its own masking ratio and masked-series count."""

from __future__ import annotations

from typing import Any

from simmtm.config import RunConfig, load_config
from simmtm.errors import ConfigError, DataError, UserError

__version__ = "0.1.0"

__all__ = ["RunConfig", "load_config", "load_pretrained", "UserError", "ConfigError", "DataError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import simmtm` (and the CLI's start-up) does not import torch.
    if name == "load_pretrained":
        from simmtm.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'simmtm' has no attribute {name!r}")
