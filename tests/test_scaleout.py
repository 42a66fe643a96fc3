"""Batches fanned out over a work pool, on the real pieces: a PostgreSQL, a `prefect server` on it, a
process pool for dataset runs and one for batches with two workers (tests/fleet.py), runs started with
`prefect deployment run` or `ttsf run` as a user would (docs/scale-out.md). And the fleet healing
itself: a worker killed mid-batch, a server outage, Ctrl-C, per-batch timeouts. Each test is bounded
(pytest timeout, loops bounded by count and time); every process is stopped whatever happens.

The outage lasts TTSF_TEST_OUTAGE_S seconds (default 120, the two minutes issue 20 asks to survive):
that test alone takes about 6 minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from fleet import TERMINAL, running_fleet, ttsf_run
from flows.monitor import artifact_key
from prefect_server import REPO, get_json, stop
from ttsf_core.resolve import resolve
from ttsf_core.config import build_config
from ttsf_core.storage.records import RunLayout
from ttsf_core.storage.store import Store

pytestmark = [pytest.mark.slow]
PROMPTS = ["a red lighthouse on a cliff at dawn", "an owl reading a map by candlelight",
           "a bowl of ramen, studio photo", "a paper boat on a puddle"]
RUN_TIMEOUT_S = 400
# After a stop, a batch run a worker had taken but not begun may stay Cancelling until its worker (or the
# server's cleanup) confirms it: that state cannot become Running (Prefect's server refuses it).
STOPPED = TERMINAL | {"CANCELLING"}
OUTAGE_S = float(os.environ.get("TTSF_TEST_OUTAGE_S", "120"))
# Liveness in seconds, not minutes, so a loss is seen within the test's time.
FAST = {"heartbeat_s": 2.0, "lost_after_s": 20.0}
DETECTION_SLACK_S = 20.0  # poll interval (2 s) and a busy 2-core machine, on top of lost_after_s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


@pytest.fixture
def whole_fleet(fleet):
    """The fleet, restored after the test (a killed worker started again, the server up)."""
    yield fleet
    if fleet.server is None:
        fleet.start_server()
    fleet.ensure_workers()


def _config(folder: Path, prompts=PROMPTS, **overrides) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "prompts.txt"
    data.write_text("\n".join(prompts) + "\n")
    dispatch = {"mode": "pool", "deployment": "search-batch/cpu", **FAST, **overrides.pop("dispatch", {})}
    config = {
        "pretrained_model_name_or_path": "tiny-flux", "device": "cpu",
        "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"}, "search_args": {"search_rounds": 2},
        "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"},
        "output_dir": str(folder / "output"), "prompts_per_batch": 1, "task_workers": 4,
        "dispatch": dispatch,
    }
    return build_config(config | overrides).model_dump(mode="json")


def _batch_files(config: dict) -> dict[int, dict]:
    folder = RunLayout(resolve(build_config(config))).run_dir / "batches"
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in folder.glob("batch-*.json")}


def _images(config: dict) -> int:
    return len(list(Store(resolve(build_config(config))).images_dir.rglob("*.png")))


def _records(config: dict) -> int:
    return len(list(RunLayout(resolve(build_config(config))).run_dir.rglob("round_*.json")))


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _latest_dataset_run(fleet, started_after: float) -> dict | None:
    runs = [r for r in fleet.flow_runs("search-dataset") if r["created"] and _when(r["created"]) >= started_after - 5]
    return runs[-1] if runs else None


def _wait_for(what: str, check, timeout_s: float, fleet, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 1):
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s\n{fleet.logs()}"
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def _began_running_after(fleet, runs: list[dict], moment: float) -> list[tuple[str, str]]:
    """Runs that entered Running after `moment`, from each run's state history. Not its start_time:
    Prefect also sets that when a run that never ran ends (a waiting batch set Cancelled by the stop)."""
    late = []
    for run in runs:
        states = get_json(f"{fleet.api_url}/flow_run_states/?flow_run_id={run['id']}")
        late += [(run["name"], state["timestamp"]) for state in states
                 if state["type"] == "RUNNING" and _when(state["timestamp"]) > moment]
    return late


def _output(folder: Path, name: str) -> str:
    return (folder / f"{name}.out").read_text(errors="replace")


# ---- the happy path ------------------------------------------------------------------------------------


def test_batches_spread_over_two_workers_each_once_on_postgres(fleet, tmp_path):
    config = _config(tmp_path / "spread")
    parent = fleet.wait_terminal(fleet.deployment_run("search-dataset/tiny-cpu", config), RUN_TIMEOUT_S)
    assert parent["state_type"] == "COMPLETED", parent["state"]
    batches = fleet.children(parent["id"])
    assert sorted(run["parameters"]["batch_index"] for run in batches) == [0, 1, 2, 3]  # each exactly once
    assert all(run["state_type"] == "COMPLETED" for run in batches)
    assert {run["labels"].get("prefect.worker.name") for run in batches} == {"w1", "w2"}  # both took batches
    files = _batch_files(config)
    assert all(len(f["attempts"]) == 1 and f["attempts"][0]["run_id"] in {r["id"] for r in batches}
               for f in files.values())
    assert sum(f["counts"]["images_generated"] for f in files.values()) == len(PROMPTS) * (2 + 4)  # each image once
    assert _images(config) == len(PROMPTS) * (2 + 4)
    run_dir = RunLayout(resolve(build_config(config))).run_dir
    assert len((run_dir / "report" / "report.csv").read_text().splitlines()) == 1 + len(PROMPTS) * 2
    assert not list((run_dir / "batches" / "heartbeats").glob("*")), "finished attempts leave no heartbeat files"


# ---- a lost worker -------------------------------------------------------------------------------------


def _fake_gemini(latency_s: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_gemini.py"), "--port", "0",
                                "--latency_s", str(latency_s)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_batch_is_resubmitted_to_the_survivor_and_the_run_finishes(whole_fleet, tmp_path):
    """No replacement worker: the dataset run notices the silent batch within lost_after_s, marks its run
    Crashed, resubmits it, and the surviving worker finishes it, paying only for what was not stored."""
    fleet = whole_fleet
    fake, url = _fake_gemini(latency_s=0.4)
    began = time.time()
    run = None
    per_prompt = 2 + 4 + 8
    try:
        config = _config(tmp_path, verifier_rpm=60, seed=7, search_args={"search_rounds": 3}, verifier_args={
            "name": "gemini", "options": {"base_url": url}, "max_concurrency": 4})
        run = ttsf_run(fleet, config, tmp_path, "lost")
        victim, lost_id, killed_at, done_at_kill = _kill_a_worker_mid_batch(fleet, config, began, run)
        code = run.wait(timeout=RUN_TIMEOUT_S)
        requests = get_json(f"{url}/_fake/requests")["requests"]
    finally:
        if run is not None:
            stop(run)
        fake.kill()
        fake.wait(timeout=10)
    output = _output(tmp_path, "lost")
    assert code == 0, output[-3000:]
    parent = _latest_dataset_run(fleet, began)
    assert parent["state_type"] == "COMPLETED", parent["state"]
    batches = fleet.children(parent["id"])
    lost = next(r for r in batches if r["id"] == lost_id)
    assert lost["state_type"] == "CRASHED" and "no heartbeat" in lost["state"]["message"], lost["state"]
    assert not [r for r in batches if r["state_type"] not in TERMINAL]  # nothing left Running
    again = [r for r in batches if r["parameters"]["batch_index"] == lost["parameters"]["batch_index"]
             and r["id"] != lost_id]
    assert len(again) == 1 and again[0]["state_type"] == "COMPLETED"
    assert again[0]["labels"].get("prefect.worker.name") != victim  # the survivor took it
    assert again[0]["parameters"]["allowance"] == lost["parameters"]["allowance"]  # same parameters, same budget
    # Detected within lost_after_s of the loss (plus the poll and a busy machine), and not before the
    # heartbeat could have gone silent that long.
    waited = _when(again[0]["created"]) - killed_at
    assert FAST["lost_after_s"] - FAST["heartbeat_s"] - 1 <= waited <= FAST["lost_after_s"] + DETECTION_SLACK_S, waited
    # Every image once in the store; the resubmitted attempt redid no recorded round and no stored image.
    assert _images(config) == len(PROMPTS) * per_prompt
    attempt = _batch_files(config)[lost["parameters"]["batch_index"]]["attempts"][-1]
    assert attempt["run_id"] == again[0]["id"]
    assert attempt["counts"]["rounds_skipped"] >= 1 and attempt["counts"]["rounds_recorded"] < 3
    assert attempt["counts"]["images_generated"] <= per_prompt - done_at_kill["images_generated"]
    graded = [r["image_sha256"] for r in requests if r["status"] == 200]
    assert len(graded) - len(set(graded)) <= 4  # at most the requests in flight at the kill were asked again
    _assert_under_rate(sorted(r["arrived_at"] for r in requests), per_minute=60, burst=6)  # the fleet kept the cap


def _kill_a_worker_mid_batch(fleet, config: dict, began: float, run) -> tuple[str, str, float, dict]:
    """SIGKILL the worker (and its flow run) of a batch that has recorded some but not all of its rounds
    (its heartbeat carries its counts). Returns the worker, the run, when, and the counts at the kill."""
    heartbeats = RunLayout(resolve(build_config(config))).run_dir / "batches" / "heartbeats"
    rounds = build_config(config).search_args.search_rounds

    def busy():
        assert run.poll() is None, "ttsf run ended before a batch got going"
        parent = _latest_dataset_run(fleet, began)
        if parent is None:
            return None
        for child in fleet.children(parent["id"]):
            beat = heartbeats / f"batch-{child['parameters']['batch_index']}-{child['id']}.json"
            if child["state_type"] == "RUNNING" and beat.is_file():
                counts = json.loads(beat.read_text())["counts"]
                if 1 <= counts.get("rounds_recorded", 0) < rounds:
                    return child, counts
        return None

    child, counts = _wait_for("a batch with some of its rounds recorded", busy, 240, fleet, interval_s=0.1)
    name = child["labels"].get("prefect.worker.name")
    fleet.kill_worker(name, [int(str(child["infrastructure_pid"]).rsplit(":", 1)[-1])])
    return name, child["id"], time.time(), counts


def _assert_under_rate(arrivals: list[float], per_minute: int, burst: int) -> None:
    """In every window, no more requests than the limit's burst plus its refill over the window."""
    rate = per_minute / 60.0
    for first in range(len(arrivals)):
        for last in range(first, len(arrivals)):
            window = arrivals[last] - arrivals[first]
            assert last - first + 1 <= burst + rate * window + 1, (first, last, window)


