"""Read what W&B wrote offline: the records of a ``.wandb`` file (wandb 0.31 ships no Python reader of its own).

A ``.wandb`` file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks of
records, each with a 7-byte header (CRC, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a
piece of one serialised ``wandb.proto.wandb_internal_pb2.Record``; a block's tail shorter than a header is zeros.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B data file"
    out, pos, pieces = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's zero-filled tail
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 or pos + _HEADER + length > len(data):  # zero padding to the end, or a record being written
            break
        pieces += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            out.append(pb.Record.FromString(pieces))
            pieces = b""
    return out


@dataclass
class OfflineRun:
    """One offline run: its id, group, job type, the history rows it logged (step -> {key: value}) and whether its
    exit record (written when the run finished) is there."""

    run_id: str = ""
    group: str = ""
    job_type: str = ""
    finished: bool = False
    history: dict[int, dict[str, Any]] = field(default_factory=dict)


def read_run(run_dir: Path, *, wait_s: float = 30.0) -> OfflineRun:
    """The run in ``run_dir`` (``offline-run-<time>-<id>``), from its ``.wandb`` file.

    W&B's service can still be writing the file when ``finish()`` has returned (seen on the loaded 2 cores: a file
    without its run record): read again until its exit record is there, for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        run = _read(run_dir)
        if run.finished or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read(run_dir: Path) -> OfflineRun:
    (path,) = run_dir.glob("*.wandb")
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.job_type = record.run.run_id, record.run.run_group, record.run.job_type
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            run.history.setdefault(record.history.step.num, {}).update(items)
        run.finished |= kind == "exit"
    return run
