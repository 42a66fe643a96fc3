"""The Prefect orchestration: batches, records, artifacts, report, rate limits, resume, overlap."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pandas as pd
import pytest

from conftest import small_config
from fake_gemini import FakeGeminiServer
from flows.search_dataset import search_dataset
from tasks import runtime
from ttsf_core.engine import jobs
from ttsf_core.storage.files import png_bytes
from ttsf_core.storage.records import RunLayout
from ttsf_core.search import build_strategy
from ttsf_core.verifiers import imagestats, registry
from ttsf_core.resolve import resolve

pytestmark = pytest.mark.usefixtures("prefect_harness")
PROMPTS = ["a red lighthouse on a cliff at dawn", "a bowl of ramen, studio photo", "an owl reading a map"]


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")


def _config(tmp_path, server=None, **overrides):
    data = tmp_path / "prompts.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(PROMPTS) + "\n")
    verifier = {"name": "imagestats"}
    if server is not None:
        verifier = {"name": "gemini", "options": {"base_url": server.url}, "max_concurrency": 4}
    fields = {"verifier_args": verifier, "search_args": {"search_rounds": 2}, "prompts_per_batch": 2,
              "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"},
              "verifier_retry_backoff_s": 0.05}
    return small_config(tmp_path, **(fields | overrides))


def _report(run_dir) -> pd.DataFrame:
    frame = pd.read_csv(f"{run_dir}/report/report.csv")
    return frame.drop(columns=["best_img_path"])


def _read_artifact(key: str, flow_run_id=None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    run = ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id is not None else None
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=run))
    return found[0] if found else None


def test_two_batches_write_records_artifacts_and_report(tmp_path):
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server)
        result = search_dataset(config)
    run_dir = result["run_dir"]
    assert result["counts"]["images_generated"] == result["counts"]["images_graded"] == 3 * (2 + 4)
    assert sorted(p.name for p in (tmp_path / "output").rglob("round_*.json")) == ["round_01.json"] * 3 + [
        "round_02.json"] * 3
    frame = _report(run_dir)
    assert list(frame["search_round"]) == [1, 2] * 3 and list(frame["num_noises"]) == [2, 4] * 3
    for name in ("report.parquet", "report.html", "scaling_curve.png", "best_images.zip"):
        assert (RunLayout(resolve(config)).run_dir / "report" / name).is_file()
    assert server.call_count == 3 * (2 + 4)
    key = f"ttsf-{resolve(config).identity_hash}"
    batches = _read_artifact(f"{key}-batches")
    rows = json.loads(batches.data)
    assert batches.type == "table" and [row["batch"] for row in rows] == [0, 1]  # one table for the run
    assert [row["prompts finished"] for row in rows] == ["2 of 2", "1 of 1"]
    progress = _read_artifact(f"{key}-progress")
    assert progress.type == "progress" and float(progress.data) == pytest.approx(100.0)
    assert progress.description.startswith("3 of 3 prompts finished")
    status = _read_artifact(f"{key}-status")
    assert "**Prompts finished: 3 of 3**" in status.data and "| images generated | 18 |" in status.data
    summary = _read_artifact(f"{key}-summary")
    assert summary.type == "markdown" and str(RunLayout(resolve(config)).run_dir.resolve()) in summary.data
    best = _read_artifact(f"{key}-best")
    assert best.data.count("data:image/jpeg;base64,") == 3 * 2  # every prompt's two rounds, as pictures


def _batch_runs() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["search-batch"]))))


def test_a_finished_run_starts_no_batch_and_asks_nothing(tmp_path):
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server, search_args={"search_rounds": 1})
        search_dataset(config)
        calls, batches = server.call_count, _batch_runs()
        again = search_dataset(config)
        assert (server.call_count, _batch_runs()) == (calls, batches)
        assert again["counts"]["images_generated"] == again["counts"]["images_graded"] == 0
        assert again["counts"]["rounds_skipped"] == len(PROMPTS)


def test_a_429_storm_waits_retry_after_and_selects_as_a_clean_run(tmp_path):
    storm = [(429, {"Retry-After": "1"})] * 4
    with FakeGeminiServer(failures=storm) as server:
        stormy_dir = search_dataset(_config(tmp_path / "storm", server))["run_dir"]
        requests = server.requests
    with FakeGeminiServer() as server:
        clean_dir = search_dataset(_config(tmp_path / "clean", server))["run_dir"]
    pd.testing.assert_frame_equal(_report(stormy_dir), _report(clean_dir))
    refused = [r for r in requests if r.status == 429]
    assert len(refused) == 4
    for refusal in refused:
        retry = min((r for r in requests if r.image_sha256 == refusal.image_sha256 and r.arrived_at > refusal.arrived_at),
                    key=lambda r: r.arrived_at)
        assert retry.arrived_at - refusal.answered_at >= 1.0


def _image_sha(config, prompt: str, search_round: int, index: int) -> str:
    """The sha256 of the PNG the verifier is sent for one candidate (generated in its round's batch)."""
    candidates = build_strategy(resolve(config)).plan_round(prompt, search_round, [])
    image = runtime.generator_for(config).generate(prompt, candidates)[index]
    return hashlib.sha256(png_bytes(image)).hexdigest()


def test_a_failed_batch_resumes_without_regenerating_or_reverifying(tmp_path):
    # The first request fails with a 503 and no retry is allowed: its batch fails, the other finishes.
    with FakeGeminiServer(failures=[(503, {})]) as server:
        config = _config(tmp_path / "resumed", server, verifier_retries=0)
        with pytest.raises(RuntimeError, match=r"batches \[[01]\] failed .*RetryableVerifierError.*503"):
            search_dataset(config)
        first_run = server.requests
    graded = {r.image_sha256 for r in first_run if r.status == 200}
    refused = [r.image_sha256 for r in first_run if r.status == 503]
    with FakeGeminiServer() as server:
        resumed = search_dataset(_config(tmp_path / "resumed", server))
        asked_again = [r.image_sha256 for r in server.requests]
    assert resumed["counts"]["images_generated"] == 0  # zero images regenerated
    assert len(graded) == len([r for r in first_run if r.status == 200])  # nothing asked twice
    assert asked_again == refused  # only the image that never got a grade
    with FakeGeminiServer() as server:
        clean_dir = search_dataset(_config(tmp_path / "clean", server))["run_dir"]
    pd.testing.assert_frame_equal(_report(resumed["run_dir"]), _report(clean_dir))


def test_an_image_never_answered_validly_is_recorded_ungradeable_and_the_run_finishes(tmp_path):
    with FakeGeminiServer() as probe:
        bad_sha = _image_sha(_config(tmp_path, probe), PROMPTS[1], 2, 1)
    with FakeGeminiServer(malformed={bad_sha: "not_json"}) as server:
        config = _config(tmp_path, server, verifier_invalid_retries=2)
        result = search_dataset(config)
        asked = [r.image_sha256 for r in server.requests]
    assert asked.count(bad_sha) == 3  # 1 + verifier_invalid_retries, then it is recorded ungradeable
    assert result["counts"]["images_ungradeable"] == 1 and result["counts"]["retries"] == 2
    frame = _report(result["run_dir"])
    assert frame["ungradeable"].tolist() == [0, 0, 0, 1, 0, 0]


def test_a_wrong_key_fails_before_any_image_or_request(tmp_path):
    with FakeGeminiServer(api_key="the-right-key") as server:
        with pytest.raises(Exception, match="GEMINI_API_KEY .*received a key Gemini rejects"):
            search_dataset(_config(tmp_path, server, search_args={"search_rounds": 1}))
        assert server.call_count == 0 and len(server.metadata_requests) == 1  # only the key check
    assert not list((tmp_path / "output").rglob("*.png"))


def test_verifier_rpm_is_a_shared_global_concurrency_limit(tmp_path):
    from prefect.client.orchestration import get_client

    config = _config(tmp_path, None, verifier_rpm=600, search_args={"search_rounds": 1})
    search_dataset(config)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("ttsf-verifier-imagestats-rpm")
    assert limit.active and limit.slot_decay_per_second == pytest.approx(10.0) and limit.limit == 60


class SleepyVerifier:
    """imagestats grades after a fixed delay, with every grading interval recorded."""

    name = "sleepy"
    delay_s = 0.6
    intervals: list[tuple[float, float]] = []

    def __init__(self, args):
        self.inner = imagestats.ImageStatsVerifier(args.model_copy(update={"name": "imagestats"}))

    def score(self, prompt, images):
        start = time.monotonic()
        time.sleep(self.delay_s)
        grades = self.inner.score(prompt, images)
        SleepyVerifier.intervals.append((start, time.monotonic()))
        return grades


def test_generation_overlaps_verification(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN_VERIFIERS, "sleepy", f"{__name__}:SleepyVerifier")
    generating: list[tuple[float, float]] = []
    real_generate = jobs.generate

    def timed_generate(*args, **kwargs):
        start = time.monotonic()
        result = real_generate(*args, **kwargs)
        generating.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(jobs, "generate", timed_generate)
    SleepyVerifier.intervals = []
    config = _config(tmp_path, None, verifier_args={"name": "sleepy"}, search_args={"search_rounds": 3},
                     prompts_per_batch=3)
    search_dataset(config)
    wall = max(end for _, end in SleepyVerifier.intervals) - min(start for start, _ in generating)
    generation = sum(end - start for start, end in generating)
    verification = len(SleepyVerifier.intervals) * SleepyVerifier.delay_s  # each call grades a round's chunk
    # Grading of one round ran while a later round was being generated...
    assert any(v_start < g_end and g_start < v_end
               for v_start, v_end in SleepyVerifier.intervals for g_start, g_end in generating)
    # ...so the whole takes well under generating then grading, round after round.
    assert wall < 0.75 * (generation + verification)


def test_a_budget_ends_the_flow_completed_with_budget_reached_and_costs_shown(tmp_path):
    from prefect.context import FlowRunContext  # noqa: F401 - the flow runs under the session's harness

    with FakeGeminiServer() as server:
        config = _config(tmp_path, server, budget={"max_verifier_requests": 10})
        state = search_dataset(config, return_state=True)
        asked = server.call_count
        billed = [r.usage for r in server.requests if r.usage]
    assert state.is_completed(), state.message
    # Rounds in order over both batches: every prompt's round 1 (2 each: 6), then round 2 (4 each) fits once.
    assert asked == len(billed) == 10
    counts = state.result()["counts"]
    assert (counts["verifier_requests"], counts["rounds_over_budget"], counts["prompts_over_budget"]) == (10, 2, 2)
    key = f"ttsf-{resolve(config).identity_hash}"  # the same search as other tests here: this run's own artifacts
    status = _read_artifact(f"{key}-status", state.state_details.flow_run_id).data
    assert "budget reached" in status and "10 of 10 requests" in status and "cost so far" in status
    summary = _read_artifact(f"{key}-summary", state.state_details.flow_run_id).data
    assert "**Budget reached**" in summary and "Grading cost: 10 verifier requests" in summary


def test_ttsf_run_builds_the_verifier_once_checks_access_once_and_a_rerun_does_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ttsf.cli import main
    from ttsf_core.verifiers.gemini import GeminiVerifier

    built = []
    construct = GeminiVerifier.__init__
    monkeypatch.setattr(GeminiVerifier, "__init__", lambda self, *a, **k: (built.append(1), construct(self, *a, **k))[1])
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server, search_args={"search_rounds": 2})
        path = tmp_path / "config.json"
        path.write_text(config.model_dump_json())
        first = CliRunner().invoke(main, ["run", "--config", str(path), "--executor", "prefect"])
        assert first.exit_code == 0, first.output
        assert "generated 18 images and graded 18" in first.output
        # The CLI prepared the run; the flow and its batches reused that verifier and that access check.
        assert (len(built), len(server.metadata_requests), server.call_count) == (1, 1, 18)
        again = CliRunner().invoke(main, ["run", "--config", str(path), "--executor", "prefect"])
        assert again.exit_code == 0, again.output
        assert "(0 images generated, 0 graded)" in again.output and server.call_count == 18