# ---- a server outage -----------------------------------------------------------------------------------


@pytest.mark.timeout(int(OUTAGE_S) + 900)
def test_a_server_outage_mid_run_is_ridden_out_and_the_run_finishes_on_its_own(whole_fleet, tmp_path):
    """The server is stopped for OUTAGE_S while two batches run (and two wait), then started again on the
    same port and database. Nothing is failed: the dataset run (on the control worker) waits it out,
    the running batches finish their work and report when it is back, the others run after."""
    fleet = whole_fleet
    config = _config(tmp_path, search_args={"search_rounds": 3})
    parent_id = fleet.deployment_run("search-dataset/tiny-cpu", config)
    _wait_for("two batches running", lambda: sum(r["state_type"] == "RUNNING" for r in fleet.children(parent_id)) >= 2,
              300, fleet)
    fleet.stop_server()
    outage_began = time.monotonic()
    records_before = _records(config)
    time.sleep(OUTAGE_S)
    records_during = _records(config)
    fleet.start_server()
    outage = time.monotonic() - outage_began
    parent = fleet.wait_terminal(parent_id, RUN_TIMEOUT_S + 600)
    assert outage >= OUTAGE_S
    assert records_during > records_before  # the batches kept searching while the server was away
    assert parent["state_type"] == "COMPLETED", (parent["state"], fleet.logs())
    batches = fleet.children(parent_id)
    assert sorted(r["parameters"]["batch_index"] for r in batches) == [0, 1, 2, 3], \
        [(r["name"], r["state_type"]) for r in batches]  # no batch needed a second attempt
    assert all(r["state_type"] == "COMPLETED" for r in batches), [(r["name"], r["state"]) for r in batches]
    assert _records(config) == len(PROMPTS) * 3
    assert sum(f["counts"]["images_generated"] for f in _batch_files(config).values()) == len(PROMPTS) * (2 + 4 + 8)
    # The run's page caught up: its summary artifact exists and says every prompt finished.
    key = artifact_key(build_config(config), "summary")
    artifacts = fleet_post(fleet, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})
    assert artifacts and f"{len(PROMPTS)} of {len(PROMPTS)} prompts finished" in artifacts[0]["data"]


