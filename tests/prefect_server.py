"""A real `prefect server start` for end-to-end tests: processes started the way a user starts them,
each in its own process group, every one stopped in teardown whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of this interpreter (the worker's flow runs use it too)
SERVER_START_S = 120
CLI_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def start(args: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    handle = log.open("wb")
    try:
        # Own process group: teardown stops the process and anything it started (a worker's flow runs).
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        handle.close()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever of the group is left (also after a clean exit of the leader)
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read())


def cli(args: list[str], env: dict) -> str:
    result = subprocess.run(PREFECT + args, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def post_json(url: str, payload: dict):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read())


@contextlib.contextmanager
def running_server(folder: Path, database_url: str | None = None):
    """Yields (api_url, env, log): env is what a process needs to use this server (and its UI).
    `database_url`: a PostgreSQL database for the server (default: SQLite under PREFECT_HOME)."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,  # the UI's own calls go to this server, not the default :4200
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # a worker notices a run soon (default 10 s)
        "PREFECT_CLI_WRAP_LINES": "false",
        "TTSF_CACHE_DIR": os.environ["TTSF_CACHE_DIR"],  # flow runs load the test's tiny model
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
    })
    if database_url is not None:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = folder / "server.log"
    server = start(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, folder)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"prefect server exited {server.returncode}:\n{tail(log)}"
            try:
                if get_json(f"{api_url}/health") is True:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, f"no /api/health after {SERVER_START_S} s:\n{tail(log)}"
            time.sleep(0.5)
        yield api_url, env, log
    finally:
        stop(server)
