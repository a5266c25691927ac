"""One owner per output folder: a run, a fine-tuning or a sweep folder is written by one process at a time.

The owner holds an ``flock`` on ``FOLDER/.simmtm.lock`` for as long as it runs; the file names it (pid, host, start
time, command) so that a second process aimed at the folder can say who holds it. The kernel drops the ``flock``
when its process dies, ``kill -9`` included, so a lock left by a dead process is simply taken over (with a
warning naming the old holder); nothing has to guess from pids whether a holder is still alive.

Several sweep drivers may feed one Optuna study on purpose (``tune.storage``): each then writes its own ``--out``
folder, so that mode needs no exception here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simmtm.errors import UserError

__all__ = ["LOCK_FILE", "Holder", "FolderBusy", "FolderLock", "lock_folder", "current_holder"]

log = logging.getLogger(__name__)

LOCK_FILE = ".simmtm.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder."""

    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    command: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since} ({self.command})"

    @classmethod
    def me(cls, command: str | None = None) -> Holder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.time(),
            command=command or " ".join(["simmtm", *sys.argv[1:]])[:300],
        )


class FolderBusy(UserError):
    """Another live process owns the folder."""


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


def current_holder(folder: str | Path) -> Holder | None:
    """The live holder of ``folder``, or None (no lock file, or its holder is gone)."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or Holder(pid=-1, host="?", started=0.0, command="a process still starting")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FolderLock:
    """``with FolderLock(folder): ...`` owns ``folder`` (created if missing) for the block; FolderBusy otherwise."""

    def __init__(self, folder: str | Path, *, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.holder = Holder.me(command)
        self.taken_over: Holder | None = None  # the dead holder whose lock this one replaced
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> FolderLock:
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                who = holder.describe() if holder else "another process (still starting)"
                raise FolderBusy(
                    f"{self.folder}: in use by {who}; wait for it to end, or choose another folder"
                ) from None
            # The holder before us may have removed the file between our open and our flock: then we locked a
            # file nobody else will see; start again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.taken_over = _read_holder(fd)
        if self.taken_over is not None:
            log.warning("%s: taking over from %s, which is no longer running", self.folder, self.taken_over.describe())
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(asdict(self.holder)).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink while still holding it: nobody can take a half-released lock
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created and not any(self.folder.iterdir()):  # refused before writing: leave no trace
            self.folder.rmdir()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | Path, *, command: str | None = None) -> FolderLock:
    """Take ``folder`` for this process (see FolderLock); the caller releases it (or lets the process end)."""
    return FolderLock(folder, command=command).acquire()