def fleet_post(fleet, path: str, payload: dict):
    from prefect_server import post_json

    return post_json(f"{fleet.api_url}{path}", payload)


# ---- a stop --------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_ctrl_c_of_a_pooled_run_cancels_its_batches_and_a_rerun_keeps_every_summary(whole_fleet, tmp_path):
    fleet = whole_fleet
    config = _config(tmp_path, search_args={"search_rounds": 3})
    began = time.time()
    run = ttsf_run(fleet, config, tmp_path, "stopped")
    try:
        def one_running_one_waiting():
            assert run.poll() is None, _output(tmp_path, "stopped")[-2000:]
            parent = _latest_dataset_run(fleet, began)
            children = fleet.children(parent["id"]) if parent else []
            states = [r["state_type"] for r in children]
            return parent if "RUNNING" in states and "SCHEDULED" in states and _records(config) >= 1 else None

        parent = _wait_for("a batch running and one waiting", one_running_one_waiting, 240, fleet)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        stopped_at = time.time()
        code = run.wait(timeout=90)
    finally:
        stop(run)
    output = _output(tmp_path, "stopped")
    assert code == 1 and "Aborted!" not in output, output[-3000:]
    error = [line for line in output.splitlines() if line.startswith("ttsf: error:")]
    assert len(error) == 1 and "stopped by Ctrl-C" in error[0] and "prompts finished" in error[0], output[-3000:]
    assert error[0].count("to resume") == 1  # the resume hint, once
    assert fleet.flow_run(parent["id"])["state_type"] == "CANCELLED"

    def all_ended():
        children = fleet.children(parent["id"])
        return children if all(r["state_type"] in STOPPED for r in children) else None

    children = _wait_for("every batch run stopped", all_ended, 60, fleet, interval_s=1)
    records = _records(config)
    time.sleep(10)  # nothing goes on writing, and nothing starts, after the stop (counted from the server)
    assert _records(config) == records
    children = fleet.children(parent["id"])
    assert all(r["state_type"] in STOPPED for r in children), [(r["name"], r["state_type"]) for r in children]
    assert not _began_running_after(fleet, children, stopped_at + 2)
    assert [r for r in children if r["state_type"] == "CANCELLED"]
    before = _batch_files(config)

    rerun = ttsf_run(fleet, config, tmp_path, "rerun")
    try:
        assert rerun.wait(timeout=RUN_TIMEOUT_S) == 0, _output(tmp_path, "rerun")[-3000:]
    finally:
        stop(rerun)
    after = _batch_files(config)
    for index, earlier in before.items():  # a re-run adds attempts; it never writes a summary down to zero
        assert after[index]["attempts"][:len(earlier["attempts"])] == earlier["attempts"]
        assert after[index]["counts"]["images_generated"] >= earlier["counts"]["images_generated"]
    assert _records(config) == len(PROMPTS) * 3


