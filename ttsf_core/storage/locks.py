"""One search at a time per run folder: an exclusive lock held for the life of the search.

Two runs of one config at once would both generate and both pay. The lock is `fcntl.flock` on
`RUN_DIR/.lock` (released by the kernel when its process dies, so never stale); the file says who
holds it. Within one process it is re-entrant (the CLI takes it before Prefect starts, the flow again).
On NFS, flock is only as good as the server's lock manager.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from ttsf_core.config import ConfigError

LOCK_NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # path -> (fd, holders in this process)
_guard = threading.Lock()


class RunFolderBusy(ConfigError):
    """Another process is searching this run folder."""


class RunLock:
    """`name`: the lock file in the run folder (`.lock` for a whole search, `.batch-N.lock` for one
    batch). Taking a lock another process holds never waits: it is refused at once with RunFolderBusy,
    naming the holder, so a batch run twice at once (a retry or a resubmission while its first run still
    lives) fails instead of running beside it."""

    def __init__(self, run_dir: Path, name: str = LOCK_NAME):
        self.path = (Path(run_dir) / name).resolve()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        with _guard:
            if self.path in _held:
                fd, count = _held[self.path]
                _held[self.path] = (fd, count + 1)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                what = "a run folder" if self.path.name == LOCK_NAME else f"a batch ({self.path.name})"
                raise RunFolderBusy(f"output_dir: received {str(self.path.parent)!r} (being searched by {holder}), "
                                    f"allowed: {what} no other ttsf run is searching; wait for that run to "
                                    "finish or stop it") from None
            _write_holder(fd)
            _held[self.path] = (fd, 1)

    def release(self) -> None:
        with _guard:
            fd, count = _held.get(self.path, (None, 0))
            if fd is None:
                return
            if count > 1:
                _held[self.path] = (fd, count - 1)
                return
            del _held[self.path]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"
