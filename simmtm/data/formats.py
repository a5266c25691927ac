"""Data-file formats: one small reader class per file suffix, registered by suffix.

A forecasting format reads a table of dated rows (``read`` -> ``pandas.DataFrame``); a classification format reads
labelled series (``read`` -> samples ``(N, C, L)`` float32 and labels ``(N,)``). Every reader raises ``DataError``
naming the file when it cannot read it. Adding a format is one class with ``@register_format``: the task it
serves, the layouts it takes part in and the messages that list the suffixes follow from the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

__all__ = ["FileFormat", "FORMATS", "register_format", "get_format", "suffixes"]

Task = Literal["forecasting", "classification"]


class FileFormat(ABC):
    """How to read one kind of data file."""

    suffix: ClassVar[str]  # ".csv"
    task: ClassVar[Task]  # the task its files serve when the config does not say
    pairs: ClassVar[bool] = False  # classification: *_TRAIN/*_TEST files of this suffix form a train/test pair
    split_files: ClassVar[bool] = False  # classification: train/val/test files of this suffix form a directory layout

    @abstractmethod
    def read(self, path: Path) -> Any:
        """The file's content (see the module doc for what each task's formats return); DataError otherwise."""


FORMATS: dict[str, FileFormat] = {}


def register_format(cls: type[FileFormat]) -> type[FileFormat]:
    """Class decorator: register one instance of a format under its suffix."""
    FORMATS[cls.suffix] = cls()
    return cls


def get_format(path: Path) -> FileFormat | None:
    """The format of a file by its (case-insensitive) suffix, or None."""
    return FORMATS.get(path.suffix.lower())


def suffixes(task: Task, **flags: bool) -> list[str]:
    """The registered suffixes of a task (optionally only formats with the given flags), e.g. ``.ts, .pt``."""
    return [s for s, f in FORMATS.items() if f.task == task and all(getattr(f, k) == v for k, v in flags.items())]
