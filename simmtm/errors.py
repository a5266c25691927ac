"""Errors a user can fix: the CLI prints them as one line and exits with the error's ``exit_code`` (2 by default)."""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError"]


class UserError(Exception):
    """Bad input (config, file, data): the message names what is at fault and what would be valid."""

    exit_code: int = 2


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """A data file is missing, unreadable or unusable."""
