"""End to end through a real Prefect server: deployments/prefect.yaml deployed with the CLI, a process
worker, a flow run triggered with `prefect deployment run --param config=...`, the report on disk.

Everything runs as separate processes on 127.0.0.1, as a user would start them (docs/deployment.md);
every process started here is stopped in the fixtures' teardown, whatever happens.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

import prefect_server as server_helpers
from prefect_server import PREFECT, REPO, cli, get_json, running_server, stop, tail
from ttsf_core.config import build_config
from ttsf_core.storage.records import RunLayout
from ttsf_core.storage.store import Store
from ttsf_core.resolve import resolve

POOL = "ttsf-process"
DEPLOYMENT = "search-dataset/tiny-cpu"
PROMPTS = ["a red lighthouse on a cliff at dawn", "an owl reading a map by candlelight"]
RUN_TIMEOUT_S = 300
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free port, with its own PREFECT_HOME (SQLite)."""
    with running_server(tmp_path) as server:
        yield server


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
        command = PREFECT + ["worker", "start", "--pool", POOL, "--name", "ttsf-test-worker"]
        started.append(server_helpers.start(command, env, log, elsewhere))
        return started[-1]

    try:
        yield start, log
    finally:
        for process in started:
            stop(process)


def _wait_for_terminal_state(api_url: str, flow_run_id: str, worker_process, worker_log: Path) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for _ in range(RUN_TIMEOUT_S * 2):  # bounded by count as well as by time
        run = get_json(f"{api_url}/flow_runs/{flow_run_id}")
        state = (run.get("state") or {}).get("type")
        if state in TERMINAL:
            return run
        assert worker_process.poll() is None, f"worker exited {worker_process.returncode}:\n{tail(worker_log)}"
        assert time.monotonic() < deadline, f"flow run still {state} after {RUN_TIMEOUT_S} s:\n{tail(worker_log)}"
        time.sleep(0.5)
    raise AssertionError(f"flow run never reached a terminal state:\n{tail(worker_log)}")


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
    run_dir = RunLayout(resolve(build_config(config))).run_dir

    cli(["work-pool", "create", POOL, "--type", "process"], env)
    deployed = cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "tiny-cpu"], env)
    assert DEPLOYMENT in deployed, deployed
    deployment = get_json(f"{api_url}/deployments/name/{DEPLOYMENT}")
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ], deployment["pull_steps"]
    assert deployment["work_pool_name"] == POOL

    worker_process = start_worker()
    created = cli(["deployment", "run", DEPLOYMENT, "--param", "config=" + json.dumps(config)], env)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", created)
    assert match, created
    flow_run = _wait_for_terminal_state(api_url, match.group(1), worker_process, worker_log)

    assert flow_run["state"]["type"] == "COMPLETED", (
        f"{flow_run['state']}\n--- worker ---\n{tail(worker_log, 80)}\n--- server ---\n{tail(server_log)}")
    # What is searched (the dataset file's name), how many, when, and the search's hash.
    assert re.fullmatch(rf"prompts-2p-\d{{8}}-\d{{4}}-{resolve(build_config(config)).identity_hash[:8]}", flow_run["name"])
    report = pd.read_csv(run_dir / "report" / "report.csv")
    assert len(report) == len(PROMPTS) * 2
    assert sorted(zip(report["prompt_index"], report["search_round"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert set(report["prompt"]) == set(PROMPTS)
    for path in report["best_img_path"]:
        assert (run_dir / "report" / path).is_file(), path  # relative to the report
    # Every candidate's PNG, in the store: 2 + 4 a prompt.
    assert len(list(Store(resolve(build_config(config))).images_dir.glob("*/*.png"))) == len(PROMPTS) * (2 + 4)


def _missing_fields(model, data: dict, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    missing = []
    for name, field in model.model_fields.items():
        if name not in data:
            missing.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            missing += _missing_fields(field.annotation, data[name], f"{prefix}{name}.")
    return missing


def test_every_deployment_spells_out_its_whole_config():
    """The UI's Custom run form shows a deployment's parameters and fills the rest from the schema's
    generic defaults: with every field spelled out, the form left unchanged runs the quick run's search."""
    import yaml

    from ttsf_core.config import RunConfig

    document = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for deployment in document["deployments"]:
        if deployment["entrypoint"].endswith(":search_batch"):
            continue  # batch runs get every parameter from their dataset run
        config = deployment["parameters"]["config"]
        assert _missing_fields(RunConfig, config) == [], deployment["name"]
        assert build_config(config).model_dump(mode="json") == config, deployment["name"]
