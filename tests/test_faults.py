"""A search under a verifier that fails in every way the real one can, and under SIGKILLs.

The stand-in Gemini (tests/fake_gemini.py, real HTTP on 127.0.0.1, the real google-genai client)
injects a seeded schedule of faults per image; the records of a faulty run must equal a fault-free
run's, byte for byte, and a run killed at any point must resume with nothing paid for twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from conftest import small_config
from fake_gemini import FaultSchedule, FakeGeminiServer
from ttsf_core.resolve import resolve
from ttsf_core.usecases import runner
from ttsf_core.config import build_config
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.storage.records import iter_round_records
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import VerifierConfigError

PROMPTS = ["a red lighthouse on a cliff at dawn", "a bowl of ramen, studio photo", "an owl reading a map"]
# Faults the next request may not repeat (max_faults_per_image caps them per image).
TRANSIENT = ("429", "500", "503", "hang", "drip", "cut", "reset", "html", "not_json_text", "missing_fields",
             "out_of_range", "nan", "string_score", "empty_candidates")


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")


def _config(tmp_path: Path, url: str, rounds: int = 3, **overrides):
    data = tmp_path / "prompts.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(PROMPTS) + "\n")
    verifier = {"name": "gemini", "options": {"base_url": url}, "max_concurrency": 4, "request_timeout_s": 1.5}
    fields = {"verifier_args": verifier, "search_args": {"search_rounds": rounds},
              "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"},
              "verifier_retry_backoff_s": 0.05, "verifier_retries": 6, "verifier_invalid_retries": 3}
    return small_config(tmp_path, **(fields | overrides))


def _run(config, pipe):
    prepared, outcome = runner.run(config, generator=CandidateGenerator(pipe, resolve(config)))
    outcome.raise_first()
    return prepared, outcome


def _records(config) -> dict[tuple[int, int], bytes]:
    run_dir = runner.prepare_run(config).layout.run_dir
    return {(r.prompt_index, r.search_round): path.read_bytes() for path, r in iter_round_records(run_dir)}


def _selection(records: dict[tuple[int, int], bytes]) -> dict:
    """Round records without what grading cost (usage, cost): what was generated, graded and chosen."""
    found = {}
    for key, blob in records.items():
        data = json.loads(blob)
        for candidate in data["candidates"]:
            candidate.pop("usage"), candidate.pop("cost_usd")
        found[key] = data
    return found


def _billed_requests(records: dict[tuple[int, int], bytes]) -> int:
    """Billed requests in the records, each image once (a carried pivot appears in two rounds)."""
    seen = {}
    for (prompt, _), blob in records.items():
        for candidate in json.loads(blob)["candidates"]:
            seen[(prompt, candidate["image_sha256"])] = sum(entry["requests"] for entry in candidate["usage"])
    return sum(seen.values())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_pipe):
    """A fault-free run: the records every faulty or killed run must end up with."""
    folder = tmp_path_factory.mktemp("reference")
    os.environ["GEMINI_API_KEY"] = "test-key"
    with FakeGeminiServer() as server:
        config = _config(folder, server.url)
        _run(config, tiny_pipe)
        requests = server.call_count
    return _records(config), requests


def test_a_run_under_a_mixed_fault_schedule_equals_a_fault_free_one(tmp_path, tiny_pipe, reference):
    records, clean_requests = reference
    schedule = FaultSchedule(seed=11, rate=0.3, kinds=TRANSIENT, max_faults_per_image=3, retry_after_s=1.0,
                             hang_s=3.0, drip_interval_s=0.25, drip_s=3.0)
    with FakeGeminiServer(faults=schedule) as server:
        config = _config(tmp_path, server.url)
        _, outcome = _run(config, tiny_pipe)
        served = server.requests
        injected = Counter(r.fault for r in served if r.fault)
        requests = server.call_count
    # The same selection; only what grading cost differs (answers that did not fit were billed too).
    assert _selection(_records(config)) == _selection(records)
    assert outcome.counts.images_ungradeable == 0
    assert sum(injected.values()) == requests - clean_requests  # each fault cost exactly one more request
    assert outcome.counts.rate_limited == injected["429"]
    # Every answer the client received was counted once, on its image: the invalid ones with the good one.
    received = [r for r in served if r.usage is not None and r.fault != "drip"]  # a drip outlives the deadline
    assert _billed_requests(_records(config)) == outcome.counts.verifier_requests == len(received)
    assert len(injected) >= 8  # most kinds were drawn
    print(f"\nfaults injected: {sum(injected.values())} of {requests} requests ({dict(injected)}); "
          f"retries {outcome.counts.retries}, waited {outcome.counts.retry_wait_s:.1f} s")


@pytest.mark.parametrize("kind", ["safety", "blocked"])
def test_an_image_gemini_always_blocks_is_recorded_ungradeable(kind, tmp_path, tiny_pipe, reference):
    with FakeGeminiServer() as probe:
        config = _config(tmp_path / "probe", probe.url, rounds=1)
        _run(config, tiny_pipe)
        victim = probe.requests[0].image_sha256
    with FakeGeminiServer(faults=FaultSchedule(persistent={victim: kind})) as server:
        config = _config(tmp_path, server.url, rounds=1)
        _, outcome = _run(config, tiny_pipe)
        asked = [r.image_sha256 for r in server.requests]
    assert asked.count(victim) == 1  # a safety block is final: never asked again
    assert outcome.counts.images_ungradeable == 1 and len(outcome.records) == len(PROMPTS)


@pytest.mark.parametrize("status", [401, 403, 400])
def test_a_rejected_key_stops_before_any_model_loads(status, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with FakeGeminiServer(api_key="the-right-key", wrong_key_status=status) as server:
        with pytest.raises(VerifierConfigError, match="GEMINI_API_KEY .*received a key Gemini rejects"):
            runner.prepare_run(_config(tmp_path, server.url))
        assert server.call_count == 0 and len(server.metadata_requests) == 1


def test_a_key_rejected_mid_run_stops_the_batch_at_once(tmp_path, tiny_pipe):
    # A key revoked mid-run: Gemini refuses every request from then on (a refusal of one request
    # alone left the bound below to a race: an answer to another request could free a slot before
    # the refusal was read, and one more request went out, rightly, still unaware of it).
    schedule = FaultSchedule(by_call={call: "403" for call in range(200)})
    with FakeGeminiServer(faults=schedule) as server:
        config = _config(tmp_path, server.url)
        generator = CandidateGenerator(tiny_pipe, resolve(config))
        _, outcome = runner.run(config, generator=generator)
        requests = server.call_count
    assert outcome.failures and isinstance(outcome.failures[0].error, VerifierConfigError)
    assert requests <= 4  # the refused request and those already in flight with it (max_concurrency)
    assert generator.counts.images < len(PROMPTS) * 14  # no image was made after the refusal


# ---- SIGKILL, then one resume ------------------------------------------------------------------


def _fake_server_process(latency_s: float) -> tuple[subprocess.Popen, str]:
    script = Path(__file__).with_name("fake_gemini.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", "--latency_s", str(latency_s)],
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def _requests(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_fake/requests", timeout=10) as answer:
        return json.loads(answer.read())["requests"]


def _stored(config) -> tuple[int, int]:
    store = Store(resolve(config))
    return len(list(store.images_dir.rglob("*.png"))), len(list(store.grades_dir.rglob("*/*.json")))


def _ttsf(config_path: Path, executor: str) -> subprocess.Popen:
    """`ttsf run` in a process group of its own. With --executor prefect it starts Prefect's temporary API
    server (a uvicorn subprocess, prefect/server/api/server.py SubprocessASGIServer, stopped by an atexit
    hook): a SIGKILL of `ttsf` alone never runs that hook and leaves the server running, reparented to 1.
    The crash simulated here is of the whole run, as when the machine or the terminal's session dies, so
    the kill goes to the group (_kill_group)."""
    env = {**os.environ, "GEMINI_API_KEY": "test-key", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ttsf.cli", "run", "--config", str(config_path),
                             "--executor", executor], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process's group (it leads it: start_new_session), then reap the leader."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone: every member has exited
        pass
    process.wait(timeout=30)


def _kill_when(process: subprocess.Popen, config, images: int = 0, grades: int = 0, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s * 20)):  # bounded by count and by time
        stored_images, stored_grades = _stored(config)
        if stored_images >= images and stored_grades >= grades:
            break
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never got that far"
        time.sleep(0.05)
    _kill_group(process)


@pytest.mark.slow
@pytest.mark.parametrize("executor,images,grades", [
    ("threads", 5, 0),  # during generation, before any grade
    ("threads", 14, 6),  # during grading
    ("threads", 30, 30),  # with rounds recorded
    ("prefect", 12, 4),
])
def test_a_killed_run_resumes_with_nothing_paid_twice(executor, images, grades, tmp_path, tiny_flux_dir, reference):
    records, _ = reference
    server, url = _fake_server_process(latency_s=0.05)
    runs: list[subprocess.Popen] = []
    try:
        config = _config(tmp_path, url)
        config_path = tmp_path / "config.json"
        config_path.write_text(config.model_dump_json())
        runs.append(_ttsf(config_path, executor))
        _kill_when(runs[-1], config, images=images, grades=grades)
        images_kept, grades_kept = _stored(config)
        asked_before = len(_requests(url))
        runs.append(resumed := _ttsf(config_path, executor))
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err.decode()[-2000:]
        total_images, total_grades = _stored(config)
        asked_again = _requests(url)[asked_before:]
    finally:
        for run in runs:  # whatever a failed or timed-out attempt left of its group
            _kill_group(run)
        server.kill()
        server.wait(timeout=10)
    assert _records(config) == records
    text = out.decode()
    assert f"generated {total_images - images_kept} images and graded {total_grades - grades_kept}" in text, text
    assert len(asked_again) == total_grades - grades_kept  # only images without a stored grade are asked
    assert not list(tmp_path.rglob("*.tmp"))  # leftovers of killed writes were swept


@pytest.mark.parametrize("kind", TRANSIENT)
def test_every_transient_fault_kind_alone_is_survived(kind, tmp_path, tiny_pipe):
    with FakeGeminiServer() as server:
        clean = _config(tmp_path / "clean", server.url, rounds=1)
        _run(clean, tiny_pipe)
    schedule = FaultSchedule(rate=1.0, kinds=(kind,), max_faults_per_image=1, retry_after_s=1.0, hang_s=3.0,
                             drip_interval_s=0.25, drip_s=3.0)
    with FakeGeminiServer(faults=schedule) as server:
        config = _config(tmp_path / "faulty", server.url, rounds=1)
        _, outcome = _run(config, tiny_pipe)
        faults = [r.fault for r in server.requests]
    assert faults.count(kind) == len(PROMPTS) * 2  # every image's first request failed that way...
    assert _selection(_records(config)) == _selection(_records(clean))  # ...and the search came out the same
    # An answer that came back unusable was billed: its image carries both requests, others one.
    billed = 2 if kind in ("not_json_text", "missing_fields", "out_of_range", "nan", "string_score",
                           "empty_candidates") else 1
    assert _billed_requests(_records(config)) == billed * len(PROMPTS) * 2
    assert outcome.counts.retries >= 1 and outcome.counts.images_ungradeable == 0
