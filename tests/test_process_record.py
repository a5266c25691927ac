"""What a killed driver started is stopped: by its watchdog at once, or by the next command on its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from simmtm.outdir.process_record import alive, stop_recorded

# A "driver" that starts a child which ignores SIGTERM and outlives it (as Ray's agents do), records both, and
# waits to be killed.
DRIVER = """
import subprocess, sys, time
from simmtm.outdir.process_record import record_children
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
                         start_new_session=True)
record_children(sys.argv[1], watchdog=sys.argv[2] == "1")
print(child.pid, flush=True)
time.sleep(300)
"""


def start_driver(record: Path, *, watchdog: bool) -> tuple[subprocess.Popen, psutil.Process]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(record), "1" if watchdog else "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child = psutil.Process(int(driver.stdout.readline()))
    return driver, child


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except psutil.TimeoutExpired:
        return False


def test_the_watchdog_stops_what_a_killed_driver_left(tmp_path: Path) -> None:
    record = tmp_path / "processes.json"
    driver, child = start_driver(record, watchdog=True)
    try:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert wait_gone(child, 20), "the child outlived its driver"
        deadline = time.time() + 10
        while record.exists() and time.time() < deadline:  # the watchdog removes it after the kill
            time.sleep(0.1)
        assert not record.exists()
    finally:
        if child.is_running():
            child.kill()


def test_the_next_run_stops_what_is_left_and_only_that(tmp_path: Path) -> None:
    record = tmp_path / "processes.json"
    driver, child = start_driver(record, watchdog=False)
    try:
        assert stop_recorded(record) == 0 and record.exists()  # its driver still runs: not ours to stop
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        time.sleep(0.5)
        assert child.is_running()  # left behind
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert stop_recorded(record) == 1
        assert wait_gone(child, 10) and not record.exists()
        assert bystander.poll() is None  # a process the record does not list is never touched
        bystander.kill()
    finally:
        if child.is_running():
            child.kill()


def test_a_recycled_pid_is_not_ours() -> None:
    me = psutil.Process()
    assert alive({"pid": me.pid, "started": me.create_time()}) is not None
    assert alive({"pid": me.pid, "started": me.create_time() - 100}) is None