@pytest.mark.timeout(600)
def test_a_prefect_cancellation_of_a_pooled_dataset_run_cancels_its_batches(whole_fleet, tmp_path):
    """Cancel in the UI (here: its API): the control worker stops the dataset run with SIGTERM, which
    cancels every batch it submitted before it ends Cancelled."""
    fleet = whole_fleet
    config = _config(tmp_path, search_args={"search_rounds": 3})
    parent_id = fleet.deployment_run("search-dataset/tiny-cpu", config)
    _wait_for("a batch running", lambda: any(r["state_type"] == "RUNNING" for r in fleet.children(parent_id)),
              300, fleet)
    fleet_post(fleet, f"/flow_runs/{parent_id}/set_state",
               {"state": {"type": "CANCELLING", "message": "cancelled in the UI"}, "force": True})
    cancelled_at = time.time()
    parent = fleet.wait_terminal(parent_id, 120)
    assert parent["state_type"] == "CANCELLED", parent["state"]

    def all_ended():
        children = fleet.children(parent_id)
        return children if all(r["state_type"] in STOPPED for r in children) else None

    children = _wait_for("every batch run stopped", all_ended, 90, fleet, interval_s=1)
    assert [r for r in children if r["state_type"] == "CANCELLED"], [(r["name"], r["state"]) for r in children]
    records = _records(config)
    time.sleep(10)
    assert _records(config) == records  # nothing went on after the cancellation
    assert not _began_running_after(fleet, fleet.children(parent_id), cancelled_at + 2)
    log = (fleet.folder / "control.log").read_text(errors="replace")
    assert "cancelled in Prefect" in log and "cancelling every batch this run submitted" in log


