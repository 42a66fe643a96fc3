"""End to end through a real Prefect server: deployments/prefect.yaml deployed with the CLI, a process
worker, a flow run triggered with `prefect deployment run --param config=...`, the report on disk.

Everything runs as separate processes on 127.0.0.1, as a user would start them (docs/deployment.md);
every process started here is stopped in the fixtures' teardown, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from ttsf_core.config import build_config
from ttsf_core.records import RunLayout
from ttsf_core.store import Store

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of this interpreter (the worker's flow runs use it too)
POOL = "ttsf-process"
DEPLOYMENT = "search-dataset/tiny-cpu"
PROMPTS = ["a red lighthouse on a cliff at dawn", "an owl reading a map by candlelight"]
SERVER_START_S = 120
CLI_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _start(args: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    handle = log.open("wb")
    try:
        # Own process group: teardown stops the process and anything it started (a worker's flow runs).
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        handle.close()


def _stop(process: subprocess.Popen) -> None:
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


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read())


def _cli(args: list[str], env: dict) -> str:
    result = subprocess.run(PREFECT + args, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free port, with its own PREFECT_HOME (SQLite)."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker notices the run soon (default 10 s)
        "PREFECT_CLI_WRAP_LINES": "false",
        "TTSF_CACHE_DIR": os.environ["TTSF_CACHE_DIR"],  # the worker's flow runs load the test's tiny model
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
    })
    log = tmp_path / "server.log"
    server = _start(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, tmp_path)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"prefect server exited {server.returncode}:\n{_tail(log)}"
            try:
                if _get_json(f"{api_url}/health") is True:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, f"no /api/health after {SERVER_START_S} s:\n{_tail(log)}"
            time.sleep(0.5)
        yield api_url, env, log
    finally:
        _stop(server)


@pytest.fixture
def worker(prefect_server, tmp_path):
    """Starts `prefect worker start --pool ttsf-process` on demand (after the pool exists)."""
    _, env, _ = prefect_server
    started: list[subprocess.Popen] = []
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen:
        # From a folder outside the repo: the deployment's pull step must find the code by itself.
        elsewhere = tmp_path / "worker-cwd"
        elsewhere.mkdir(exist_ok=True)
        started.append(_start(PREFECT + ["worker", "start", "--pool", POOL, "--name", "ttsf-test-worker"],
                              env, log, elsewhere))
        return started[-1]

    try:
        yield start, log
    finally:
        for process in started:
            _stop(process)


def _wait_for_terminal_state(api_url: str, flow_run_id: str, worker_process, worker_log: Path) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for _ in range(RUN_TIMEOUT_S * 2):  # bounded by count as well as by time
        run = _get_json(f"{api_url}/flow_runs/{flow_run_id}")
        state = (run.get("state") or {}).get("type")
        if state in TERMINAL:
            return run
        assert worker_process.poll() is None, f"worker exited {worker_process.returncode}:\n{_tail(worker_log)}"
        assert time.monotonic() < deadline, f"flow run still {state} after {RUN_TIMEOUT_S} s:\n{_tail(worker_log)}"
        time.sleep(0.5)
    raise AssertionError(f"flow run never reached a terminal state:\n{_tail(worker_log)}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prefect_yaml_deployment_runs_on_a_process_worker(prefect_server, worker, tmp_path, tiny_flux_dir):
    api_url, env, server_log = prefect_server
    start_worker, worker_log = worker
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    config = {
        "pretrained_model_name_or_path": "tiny-flux",
        "device": "cpu",
        "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"},
        "search_args": {"search_rounds": 2},
        "prompts": {"prompt": None, "dataset": str(prompts_file), "num_prompts": 2},
        "output_dir": str(tmp_path / "output"),
        "task_workers": 4,
    }
    run_dir = RunLayout(build_config(config)).run_dir

    _cli(["work-pool", "create", POOL, "--type", "process"], env)
    deployed = _cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "tiny-cpu"], env)
    assert DEPLOYMENT in deployed, deployed
    deployment = _get_json(f"{api_url}/deployments/name/{DEPLOYMENT}")
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ], deployment["pull_steps"]
    assert deployment["work_pool_name"] == POOL

    worker_process = start_worker()
    created = _cli(["deployment", "run", DEPLOYMENT, "--param", "config=" + json.dumps(config)], env)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", created)
    assert match, created
    flow_run = _wait_for_terminal_state(api_url, match.group(1), worker_process, worker_log)

    assert flow_run["state"]["type"] == "COMPLETED", (
        f"{flow_run['state']}\n--- worker ---\n{_tail(worker_log, 80)}\n--- server ---\n{_tail(server_log)}")
    assert flow_run["name"] == f"search-{build_config(config).identity_hash()}"
    report = pd.read_csv(run_dir / "report" / "report.csv")
    assert len(report) == len(PROMPTS) * 2
    assert sorted(zip(report["prompt_index"], report["search_round"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert set(report["prompt"]) == set(PROMPTS)
    for path in report["best_img_path"]:
        assert Path(path).is_file(), path
    # Every candidate's PNG, in the store: 2 + 4 a prompt.
    assert len(list(Store(build_config(config)).images_dir.glob("*/*.png"))) == len(PROMPTS) * (2 + 4)