def test_an_adaptive_run_decides_its_waves_in_the_flow_as_the_direct_runner_does(tmp_path):
    """Adaptive allocation is a stage of the dataset run: each wave decided from the records, its batches
    run the rounds it gives; the same records and decisions as `--executor threads`, and the run's
    status shows the NFE budget spent and left and the prompts still searched."""
    from ttsf_core.usecases import runner
    from ttsf_core.allocation import ALLOCATION_FILENAME
    from ttsf_core.storage.records import iter_round_records

    budget = {"max_nfe": 100, "allocation": "adaptive"}
    flowed = _config(tmp_path / "flow", search_args={"search_rounds": 4}, budget=budget)
    state = search_dataset(flowed, return_state=True)
    assert state.is_completed(), state.message
    direct = _config(tmp_path / "direct", search_args={"search_rounds": 4}, budget=budget)
    runner.run(direct)[1].raise_first()

    def files(config):
        run_dir = RunLayout(resolve(config)).run_dir
        found = {str(path.relative_to(run_dir)): path.read_bytes() for path, _ in iter_round_records(run_dir)}
        return found | {ALLOCATION_FILENAME: (run_dir / ALLOCATION_FILENAME).read_bytes()}

    assert files(flowed) == files(direct)
    decisions = json.loads(files(flowed)[ALLOCATION_FILENAME])
    assert max(d["wave"] for d in decisions["rounds"].values()) >= 3  # the flow ran several waves
    spent = sum(d["nfe"] for d in decisions["rounds"].values())
    status = _read_artifact(f"ttsf-{resolve(flowed).identity_hash}-status", state.state_details.flow_run_id).data
    assert f"{spent:,} of 100 NFEs ({100 - spent:,} left)" in status
    assert "prompts still searched (adaptive allocation) | 0 |" in status
