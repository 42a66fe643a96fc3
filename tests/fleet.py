"""A fleet on the real pieces for the scale-out tests and benchmark: a throwaway PostgreSQL, a `prefect
server` on it that can be stopped and started again on the same port and database (an outage), the
pools and deployments of deployments/prefect.yaml, a control worker for dataset runs and batch workers
that can be killed and started again. Every process is stopped when the fleet closes, whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from postgres import postgres_bin, running_postgres
from prefect_server import (PREFECT, REPO, SERVER_START_S, cli, free_port, get_json, post_json, start, stop,
                            tail)

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Fleet:
    def __init__(self, folder: Path, database_url: str | None):
        self.folder, self.database_url = folder, database_url
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        self.env.update({
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # a worker notices a run soon (default 10 s)
            "PREFECT_CLI_WRAP_LINES": "false",
            "TTSF_CACHE_DIR": os.environ["TTSF_CACHE_DIR"],  # flow runs load the test's tiny model
            "HF_HUB_OFFLINE": "1",
            "NO_COLOR": "1",
            "GEMINI_API_KEY": "test-key",  # a process worker passes its environment to its runs
        })
        if database_url is not None:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        self.server: subprocess.Popen | None = None
        self.server_starts = 0
        self.workers: dict[str, tuple[subprocess.Popen, Path, str, str]] = {}

    # ---- the server -----------------------------------------------------------------------------------

    def start_server(self) -> None:
        self.server_starts += 1
        log = self.folder / f"server-{self.server_starts}.log"
        self.server = start(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)], self.env,
                            log, self.folder)
        deadline = time.monotonic() + SERVER_START_S
        for _ in range(SERVER_START_S * 2):
            assert self.server.poll() is None, f"prefect server exited {self.server.returncode}:\n{tail(log)}"
            try:
                if get_json(f"{self.api_url}/health") is True:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, f"no /api/health after {SERVER_START_S} s:\n{tail(log)}"
            time.sleep(0.5)
        raise AssertionError("the server never answered")

    def stop_server(self) -> None:
        """An outage: the server process is stopped (SIGTERM, then SIGKILL); its database stays."""
        if self.server is not None:
            stop(self.server)
            self.server = None

    # ---- workers --------------------------------------------------------------------------------------

    def start_worker(self, name: str, pool: str, limit: int = 1) -> None:
        log = self.folder / f"{name}.log"
        process = start(PREFECT + ["worker", "start", "--pool", pool, "--name", name, "--limit", str(limit)],
                        self.env, log, self.folder)
        self.workers[name] = (process, log, pool, str(limit))

    def kill_worker(self, name: str, flow_run_pids: list[int] = ()) -> None:
        """SIGKILL the worker and the given flow-run processes it started: a machine lost. A 3.9.1 process
        worker starts each flow run in a process group of its own, so the worker's group is not enough."""
        process = self.workers[name][0]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in flow_run_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its group, when it leads one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    def ensure_workers(self) -> None:
        """Every worker that was killed is started again (the next test gets the whole fleet)."""
        for name, (process, _, pool, limit) in list(self.workers.items()):
            if process.poll() is not None:
                stop(process)
                self.start_worker(name, pool, int(limit))

    def logs(self) -> str:
        parts = [f"--- {name}\n{tail(log)}" for name, (_, log, _, _) in self.workers.items()]
        return "\n".join(parts + [f"--- server\n{tail(self.folder / f'server-{self.server_starts}.log')}"])

    def close(self) -> None:
        for process, *_ in self.workers.values():
            stop(process)
        self.stop_server()

    # ---- the API --------------------------------------------------------------------------------------

    def flow_run(self, run_id: str) -> dict:
        return get_json(f"{self.api_url}/flow_runs/{run_id}")

    def children(self, parent_id: str) -> list[dict]:
        return post_json(f"{self.api_url}/flow_runs/filter",
                         {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "limit": 200})

    def flow_runs(self, flow_name: str) -> list[dict]:
        return post_json(f"{self.api_url}/flow_runs/filter",
                         {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

    def deployment_run(self, deployment: str, config: dict) -> str:
        import re

        created = cli(["deployment", "run", deployment, "--param", "config=" + json.dumps(config)], self.env)
        return re.search(r"UUID:\s*([0-9a-f-]{36})", created).group(1)

    def wait_terminal(self, run_id: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s * 2) + 1):
            try:
                run = self.flow_run(run_id)
                if run["state_type"] in TERMINAL:
                    return run
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # the server may be away on purpose
            assert time.monotonic() < deadline, f"run {run_id} not finished after {timeout_s:g} s\n{self.logs()}"
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} not finished after {timeout_s:g} s\n{self.logs()}")


@contextlib.contextmanager
def running_fleet(folder: Path, batch_workers: int = 2, control: bool = True, deploy=("tiny-cpu", "cpu")):
    """PostgreSQL, the server on it, the pools, the deployments, a control worker (for deployment runs of
    search-dataset) and `batch_workers` batch workers (w1, w2, ...)."""
    if postgres_bin() is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
    with running_postgres() as database:
        fleet = Fleet(folder, database)
        try:
            fleet.start_server()
            cli(["work-pool", "create", "ttsf-process", "--type", "process"], fleet.env)
            cli(["work-pool", "create", "ttsf-batch-cpu", "--type", "process"], fleet.env)
            for name in deploy:
                cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", name], fleet.env)
            if control:
                fleet.start_worker("control", "ttsf-process", limit=4)
            for index in range(1, batch_workers + 1):
                fleet.start_worker(f"w{index}", "ttsf-batch-cpu")
            yield fleet
        finally:
            fleet.close()


def _interruptible() -> None:
    """Ctrl-C as in a terminal: SIGINT at its default. A suite started in the background by a shell
    without job control (`pytest ... &`) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: the test would send a Ctrl-C nobody hears."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ttsf_run(fleet: Fleet, config: dict, folder: Path, name: str) -> subprocess.Popen:
    """`ttsf run --config` against the fleet's server (the dataset run in this process, batches on the pool),
    in its own process group, as a person starts it from a terminal."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    out = (folder / f"{name}.out").open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "ttsf.cli", "run", "--config", str(path)], env=fleet.env,
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_interruptible)
    finally:
        out.close()
