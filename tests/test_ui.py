"""What a person watching a run sees in the Prefect UI, checked in a real browser (headless Chromium
driven by Playwright), against a real `prefect server`.

A run of two batches is made to rate-limit twice in its first batch and to fail in its second; the
pages must then show, as rendered: the true progress, an exact seed, pictures that loaded, the failed
batch's error and the 429 count. Screenshots go to the test's folder (and to TTSF_SCREENSHOTS, when
set, e.g. docs/screenshots). A second test kills a run mid-batch and retries it from the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import small_config
from fake_gemini import FakeGeminiServer, FaultSchedule
from prefect_server import PREFECT, REPO, post_json, running_server
from ttsf_core.storage.records import iter_round_records
from ttsf_core.usecases.runner import prepare_run
from ttsf_core.resolve import resolve

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPTS = ["a red lighthouse on a cliff at dawn", "an owl reading a map by candlelight"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("prefect")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (the README's `bash scripts/test.sh` installs it)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _config(tmp_path: Path, url: str, **overrides):
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(PROMPTS) + "\n")
    fields = {"verifier_args": {"name": "gemini", "options": {"base_url": url}, "max_concurrency": 4},
              "search_args": {"search_rounds": 2}, "prompts_per_batch": 1, "verifier_retries": 1,
              "verifier_retry_backoff_s": 0.05, "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"}}
    return small_config(tmp_path, **(fields | overrides))


def _ttsf_run(config, env: dict, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json())
    return subprocess.Popen([sys.executable, "-m", "ttsf.cli", "run", "--config", str(path)], cwd=REPO,
                            env={**env, "GEMINI_API_KEY": "test-key"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _flow_runs(api_url: str, flow_name: str) -> list[dict]:
    return post_json(f"{api_url}/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_ASC"})


def _artifact(api_url: str, key: str) -> dict:
    found = post_json(f"{api_url}/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"})
    assert found, f"no artifact {key}"
    return found[0]


def _page(browser, url: str, shot: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="networkidle", timeout=60_000)
    page.wait_for_timeout(1500)  # the UI renders after its own API calls settle
    page.screenshot(path=str(shot), full_page=True)
    target = os.environ.get("TTSF_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)
    return page


def test_the_ui_shows_progress_seeds_pictures_failures_and_rate_limits(server, browser, tmp_path):
    api_url, env, _ = server
    ui = api_url.removesuffix("/api")
    # Batch 0 (prompt 0: 2 + 4 images) is rate limited twice; batch 1 (prompt 1) always gets a 503.
    faults = FaultSchedule(by_call={0: "429", 1: "429", **{call: "503" for call in range(8, 80)}}, retry_after_s=1)
    with FakeGeminiServer(faults=faults) as fake:
        config = _config(tmp_path, fake.url)
        run = _ttsf_run(config, env, tmp_path)
        out, err = run.communicate(timeout=300)
    assert run.returncode == 1, err.decode()[-3000:]
    assert "ttsf: error:" in err.decode() and "503" in err.decode()
    # No --executor: the default finds the server PREFECT_API_URL names and orchestrates through it.
    assert f"ttsf: orchestrated by the Prefect server at {api_url} (PREFECT_API_URL in the environment)" in err.decode()
    key = f"ttsf-{resolve(config).identity_hash}"
    records = [r for _, r in iter_round_records(prepare_run(config).layout.run_dir)]
    assert {r.prompt_index for r in records} == {0}
    seed = str(records[0].best_noise_seed)
    assert int(seed) > 2**53  # a seed JavaScript would round, were it a number

    parent = _flow_runs(api_url, "search-dataset")[-1]
    page = _page(browser, f"{ui}/runs/flow-run/{parent['id']}", tmp_path / "ui-run.png")
    page.get_by_text("Artifacts", exact=True).first.click()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(tmp_path / "ui-run-artifacts.png"), full_page=True)
    assert "prompts" in page.inner_text("body")

    status = _page(browser, f"{ui}/artifacts/artifact/{_artifact(api_url, key + '-status')['id']}", tmp_path / "ui-status.png")
    text = status.inner_text("body")
    assert "Prompts finished: 1 of 2" in text and "run ended with 1 failed batch" in text
    counts = dict(row.inner_text().split("\t") for row in status.locator("table tbody tr").all())
    assert counts["verifier requests rate limited (429)"].strip() == "2"  # the two 429s, counted
    assert counts["batches failed"].strip() == "1"

    batches = _page(browser, f"{ui}/artifacts/artifact/{_artifact(api_url, key + '-batches')['id']}", tmp_path / "ui-batches.png")
    text = batches.inner_text("body")
    assert "failed" in text and "503" in text and "RetryableVerifierError" in text

    gallery = _page(browser, f"{ui}/artifacts/artifact/{_artifact(api_url, key + '-best')['id']}", tmp_path / "ui-best.png")
    loaded = gallery.eval_on_selector_all("img", "images => images.filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded >= 2  # prompt 0's two rounds, as pictures
    assert seed in gallery.inner_text("body")  # exact, not rounded

    progress = _artifact(api_url, key + "-progress")
    assert float(progress["data"]) == pytest.approx(50.0) and progress["description"].startswith("1 of 2 prompts")
    # ttsf run sent its flow and task logs to the server: the 429 waits, at WARNING, with the real wait.
    logs = post_json(f"{api_url}/logs/filter", {"logs": {"level": {"ge_": 30}}, "limit": 200})
    assert any("rate limited" in log["message"] and "the server asked for 1 s" in log["message"] for log in logs)


def test_a_retry_after_a_crash_leaves_nothing_running_and_each_batch_its_own_run(server, tmp_path, tiny_flux_dir):
    api_url, env, _ = server
    with FakeGeminiServer(latency_s=0.3) as fake:
        config = _config(tmp_path, fake.url)
        run = _ttsf_run(config, env, tmp_path)
        layout = prepare_run(config).layout
        deadline = time.monotonic() + 240
        for _ in range(2400):  # until batch 1 is under way: prompt 0 recorded, prompt 1 not yet
            if all(layout.record_path(PROMPTS[0], r).is_file() for r in (1, 2)) and fake.call_count > 8:
                break
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        parent = [r for r in _flow_runs(api_url, "search-dataset") if r["state_type"] == "RUNNING"][-1]
        # What Prefect's zombie-run automation (docs/deployment.md) or "Change state" in the UI does to a
        # run whose process died: it becomes Crashed, and so can be retried.
        post_json(f"{api_url}/flow_runs/{parent['id']}/set_state",
                  {"state": {"type": "CRASHED", "message": "its process was killed"}, "force": True})
        retry = subprocess.run(PREFECT + ["flow-run", "retry", parent["id"], "--entrypoint",
                                          "flows/search_dataset.py:search_dataset"], cwd=REPO, timeout=300,
                               env={**env, "GEMINI_API_KEY": "test-key"}, capture_output=True, text=True)
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    children = post_json(f"{api_url}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent["id"]]}}})
    by_state = sorted((child["name"], child["state_type"]) for child in children)
    assert by_state == [("batch-0", "COMPLETED"), ("batch-1", "COMPLETED"), ("batch-1", "CRASHED")], by_state
    for child in children:
        assert child["name"] == f"batch-{child['parameters']['batch_index']}"
    unfinished = post_json(f"{api_url}/task_runs/filter", {"task_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}})
    assert [t for t in unfinished if t["flow_run_id"] in {c["id"] for c in children} | {parent["id"]}] == []
    assert json.loads(json.dumps(_flow_runs(api_url, "search-dataset")[-1]))["state_type"] == "COMPLETED"
