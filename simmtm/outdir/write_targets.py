"""Where a command will write, checked before it does any work (before data loading, before Ray starts).

A folder target must be a folder or creatable as one, and writable; a file target must not be a folder, and a file
that is there already is replaced only when simmtm wrote it (its first line says so) or with ``--force``. Each
problem is one UserError line naming the option, the path and what would be valid.

Writability is probed by creating and removing an empty temporary folder: permission bits do not tell (root
writes through them; a read-only mount refuses even root).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from simmtm.errors import UserError

__all__ = ["check_output_folder", "check_output_file", "written_by_simmtm"]


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _probe(folder: Path, option: str, path: Path) -> None:
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".simmtm-probe-", dir=folder))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{option} {path}: cannot write in {folder} ({reason}); choose a writable place") from None


def check_output_folder(path: str | Path, *, option: str = "--out") -> None:
    """Refuse a folder target that is a file, lies under a file, or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder; choose another {option}")
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, so no folder can be made under it")
    _probe(existing, option, path)


def written_by_simmtm(path: Path, marker: str) -> bool:
    """True when the file's first line carries ``marker`` (what simmtm writes at the top of it)."""
    try:
        with path.open("r", encoding="utf-8") as fh:
            return marker in fh.readline()
    except (OSError, UnicodeDecodeError):
        return False


def check_output_file(path: str | Path, *, option: str, marker: str, force: bool = False) -> None:
    """Refuse a file target that is a folder, cannot be written, or is somebody else's file (unless ``force``).

    ``marker``: the text simmtm puts on the first line of this kind of file; an existing file without it was not
    written by simmtm.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; name a file (for example {path / 'best.yaml'})")
    if path.exists() and not force and not written_by_simmtm(path, marker):
        raise UserError(
            f"{option} {path}: exists and was not written by simmtm; pass --force to replace it, or choose another file"
        )
    existing = _nearest_existing(path.absolute().parent)
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, so the file cannot be made under it")
    _probe(existing, option, path)
