"""A throwaway PostgreSQL cluster for end-to-end tests: initdb in a temporary folder, the server on a
free port of 127.0.0.1, trust authentication, stopped (and its folder removed) afterwards. Uses
Debian's `postgresql` package (scripts/system-deps.sh installs it); as root it runs as `postgres`."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from prefect_server import free_port

START_S = 60


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def running_postgres():
    """Yields the SQLAlchemy URL of a fresh database `prefect` (asyncpg driver, as Prefect wants)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/system-deps.sh installs Debian's postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="ttsf-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    server = subprocess.Popen([*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                               "-h", "127.0.0.1", "-k", str(folder)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_ready(bin_dir, port, server)
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(bin_dir: Path, port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_S
    for _ in range(START_S * 4):
        if subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0:
            return
        if server.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raise RuntimeError(f"PostgreSQL did not start on port {port}")
