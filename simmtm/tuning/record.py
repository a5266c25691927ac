"""Each trial's own folder: the half of a sweep's record that the Optuna study does not hold.

A sweep is its Optuna study (what was tried, every probe score as an intermediate value, the final scores) plus one
folder per trial under ``<root>/trials/<name>`` (``root``: the sweep directory, or ``tune.storage_path`` on a
cluster, local or a URI such as ``s3://``), written by the trial itself:

- ``checkpoint.pt``: the newest pre-training state (weights, optimiser, RNG, epoch, the probe scores so far),
  replaced whole after every probe; a trial started again continues from it, exactly;
- ``result.json``: the final result, written once the trial finished; a trial started again reports it instead of
  training again;
- ``error.txt``: the last line of the exception that ended the trial.

Ray Tune's own experiment folder holds nothing that a resume needs: a resumed sweep is a new Tune run over the same
study and the same trial folders. Search trials are named by their Optuna trial number (``trial_name``);
confirmation runs by their configuration and seed.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TRIALS_DIR", "TrialStore", "name_of", "trial_name", "trials_root"]

TRIALS_DIR = "trials"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
ERROR = "error.txt"


def trial_name(number: int) -> str:
    """The name of the search trial with Optuna number ``number`` (its folder, its row in trials.csv, its tb/ run)."""
    return f"trial-{number:04d}"


def name_of(trial: Any) -> str:
    """A Tune trial's name and folder: the sweep's own name of the trial (``config["name"]`` or its Optuna number),
    never Tune's id, which lives only as long as one Tune run."""
    config = trial.config
    return str(config["name"]) if "name" in config else trial_name(int(config["number"]))


def trials_root(storage_root: str) -> str:
    """``<root>/trials``: the trial folders of a sweep whose files live under ``storage_root``."""
    return f"{storage_root.rstrip('/')}/{TRIALS_DIR}"


@dataclass(frozen=True)
class TrialStore:
    """The trial folders under ``root`` (a local path, ``file://`` or another URI pyarrow's file systems open)."""

    root: str

    # --- what a trial writes ---

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._write(name, CHECKPOINT, buffer.getvalue())

    def write_result(self, name: str, result: dict[str, Any]) -> None:
        self._write(name, RESULT, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())

    def write_error(self, name: str, line: str) -> None:
        self._write(name, ERROR, (line.strip() + "\n").encode())

    # --- what the trial (started again) and the driver read ---

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The newest checkpoint of a trial, or None when it has none yet."""
        data = self._read(name, CHECKPOINT)
        if data is None:
            return None
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def read_result(self, name: str) -> dict[str, Any] | None:
        data = self._read(name, RESULT)
        return None if data is None else json.loads(data)

    def read_error(self, name: str) -> str:
        data = self._read(name, ERROR)
        return "" if data is None else data.decode().strip()

    # --- files, locally or through pyarrow ---

    def _local(self) -> Path | None:
        root = self.root.removeprefix("file://")
        return None if "://" in root else Path(root)

    def _write(self, name: str, file: str, data: bytes) -> None:
        """Whole or absent: written beside, then renamed into place (a kill mid-write leaves the old file)."""
        local = self._local()
        if local is not None:
            path = local / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{file}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        fs, base = _remote(self.root)
        fs.create_dir(f"{base}/{name}", recursive=True)
        with fs.open_output_stream(f"{base}/{name}/{file}") as fh:  # an object store writes an object whole
            fh.write(data)

    def _read(self, name: str, file: str) -> bytes | None:
        local = self._local()
        if local is not None:
            path = local / name / file
            return path.read_bytes() if path.is_file() else None
        import pyarrow.fs

        fs, base = _remote(self.root)
        if fs.get_file_info(f"{base}/{name}/{file}").type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(f"{base}/{name}/{file}") as fh:
            return fh.read()


def _remote(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
