"""simmtm: SimMTM masked time-series pre-training that tunes its own masking ratio and masked-series count."""

from simmtm.config import RunConfig, load_config
from simmtm.errors import ConfigError, DataError, UserError

__version__ = "0.1.0"

__all__ = ["RunConfig", "load_config", "UserError", "ConfigError", "DataError", "__version__"]
