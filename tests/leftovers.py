"""Finding processes the tests started and left running (Linux /proc).

How a process is known to be ours: conftest puts a marker in this pytest process's environment before
any test runs (`TTSF_TEST_SESSION=<pid>-<random>`), and during each test a second one naming the test
(`TTSF_TEST_NODE=<session marker> <node id>`). Every process started from here inherits both at exec —
a Prefect server, a worker and its flow runs, a stand-in server, a `ttsf run`, whatever they start in
turn — and /proc/<pid>/environ keeps the environment a process was started with, even after it was
orphaned and reparented to 1 or moved to a session of its own. So a leftover is found by its marker,
wherever it now hangs in the process tree; the pytest process itself and its own helpers are excluded.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SESSION_VAR = "TTSF_TEST_SESSION"
TEST_VAR = "TTSF_TEST_NODE"
PROC = Path("/proc")
# Interpreter helpers that end with the pytest process itself (they read a pipe from it until EOF).
INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@dataclass(frozen=True)
class Leftover:
    pid: int
    ppid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}): {self.command}"


def new_session_marker() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def node_marker(session_marker: str, nodeid: str) -> str:
    return f"{session_marker} {nodeid}"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid), or None when the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1])


def _command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "<gone>"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or "<no command line>"


def prefect_singleton_servers() -> set[int]:
    """Pids of Prefect's temporary servers this pytest process holds (SubprocessASGIServer, started by an
    in-process flow call or prefect_test_harness): they live for the session and Prefect stops them at exit."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return set()
    pids = set()
    for server in list(module.SubprocessASGIServer._instances.values()):
        process = getattr(server, "server_process", None)
        if process is not None and process.poll() is None:
            pids.add(process.pid)
    return pids


def stop_prefect_singleton_servers() -> None:
    """What Prefect's atexit hook does a moment later, done before the session's last look."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    for server in list(module.SubprocessASGIServer._instances.values()):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - a server that will not stop is reported as a leftover
            pass


def marked(var: str, value: str, exclude: set[int] = frozenset()) -> list[Leftover]:
    """Running processes started with `var=value` in their environment (not this one, not `exclude`)."""
    me = os.getpid()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or pid in exclude:
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in "ZX":  # gone, or a zombie (exited, only not reaped)
            continue
        if _environ(pid).get(var) != value:
            continue
        command = _command(pid)
        if stat[1] == me and any(helper in command for helper in INTERPRETER_HELPERS):
            continue
        found.append(Leftover(pid, stat[1], command))
    return sorted(found, key=lambda leftover: leftover.pid)


def still_running(var: str, value: str, exclude_fn=set, grace_s: float = 5.0, interval_s: float = 0.1) -> list[Leftover]:
    """The marked processes still running after up to `grace_s` (a process told to stop gets that long)."""
    deadline = time.monotonic() + grace_s
    found = marked(var, value, exclude_fn())
    for _ in range(int(grace_s / interval_s)):  # bounded by count and by time
        if not found or time.monotonic() > deadline:
            break
        time.sleep(interval_s)
        found = marked(var, value, exclude_fn())
    return found


def kill(leftovers: list[Leftover]) -> None:
    for leftover in leftovers:
        try:
            os.kill(leftover.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def report(leftovers: list[Leftover], where: str) -> str:
    lines = [f"{len(leftovers)} process(es) started by {where} still running (killed now):"]
    lines += [f"  {leftover}" for leftover in leftovers]
    return "\n".join(lines)