# ---- deadlines -----------------------------------------------------------------------------------------


@pytest.mark.timeout(700)
def test_a_batch_timeout_counts_from_the_batch_start_and_an_overdue_batch_is_cancelled(fleet, tmp_path):
    # Eight one-prompt batches on two workers: the last ones wait tens of seconds for a worker, longer
    # than the timeout, and still finish, because the timeout counts from when each starts running.
    timeout_s = 25.0
    prompts = [f"{p}, variation {i}" for i in range(2) for p in PROMPTS]
    queued = _config(tmp_path / "queued", prompts=prompts, dispatch={"batch_timeout_s": timeout_s})
    parent = fleet.wait_terminal(fleet.deployment_run("search-dataset/tiny-cpu", queued), RUN_TIMEOUT_S)
    assert parent["state_type"] == "COMPLETED", parent["state"]
    batches = fleet.children(parent["id"])
    assert len(batches) == len(prompts) and all(r["state_type"] == "COMPLETED" for r in batches)
    waited_longer = [r for r in batches if _when(r["end_time"]) - _when(r["created"]) > timeout_s]
    assert waited_longer, "every batch ended within the timeout of its submission: the test proves nothing"

    # One batch with far more work than its 6 s allow: cancelled at its deadline (not left running),
    # submitted again (it resumes from its records), cancelled again, then named in one line. The work
    # (510 images at 256 px) is sized so that two 6 s attempts cannot finish it on any machine we run:
    # 126 images at 128 px once did, in a fresh-clone CI, and the run completed.
    overdue = _config(tmp_path / "overdue", prompts=PROMPTS[:1], search_args={"search_rounds": 8},
                      pipeline_call_args={"height": 256, "width": 256, "num_inference_steps": 4},
                      dispatch={"batch_timeout_s": 6.0, "max_attempts": 2})
    parent = fleet.wait_terminal(fleet.deployment_run("search-dataset/tiny-cpu", overdue), RUN_TIMEOUT_S)
    assert parent["state_type"] == "FAILED", parent["state"]
    assert "batch 0 (prompt 0) timed out 2 times (dispatch.max_attempts 2)" in parent["state"]["message"]
    attempts = fleet.children(parent["id"])
    assert len(attempts) == 2 and all(r["state_type"] == "CANCELLED" for r in attempts), \
        [(r["name"], r["state"]) for r in attempts]
    for attempt in attempts:  # each ran at least its timeout, counted from its own start
        assert _when(attempt["end_time"]) - _when(attempt["start_time"]) >= 6.0 - 1
