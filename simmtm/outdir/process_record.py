"""No process outlives its driver: the processes a driver started (its local Ray: GCS, raylet, dashboard and
runtime-env agents, monitors) are written to a record file in its output folder, and stopped from there when the
driver could not stop them itself.

- ``record_children(path)`` writes the driver and every process below it (pid and start time, so that a recycled
  pid is never mistaken for ours) and starts a watchdog in its own session; ``clear(path)`` ends it after a clean
  shutdown.
- The watchdog (``python -m simmtm.outdir.process_record PATH``) checks once a second whether the driver still
  runs; when it does not (``kill -9``, out of memory), it kills what the record lists and removes the record.
- ``stop_recorded(path)``: the same clean-up, run by the next command on the same folder in case the watchdog
  itself was killed.

Only processes listed in the record are touched, each checked against its start time: never ``ray stop``, never
processes by name.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["RECORD_FILE", "record_children", "stop_recorded", "clear", "alive"]

log = logging.getLogger(__name__)

RECORD_FILE = "processes.json"


def _entry(proc: psutil.Process) -> dict[str, Any]:
    return {"pid": proc.pid, "started": proc.create_time(), "name": proc.name()}


def alive(entry: dict[str, Any]) -> psutil.Process | None:
    """The running process an entry describes (same pid and start time), or None."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["started"]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.NoSuchProcess:
        pass
    return None


def record_children(
    path: str | Path,
    *,
    exclude: frozenset[int] | set[int] = frozenset(),
    note: dict[str, Any] | None = None,
    watchdog: bool = True,
) -> None:
    """Write this process and its descendants (but the pids in ``exclude``: what ran before, not ours to stop) to
    ``path`` (atomically) and start the watchdog."""
    path = Path(path)
    me = psutil.Process()
    children = []
    for proc in me.children(recursive=True):
        try:
            if proc.pid not in exclude:
                children.append(_entry(proc))
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    record = {"driver": _entry(me), "children": children, **(note or {})}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    if watchdog:
        subprocess.Popen(
            [sys.executable, "-m", "simmtm.outdir.process_record", str(path)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
                ),
            },
        )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_recorded(path: str | Path) -> int:
    """Kill the listed processes of a driver that is gone; remove the record. Returns how many were killed.

    A record whose driver still runs is left alone (its driver owns them).
    """
    path = Path(path)
    record = _read(path)
    if record is None:
        return 0
    if alive(record["driver"]) is not None and record["driver"]["pid"] != os.getpid():
        return 0
    left = [p for p in (alive(e) for e in record.get("children", [])) if p is not None]
    for proc in left:
        try:
            proc.kill()  # SIGKILL: Ray's agents ignore SIGTERM once their raylet is gone
        except psutil.NoSuchProcess:
            pass
    path.unlink(missing_ok=True)
    psutil.wait_procs(left, timeout=10)
    if left:
        log.warning(
            "stopped %d process(es) left by pid %d, which ended without stopping them (%s)",
            len(left),
            record["driver"]["pid"],
            ", ".join(sorted({p.get("name", "?") for p in record["children"]})),
        )
    return len(left)


def clear(path: str | Path) -> None:
    """The driver stopped its processes itself: drop the record (the watchdog then exits)."""
    Path(path).unlink(missing_ok=True)


def _watch(path: Path, poll_s: float = 1.0) -> None:
    record = _read(path)
    if record is None:
        return
    driver = record["driver"]
    while path.is_file() and alive(driver) is not None:
        time.sleep(poll_s)
    if path.is_file() and (_read(path) or {}).get("driver") == driver:
        stop_recorded(path)


if __name__ == "__main__":
    _watch(Path(sys.argv[1]))
