"""Helpers for tests that start their own Ray nodes as `ray start --block` processes (never `ray stop`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["free_port", "wait_for_port", "stop_nodes", "two_nodes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"the Ray head did not open port {port}")


def stop_nodes(procs: list[subprocess.Popen], grace: float = 5) -> None:
    """SIGTERM stops a `ray start --block` node (REFERENCE section 5), all at once; SIGKILL the process group (the
    session the test started it in) of any that lingers past ``grace`` seconds. A head stops in about 3 s; a worker
    node outlived a 40 s wait here, and the 30 s this helper used to wait for it was most of a test's teardown."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def two_nodes(prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and one worker node, one CPU each, as `ray start --block` processes with authentication off (a
    test-only cluster); yields its address and the environment to reach it, stops both nodes on the way out."""
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    temp = Path(tempfile.mkdtemp(prefix=prefix))  # short: Ray's socket paths live under it (107-char limit)
    nodes = []
    try:
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp / 'head'}",
             *common], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(port)
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", f"--address={address}", f"--temp-dir={temp / 'worker'}", *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address, env
    finally:
        stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)
