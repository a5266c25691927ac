"""One owner per folder: a second owner is refused naming the first; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simmtm.outdir.folder_lock import LOCK_FILE, FolderBusy, FolderLock, current_holder, lock_folder

HOLD = "import sys, time; from simmtm.outdir.folder_lock import lock_folder; lock_folder(sys.argv[1], command='holder'); print('held', flush=True); time.sleep(60)"


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_owner_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
    tmp_path: Path, caplog
) -> None:
    folder = tmp_path / "run"
    holder = hold_in_another_process(folder)
    try:
        with pytest.raises(FolderBusy, match=rf"run: in use by pid {holder.pid} on .* since .* \(holder\); wait"):
            lock_folder(folder)
        assert current_holder(folder).pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_FILE).is_file() and current_holder(
        folder
    ) is None  # the file stays, the lock went with the process
    with caplog.at_level(logging.WARNING, logger="simmtm.outdir.folder_lock"):
        lock = lock_folder(folder, command="me")
    assert lock.taken_over.pid == holder.pid and f"pid {holder.pid}" in caplog.text
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_FILE).exists() and current_holder(folder) is None


def test_the_lock_is_one_per_folder_and_freed_on_release(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "a"), FolderLock(tmp_path / "b"):  # two folders: two owners
        with pytest.raises(FolderBusy):  # the same process twice is two owners too (a second sweep in a notebook)
            FolderLock(tmp_path / "a").acquire()
    with FolderLock(tmp_path / "a") as again:
        assert again.taken_over is None
        (tmp_path / "a" / "written").write_text("x")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["written"]  # the lock file went, the work stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # b: created by its lock, left empty, removed


def test_many_processes_racing_for_one_folder_get_one_owner(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    code = (
        "import sys, time; from simmtm.outdir.folder_lock import lock_folder, FolderBusy\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "try:\n    lock_folder(sys.argv[1]); print('owner', flush=True); time.sleep(2)\n"
        "except FolderBusy:\n    print('busy', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.time() + 5  # all six imported by then: they race for the lock together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(folder), str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(6)
    ]
    said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert said == ["busy"] * 5 + ["owner"], said
