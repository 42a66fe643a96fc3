"""Grading against today's Gemini: the default model, a model Google shut down, each grade's model
version and tokens, what a run costs, budgets that stop cleanly, and Gemini 3's settings on the wire.

Everything goes through the real google-genai client to the stand-in (tests/fake_gemini.py, real HTTP
on 127.0.0.1), which answers as the service does today: usageMetadata and modelVersion on every answer,
404 for a model Google no longer serves, 400 for a thinking level a model does not take.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

import fake_gemini
from conftest import small_config
from fake_gemini import FakeGeminiServer, FakeModel, FaultSchedule, thinking_config
from ttsf.cli import main
from ttsf_core.resolve import resolve
from ttsf_core.usecases import runner
from ttsf_core.costs import ModelPrice, PriceTable, price_table, shipped_prices
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.engine.grading import GradeJob, grade_once
from ttsf_core.storage.records import iter_round_records
from ttsf_core.usecases.report import cost_lines, cost_summary, report_dataframe, summary_markdown
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import Usage, VerifierConfigError
from ttsf_core.verifiers.gemini_models import DEFAULT_GEMINI_MODEL

pytestmark = pytest.mark.timeout(300)
PROMPTS = ["a red lighthouse on a cliff at dawn", "a bowl of ramen, studio photo"]
# Prices of our own, so that costs do not depend on the day the test runs (the shipped table's change).
PRICE = {"input_per_1m_usd": 1.25, "output_per_1m_usd": 5.0}


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)


def _config(tmp_path: Path, url: str, rounds: int = 3, prompts: list[str] = PROMPTS, **verifier):
    data = tmp_path / "prompts.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(prompts) + "\n")
    fields = {"verifier_args": {"name": "gemini", "options": {"base_url": url}, "max_concurrency": 4,
                                "request_timeout_s": 5.0, **verifier},
              "search_args": {"search_rounds": rounds},
              "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"},
              "verifier_retry_backoff_s": 0.05,
              "prices": {model: PRICE for model in (DEFAULT_GEMINI_MODEL, "gemini-3.7-flash", "gemini-3.6-flash",
                                                     "gemini-3.5-flash-lite", "gemini-flash-latest")}}
    return small_config(tmp_path, **fields)


def _run(config, pipe):
    return runner.run(config, generator=CandidateGenerator(pipe, resolve(config)))


def _billed(server: FakeGeminiServer) -> list[dict]:
    return [record.usage for record in server.requests if record.usage is not None]


def _dollars(usage: list[dict]) -> float:
    return sum(u["promptTokenCount"] * PRICE["input_per_1m_usd"]
               + (u["candidatesTokenCount"] + u.get("thoughtsTokenCount", 0)) * PRICE["output_per_1m_usd"]
               for u in usage) / 1e6


# ----- the price table -------------------------------------------------------------------------


def test_prices_are_dated_matched_by_model_version_and_overridden():
    table = price_table()
    assert table.find("gemini-3.8-flash", date(2026, 12, 31)).input_per_1m_usd == 0.75
    assert table.find("gemini-3.8-flash", date(2027, 1, 1)).input_per_1m_usd == 1.50  # the announced rise
    assert table.find("gemini-3.8-flash-002", date(2026, 12, 3)).model == "gemini-3.8-flash"
    assert table.find("gemini-3.5-flash-lite", date(2026, 12, 3)).model == "gemini-3.5-flash-lite"  # not 3.5-flash
    assert table.find("gpt-4o-mini", date(2026, 12, 3)) is None
    own = price_table({"gemini-3.8-flash": {"input_per_1m_usd": 0.1, "output_per_1m_usd": 0.2}})
    assert own.find("gemini-3.8-flash", date(2027, 6, 1)).input_per_1m_usd == 0.1
    usage = Usage(model="gemini-3.8-flash", prompt_tokens=1_000_000, thought_tokens=500_000, output_tokens=500_000)
    assert table.cost([usage], date(2026, 12, 3)) == pytest.approx(0.75 + 3.75)  # thoughts billed as output
    assert table.cost([usage], date(2026, 12, 3), batch=True) == pytest.approx((0.75 + 3.75) / 2)
    answered_by_alias = Usage(model="gemini-2.5-flash", model_version="gemini-3.5-flash-lite", prompt_tokens=10**6)
    assert table.cost([answered_by_alias], date(2026, 12, 3)) == pytest.approx(0.30)  # billed as what answered
    assert table.cost([Usage(model="gpt-4o-mini", prompt_tokens=1)]) is None  # never a guessed price


def test_every_shipped_price_says_where_and_when_it_was_read():
    for price in shipped_prices():
        assert price.source.startswith("https://") and price.checked is not None, price
    assert isinstance(PriceTable(shipped_prices()).find(DEFAULT_GEMINI_MODEL, date.today()), ModelPrice)


# ----- the default model, and models Google shut down ------------------------------------------


def test_the_default_model_grades_and_every_grade_knows_its_grader(tmp_path, tiny_pipe):
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server.url, rounds=2)
        _, outcome = _run(config, tiny_pipe)
        usage = _billed(server)
    outcome.raise_first()
    assert {r.model for r in server.requests} == {DEFAULT_GEMINI_MODEL}
    candidates = [c for _, record in iter_round_records(runner.prepare_run(config).layout.run_dir)
                  for c in record.candidates]
    assert len(candidates) == len(usage) == 2 * (2 + 4)
    for candidate in candidates:
        [entry] = candidate.usage
        assert (entry.model, entry.model_version, entry.requests) == (DEFAULT_GEMINI_MODEL, DEFAULT_GEMINI_MODEL, 1)
        assert entry.prompt_tokens > entry.image_tokens == 1120 and entry.thought_tokens == 96  # LOW thinking
        assert candidate.cost_usd == pytest.approx(_dollars([{
            "promptTokenCount": entry.prompt_tokens, "candidatesTokenCount": entry.output_tokens,
            "thoughtsTokenCount": entry.thought_tokens}]))
    assert sum(c.cost_usd for c in candidates) == pytest.approx(_dollars(usage))  # what the service billed
    stored = json.loads(next(Store(resolve(config)).grades_dir.glob("*/*.json")).read_text())
    assert stored["usage"][0]["model_version"] == DEFAULT_GEMINI_MODEL and stored["cost_usd"] > 0


def test_a_model_google_shut_down_is_one_line_before_anything_loads(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with FakeGeminiServer() as server:
        result = CliRunner().invoke(main, [
            "run", "--prompt", PROMPTS[0], "--model", "tiny-flux", "--verifier_model", "gemini-2.0-flash",
            "--output_dir", str(tmp_path / "output")], env={"GEMINI_BASE_URL": server.url})
        asked = server.call_count
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("ttsf: error: --verifier_model (verifier_args.model_name): received 'gemini-2.0-flash' "
                               "(Google no longer serves it")
    assert f"--verifier_model {DEFAULT_GEMINI_MODEL}" in lines[0]
    assert "--verifier_model gemini-2.0-flash" not in lines[0]  # never the refused model
    assert asked == 0 and not (tmp_path / "output").exists()


def test_a_model_shut_down_mid_run_stops_it_and_another_model_only_regrades(tmp_path, tiny_pipe):
    model = "gemini-3.7-flash"
    with FakeGeminiServer(retire_after=(model, 5)) as server:
        config = _config(tmp_path, server.url, model_name=model, max_concurrency=1)
        _, stopped = _run(config, tiny_pipe)
        refused = [r for r in server.requests if r.status == 404]
    assert stopped.failures and all(isinstance(f.error, VerifierConfigError) for f in stopped.failures[:1])
    assert "Google no longer serves it" in str(stopped.failures[0].error)
    assert len(refused) == 1  # after the first refusal, not one request more
    images = sum(1 for _ in Store(resolve(config)).images_dir.rglob("*.png"))
    with FakeGeminiServer() as server:
        other = _config(tmp_path, server.url, model_name=DEFAULT_GEMINI_MODEL)
        _, resumed = _run(other, tiny_pipe)
        asked = server.call_count
    resumed.raise_first()
    expected = len(PROMPTS) * (2 + 4 + 8)
    assert (resumed.counts.images_generated, resumed.counts.images_found) == (expected - images, images)
    assert resumed.counts.images_graded == asked == expected  # a new grading identity: every image graded anew
    assert len(iter_round_records(runner.prepare_run(other).layout.run_dir)) == len(PROMPTS) * 3


# ----- what a run costs -------------------------------------------------------------------------


def test_the_reports_tokens_and_cost_are_what_the_service_billed(tmp_path, tiny_pipe):
    schedule = FaultSchedule(seed=3, rate=0.25, kinds=("missing_fields", "503"), max_faults_per_image=1)
    with FakeGeminiServer(faults=schedule) as server:
        config = _config(tmp_path, server.url)
        _, outcome = _run(config, tiny_pipe)
        usage = _billed(server)
    outcome.raise_first()
    assert any(r.fault == "missing_fields" for r in server.requests)  # unusable answers, billed all the same
    frame = report_dataframe(runner.prepare_run(config).layout.run_dir)
    found = cost_summary(frame)
    assert found["requests"] == len(usage) == outcome.counts.verifier_requests
    assert found["prompt_tokens"] == sum(u["promptTokenCount"] for u in usage)
    assert found["thought_tokens"] == sum(u.get("thoughtsTokenCount", 0) for u in usage)
    assert found["output_tokens"] == sum(u["candidatesTokenCount"] for u in usage)
    assert found["cost_usd"] == pytest.approx(_dollars(usage)) == pytest.approx(outcome.counts.cost_usd)
    per_prompt = frame.groupby("prompt_index")["verifier_cost_usd"].sum()
    assert per_prompt.sum() == pytest.approx(found["cost_usd"])
    assert frame["verifier_cost_so_far"].iloc[-1] == pytest.approx(per_prompt.iloc[-1])
    assert f"${found['cost_usd']:.4f}" in cost_lines(frame)[0]


def test_estimate_uses_the_tokens_measured_in_the_output_folder(tmp_path, tiny_pipe):
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server.url, rounds=1)
        _run(config, tiny_pipe)
        usage = _billed(server)
    args = ["estimate", "--config", str(tmp_path / "config.json"), "--search_rounds", "3"]
    (tmp_path / "config.json").write_text(config.model_dump_json())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    mean_prompt = round(sum(u["promptTokenCount"] for u in usage) / len(usage))
    assert f"~{mean_prompt:,} prompt tokens" in result.output
    assert f"the mean of {len(usage)} earlier grades" in result.output
    total = result.output.splitlines()[[line.strip().startswith("total") for line in result.output.splitlines()].index(True)]
    assert total.split()[3] == str(len(PROMPTS) * (4 + 8))  # rounds 2 and 3 only: round 1 is done


# ----- budgets ----------------------------------------------------------------------------------


def test_a_budget_stops_before_the_round_that_would_go_over_and_a_rerun_pays_only_the_rest(tmp_path, tiny_pipe):
    with FakeGeminiServer() as server:
        plain = _config(tmp_path, server.url)
        budgeted = type(plain).model_validate(plain.model_dump() | {"budget": {"max_verifier_requests": 9}})
        prepared, outcome = _run(budgeted, tiny_pipe)
        first = server.call_count
    outcome.raise_first()
    # Rounds in order: both prompts' round 1 (2 + 2), prompt 0's round 2 (4): 8; prompt 1's round 2 would make 12.
    assert outcome.over_budget == {0: 3, 1: 2} and first == 8
    assert (outcome.counts.rounds_over_budget, outcome.counts.prompts_over_budget) == (3, 2)
    with FakeGeminiServer() as server:
        _, rest = _run(_config(tmp_path, server.url), tiny_pipe)
        second = server.call_count
    rest.raise_first()
    assert second == rest.counts.images_generated == 4 + 8 + 8 and rest.counts.rounds_skipped == 3


def test_a_cost_budget_never_spends_past_its_limit(tmp_path, tiny_pipe):
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server.url)
        config = type(config).model_validate(config.model_dump() | {"budget": {"max_verifier_cost_usd": 0.03}})
        _, outcome = _run(config, tiny_pipe)
        spent = _dollars(_billed(server))
    outcome.raise_first()
    assert outcome.over_budget and 0 < spent <= 0.03
    assert outcome.counts.cost_usd == pytest.approx(spent)


def test_the_cli_says_the_budget_was_reached_and_exits_zero(tmp_path, tiny_flux_dir):
    with FakeGeminiServer() as server:
        result = CliRunner().invoke(main, [
            "run", "--prompt", PROMPTS[0], "--model", "tiny-flux", "--height", "64", "--width", "64",
            "--num_inference_steps", "2", "--search_rounds", "3", "--executor", "threads",
            "--max_verifier_requests", "6", "--output_dir", str(tmp_path / "output")],
            env={"GEMINI_BASE_URL": server.url})
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Budget reached: this run spent 6 of 6 verifier requests; 1 round of 1 prompt not run")
    assert "Report:" in result.output


# ----- Gemini 3's settings -------------------------------------------------------------------------


@pytest.mark.parametrize("model,level,resolution,thinking,temperature,image_tokens", [
    ("gemini-3.5-flash-lite", "minimal", None, {"thinkingLevel": "MINIMAL"}, None, 1120),
    ("gemini-3.8-flash", None, "low", {"thinkingLevel": "LOW"}, None, 280),
    ("gemini-3.8-flash", "high", "medium", {"thinkingLevel": "HIGH"}, None, 560),
    ("gemini-2.5-flash-lite", None, None, {"thinkingBudget": 0}, 0.0, 258),
    ("gemini-2.5-flash-lite", "medium", None, {"thinkingBudget": 8192}, 0.0, 258),
])
def test_thinking_and_media_resolution_reach_the_wire(model, level, resolution, thinking, temperature, image_tokens):
    from PIL import Image

    from ttsf_core.config import VerifierArgs
    from ttsf_core.resolve import verifier_identity
    from ttsf_core.verifiers.gemini import GeminiVerifier

    with FakeGeminiServer() as server:
        verifier = GeminiVerifier(VerifierArgs(model_name=model, thinking_level=level, media_resolution=resolution,
                                               options={"base_url": server.url}))
        try:
            [graded] = verifier.grade_partial("a cat", [Image.new("RGB", (16, 16), "red")])
        finally:
            verifier.close()
        [record] = server.requests
    config = record.body["generationConfig"]
    assert thinking_config(record.body) == thinking
    assert config.get("temperature") == temperature
    assert config.get("mediaResolution") == (f"MEDIA_RESOLUTION_{resolution.upper()}" if resolution else None)
    assert graded.usage[0].image_tokens == image_tokens  # what the service billed for the image


def test_a_setting_the_model_refuses_is_one_line(tmp_path, monkeypatch):
    with FakeGeminiServer() as server:
        result = CliRunner().invoke(main, ["run", "--prompt", PROMPTS[0], "--verifier_thinking_level", "minimal",
                                           "--output_dir", str(tmp_path)], env={"GEMINI_BASE_URL": server.url})
        assert server.call_count == 0
    assert result.exit_code == 2 and result.output.strip() == (
        "ttsf: error: --verifier_thinking_level (verifier_args.thinking_level): received 'minimal', allowed: low, "
        f"medium, high (the levels {DEFAULT_GEMINI_MODEL} takes)")


def test_a_setting_refused_by_a_model_ttsf_does_not_know_stops_the_run_at_once(tmp_path, tiny_pipe, monkeypatch):
    monkeypatch.setitem(fake_gemini.CATALOGUE, "gemini-9-flash", FakeModel(("LOW", "HIGH"), "HIGH"))
    with FakeGeminiServer() as server:
        config = _config(tmp_path, server.url, model_name="gemini-9-flash", thinking_level="minimal")
        _, outcome = _run(config, tiny_pipe)
        asked = server.call_count
    error = outcome.failures[0].error
    assert isinstance(error, VerifierConfigError) and asked <= 4  # the first answer stopped every request
    assert "--verifier_thinking_level (verifier_args.thinking_level): Gemini refused it for gemini-9-flash" in str(error)


def test_grades_from_an_alias_that_moved_are_flagged(tmp_path, tiny_pipe):
    with FakeGeminiServer(aliases={"gemini-flash-latest": "gemini-3.6-flash"}) as server:
        config = _config(tmp_path, server.url, rounds=2, model_name="gemini-flash-latest")
        _run(config, tiny_pipe)[1].raise_first()
        server.aliases["gemini-flash-latest"] = "gemini-3.5-flash-lite"  # Google points the alias elsewhere
        longer = _config(tmp_path, server.url, rounds=3, model_name="gemini-flash-latest")
        _run(longer, tiny_pipe)[1].raise_first()
    run_dir = runner.prepare_run(longer).layout.run_dir
    frame = report_dataframe(run_dir)
    assert cost_summary(frame)["model_versions"] == {"gemini-3.6-flash": 12, "gemini-3.5-flash-lite": 16}
    warning = "the grades come from 2 model versions (gemini-3.6-flash (12 requests), gemini-3.5-flash-lite (16 requests))"
    assert warning in " ".join(cost_lines(frame))
    assert warning in summary_markdown(frame, run_dir)  # the Prefect UI's summary artifact


def test_the_grading_identity_names_the_model_and_what_is_sent(tmp_path):
    from ttsf_core.config import VerifierArgs
    from ttsf_core.resolve import verifier_identity

    default = verifier_identity(VerifierArgs())
    assert default["sent"] == {"model": DEFAULT_GEMINI_MODEL, "temperature": None, "thinking_level": "low"}
    assert "sent" not in verifier_identity(VerifierArgs(model_name="gemini-2.0-flash"))  # as it always was
    low = verifier_identity(VerifierArgs(model_name=DEFAULT_GEMINI_MODEL, media_resolution="low"))
    assert low["sent"] == {"temperature": None, "thinking_level": "low", "media_resolution": "low"}
    assert "sent" not in verifier_identity(VerifierArgs(name="imagestats"))


# ----- a grade is stored the moment it arrives --------------------------------------------------------


def test_a_grade_is_stored_while_the_rest_of_its_chunk_is_still_out(tmp_path, tiny_pipe):
    from ttsf_core.engine.jobs import GenerateJob, generate
    from ttsf_core.search import build_strategy

    # The first request to arrive hangs, whichever image it carries (the server sees the bytes as sent,
    # not the stored file's, so it is told by arrival, not by hash); the other is answered at once.
    with FakeGeminiServer(faults=FaultSchedule(by_call={0: "hang"}, hang_s=4.0)) as server:
        prompt, config = PROMPTS[0], _config(tmp_path, server.url, rounds=1, prompts=PROMPTS[:1])
        store = Store(resolve(config))
        candidates = build_strategy(resolve(config)).plan_round(prompt, 1, [])
        images = generate(store, CandidateGenerator(tiny_pipe, resolve(config)), GenerateJob(
            prompt_index=0, prompt=prompt, search_round=1, candidates=candidates))
        job = GradeJob(prompt_index=0, prompt=prompt, search_round=1, chunk=0, images=images)
        verifier = _verifier(config)  # built before the clock starts: only the grading is timed
        worker = threading.Thread(target=lambda: _swallow(grade_once, store, verifier, job), daemon=True)
        worker.start()
        deadline = time.monotonic() + 3.0

        def stored() -> int:
            return sum(store.find_grade(prompt, image.sha256) is not None for image in images)

        for _ in range(300):  # bounded by count and time
            if stored() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        one_stored_while_out = stored() == 1 and worker.is_alive()
        worker.join(timeout=10)
    assert len(images) == 2 and one_stored_while_out


def _verifier(config):
    from ttsf_core.verifiers.registry import build_verifier

    return build_verifier(config.verifier_args)


def _swallow(function, *args):
    try:
        function(*args)
    except Exception:  # noqa: BLE001 - the hung request fails the attempt; the test looks at the store
        pass


def test_every_place_that_names_the_default_model_names_the_same_one():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert f"**The default model is `{DEFAULT_GEMINI_MODEL}`**" in readme
    assert f"`{DEFAULT_GEMINI_MODEL}` by default" in readme and f"default model `{DEFAULT_GEMINI_MODEL}`" in readme
    deployments = (root / "deployments" / "prefect.yaml").read_text()
    assert f"the verifier's default ({DEFAULT_GEMINI_MODEL})" in deployments
    help_text = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    assert f"gemini: {DEFAULT_GEMINI_MODEL}" in " ".join(help_text.split())
    from ttsf_core.verifiers.gemini import GeminiVerifier

    assert GeminiVerifier.DEFAULT_MODEL == DEFAULT_GEMINI_MODEL
    for text in (readme, deployments, *(path.read_text() for path in (root / "docs").glob("*.md"))):
        assert "default (gemini-2" not in text and "default model `gemini-2" not in text
