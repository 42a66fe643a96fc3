"""Batches fanned out over a work pool: a real PostgreSQL, a real `prefect server` on it, a process
pool for dataset runs and one for batches with two workers, runs started with `prefect deployment
run` as a user would (docs/scale-out.md). Every process is stopped in teardown, whatever happens."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefect_server as server_helpers
from postgres import postgres_bin, running_postgres
from prefect_server import PREFECT, REPO, cli, get_json, post_json, running_server, stop, tail
from ttsf_core.config import build_config
from ttsf_core.records import RunLayout
from ttsf_core.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PROMPTS = ["a red lighthouse on a cliff at dawn", "an owl reading a map by candlelight",
           "a bowl of ramen, studio photo", "a paper boat on a puddle"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """PostgreSQL, the server on it, the pools, the deployments, a control worker and two batch workers."""
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
    folder = tmp_path_factory.mktemp("fleet")
    started: list[subprocess.Popen] = []
    with running_postgres() as database, running_server(folder, database) as (api_url, env, log):
        try:
            cli(["work-pool", "create", "ttsf-process", "--type", "process"], env)
            cli(["work-pool", "create", "ttsf-batch-cpu", "--type", "process"], env)
            for name in ("tiny-cpu", "cpu"):
                cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", name], env)
            workers = {}
            env = {**env, "GEMINI_API_KEY": "test-key"}  # a process worker passes its environment to its runs
            for name, pool, limit in (("control", "ttsf-process", "4"), ("w1", "ttsf-batch-cpu", "1"),
                                      ("w2", "ttsf-batch-cpu", "1")):
                worker_log = folder / f"{name}.log"
                workers[name] = (server_helpers.start(PREFECT + ["worker", "start", "--pool", pool, "--name", name,
                                                                  "--limit", limit], env, worker_log, folder),
                                 worker_log)
                started.append(workers[name][0])
            yield api_url, env, folder, workers
        finally:
            for process in started:
                stop(process)


def _config(folder: Path, **overrides) -> dict:
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = {
        "pretrained_model_name_or_path": "tiny-flux", "device": "cpu",
        "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"}, "search_args": {"search_rounds": 2},
        "prompts": {"prompt": None, "dataset": str(prompts), "num_prompts": "all"},
        "output_dir": str(folder / "output"), "prompts_per_batch": 1, "task_workers": 4,
        "dispatch": {"mode": "pool", "deployment": "search-batch/cpu"},
    }
    return build_config(config | overrides).model_dump(mode="json")


def _deployment_run(env: dict, config: dict) -> str:
    created = cli(["deployment", "run", "search-dataset/tiny-cpu", "--param", "config=" + json.dumps(config)], env)
    return re.search(r"UUID:\s*([0-9a-f-]{36})", created).group(1)


def _wait(api_url: str, flow_run_id: str, workers: dict) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for _ in range(RUN_TIMEOUT_S * 2):
        run = get_json(f"{api_url}/flow_runs/{flow_run_id}")
        if run["state_type"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, "\n".join(f"--- {n}\n{tail(log)}" for n, (_, log) in workers.items())
        time.sleep(0.5)
    raise AssertionError("never finished")


def _batch_runs(api_url: str, parent_id: str) -> list[dict]:
    return post_json(f"{api_url}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}})


def test_batches_spread_over_two_workers_each_once_on_postgres(fleet):
    api_url, env, folder, workers = fleet
    (folder / "spread").mkdir(exist_ok=True)
    config = _config(folder / "spread")
    parent = _wait(api_url, _deployment_run(env, config), workers)
    assert parent["state_type"] == "COMPLETED", parent["state"]
    batches = _batch_runs(api_url, parent["id"])
    assert sorted(run["parameters"]["batch_index"] for run in batches) == [0, 1, 2, 3]  # each exactly once
    assert all(run["state_type"] == "COMPLETED" for run in batches)
    assert {run["labels"].get("prefect.worker.name") for run in batches} == {"w1", "w2"}  # both took batches
    run_dir = RunLayout(build_config(config)).run_dir
    summaries = [json.loads(p.read_text()) for p in sorted((run_dir / "batches").glob("batch-*.json"))]
    assert sum(s["counts"]["images_generated"] for s in summaries) == len(PROMPTS) * (2 + 4)  # each image once
    assert len(list(Store(build_config(config)).images_dir.rglob("*.png"))) == len(PROMPTS) * (2 + 4)
    report = (run_dir / "report" / "report.csv").read_text().splitlines()
    assert len(report) == 1 + len(PROMPTS) * 2


def _fake_gemini(folder: Path, latency_s: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_gemini.py"), "--port", "0",
                                "--latency_s", str(latency_s)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_lost_worker_loses_nothing_and_the_fleet_keeps_the_rate_limit(fleet):
    api_url, env, folder, workers = fleet
    (folder / "lost").mkdir(exist_ok=True)
    fake, url = _fake_gemini(folder, latency_s=0.4)
    env = {**env, "GEMINI_API_KEY": "test-key"}
    try:
        config = _config(folder / "lost", verifier_rpm=60, seed=7, verifier_args={
            "name": "gemini", "options": {"base_url": url}, "max_concurrency": 4})
        layout, store = RunLayout(build_config(config)), Store(build_config(config))
        parent_id = _deployment_run(env, config)
        victim = _kill_a_busy_worker(api_url, parent_id, workers, store)
        parent = _wait(api_url, parent_id, workers)
        assert parent["state_type"] == "FAILED"  # the lost batch, named in the summary
        images_kept = len(list(store.images_dir.rglob("*.png")))
        recorded = {p.relative_to(layout.run_dir): p.read_bytes() for p in layout.run_dir.rglob("round_*.json")}
        rerun_started = time.time()
        again = _wait(api_url, _deployment_run(env, config), workers)
        assert again["state_type"] == "COMPLETED", again["state"]
        assert all(run["labels"].get("prefect.worker.name") != victim for run in _batch_runs(api_url, again["id"]))
        rerun = [json.loads(p.read_text()) for p in (layout.run_dir / "batches").glob("batch-*.json")
                 if p.stat().st_mtime >= rerun_started]
        arrivals = sorted(r["arrived_at"] for r in get_json(f"{url}/_fake/requests")["requests"])
    finally:
        fake.kill()
        fake.wait(timeout=10)
    total = len(list(store.images_dir.rglob("*.png")))
    assert total == len(PROMPTS) * (2 + 4)  # no image twice in the store...
    # ...and the re-run made exactly the images the lost worker had not written.
    assert sum(s["counts"]["images_generated"] for s in rerun) == total - images_kept
    for path, data in recorded.items():  # rounds recorded before the kill are left as they were
        assert (layout.run_dir / path).read_bytes() == data
    _assert_under_rate(arrivals, per_minute=60, burst=6)


def _kill_a_busy_worker(api_url: str, parent_id: str, workers: dict, store: Store) -> str:
    """SIGKILL the worker (and its flow run) of a batch that has started writing images; mark that
    batch run Crashed, as Prefect's zombie automation (or Change state in the UI) would."""
    deadline = time.monotonic() + 240
    for _ in range(2400):
        running = [run for run in _batch_runs(api_url, parent_id) if run["state_type"] == "RUNNING"]
        if running and len(list(store.images_dir.rglob("*.png"))) >= 3:
            run = running[0]
            name = run["labels"].get("prefect.worker.name")
            process, _ = workers[name]
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            post_json(f"{api_url}/flow_runs/{run['id']}/set_state",
                      {"state": {"type": "CRASHED", "message": "its worker was killed"}, "force": True})
            return name
        assert time.monotonic() < deadline, "no batch got going"
        time.sleep(0.1)
    raise AssertionError("no batch got going")


def _assert_under_rate(arrivals: list[float], per_minute: int, burst: int) -> None:
    """In every window, no more requests than the limit's burst plus its refill over the window."""
    rate = per_minute / 60.0
    for first in range(len(arrivals)):
        for last in range(first, len(arrivals)):
            window = arrivals[last] - arrivals[first]
            assert last - first + 1 <= burst + rate * window + 1, (first, last, window)
