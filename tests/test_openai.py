"""OpenAIVerifier through the real `openai` client (AsyncOpenAI), against the local fake server (no network).

What the real SDK (openai 3.x, max_retries=0) does with each fault of tests/fake_openai.py is pinned
by `test_what_the_sdk_does_with_each_fault`; the verifier's classification is built on it:

| fault               | the SDK                                                                          |
|---------------------|----------------------------------------------------------------------------------|
| 429, 429_ms         | raises openai.RateLimitError (status 429, code rate_limit_exceeded); headers on .response |
| insufficient_quota  | raises openai.RateLimitError (status 429, code insufficient_quota)               |
| 500, 503            | raises openai.InternalServerError                                                |
| 401                 | raises openai.AuthenticationError                                                |
| 403                 | raises openai.PermissionDeniedError                                              |
| 404                 | raises openai.NotFoundError                                                      |
| 400, 400_response_format | raises openai.BadRequestError (.param "response_format" for the latter)     |
| hang                | raises openai.APITimeoutError (cause httpx2.ReadTimeout) after its per-read timeout |
| drip                | returns the whole completion, however long it takes: the timeout is per read     |
| cut                 | raises openai.APIConnectionError (cause httpx2.RemoteProtocolError)              |
| reset               | raises openai.APIConnectionError (cause httpx2.ReadError)                        |
| refused connection  | raises openai.APIConnectionError (cause httpx2.ConnectError)                     |
| html (200, text/html) | returns the body as a plain str, not a ChatCompletion: no exception           |
| 200 JSON garbage    | raises json.JSONDecodeError                                                      |
| answer faults       | return a ChatCompletion: content_filter as finish_reason, a refusal in message.refusal (content None), "length" as finish_reason, no_choices as choices [] |
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import openai
import pytest
from PIL import Image

from fake_openai import ANSWER_FAULTS, FAULT_KINDS, FakeOpenAIServer, error_body, strict_schema_problem
from fake_gemini import expected_grades
from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    RUBRIC_METRICS,
    RateLimitError,
    RetryableVerifierError,
    UngradeableError,
    Verifier,
    VerifierConfigError,
    VerifierError,
    score_each,
    verifier_batch_size,
)
from ttsf_core.verifiers.openai_compat import OpenAIVerifier, openai_strict_schema, png_data_url
from ttsf_core.verifiers.registry import build_verifier, default_metric_for, metrics_for
from ttsf_core.verifiers.rubric import load_rubric

pytestmark = pytest.mark.timeout(60)
KEY = "sk-test-123"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def verifiers():
    """Builds verifiers pointed at a server and closes them after the test."""
    made: list[OpenAIVerifier] = []

    def make(server: FakeOpenAIServer | None = None, **kwargs) -> OpenAIVerifier:
        options = dict(kwargs.pop("options", {}))
        if server is not None:
            options.setdefault("base_url", server.base_url)
        kwargs.setdefault("request_timeout_s", 10.0)
        made.append(OpenAIVerifier(VerifierArgs(name="openai", options=options, **kwargs)))
        return made[-1]

    yield make
    for verifier in made:
        verifier.close()


def distinct_images(count: int) -> list[Image.Image]:
    """Visibly different 32x32 images: solid colours, then gradients."""
    colours = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (250, 250, 250), (5, 5, 5), (128, 90, 200), (240, 200, 10)]
    images = [Image.new("RGB", (32, 32), colour) for colour in colours]
    for shift in range(max(0, count - len(images))):
        gradient = Image.new("RGB", (32, 32))
        gradient.putdata([((x * 8 + shift * 37) % 256, y * 8, (x + y + shift * 11) % 256)
                          for y in range(32) for x in range(32)])
        images.append(gradient)
    return images[:count]


def png(image: Image.Image) -> bytes:
    return base64.b64decode(png_data_url(image).split(",", 1)[1])


def sha(image: Image.Image) -> str:
    return hashlib.sha256(png(image)).hexdigest()


def expected(images: list[Image.Image]):
    grades = [expected_grades(png(image)) for image in images]
    assert len({json.dumps(g.scores(), sort_keys=True) for g in grades}) == len(grades)  # all distinct
    return grades


# ----- the verifier's declaration -----


def test_registry_builds_a_protocol_verifier_with_the_rubric_metrics():
    verifier = build_verifier(VerifierArgs(name="openai"))
    try:
        assert isinstance(verifier, OpenAIVerifier) and isinstance(verifier, Verifier)
        assert verifier.name == "openai"
        assert tuple(verifier.metrics) == RUBRIC_METRICS
        assert verifier.default_metric == "overall_score"
        assert verifier.batch_size == verifier_batch_size(verifier) == VerifierArgs().max_concurrency
    finally:
        verifier.close()
    assert metrics_for("openai") == list(RUBRIC_METRICS)
    assert default_metric_for("openai") == "overall_score"


# ----- order, concurrency, batching -----


def test_grades_stay_with_their_images_when_answers_come_back_reversed(verifiers):
    images = distinct_images(6)
    with FakeOpenAIServer(reverse_groups=6, group_wait_s=2.0) as server:
        grades = verifiers(server, max_concurrency=6).score("a red apple", images)
        records = server.requests
    assert grades == expected(images)
    arrival = [r.call_index for r in records]
    answer_order = [r.call_index for r in sorted(records, key=lambda r: r.answered_at)]
    assert answer_order == arrival[::-1]  # the server really answered the last arrival first
    assert {r.image_sha256 for r in records} == {sha(image) for image in images}


def test_concurrency_is_bounded_by_max_concurrency(verifiers):
    images = distinct_images(9)
    with FakeOpenAIServer(latency_s=0.1) as server:
        verifier = verifiers(server, max_concurrency=3)
        assert verifier.batch_size == 3
        started = time.monotonic()
        grades = verifier.score("p", images)
        elapsed = time.monotonic() - started
        assert server.max_in_flight == 3  # never more, and really in parallel
        assert server.call_count == 9
    assert grades == expected(images)
    assert elapsed < 9 * 0.1


def test_one_verifier_shared_by_threads_keeps_the_bound(verifiers):
    images = distinct_images(8)
    with FakeOpenAIServer(latency_s=0.05) as server:
        verifier = verifiers(server, max_concurrency=2)
        with ThreadPoolExecutor(4) as callers:
            results = list(callers.map(lambda chunk: verifier.score("p", chunk), [images[:4], images[4:]]))
        assert server.max_in_flight == 2
    assert results[0] + results[1] == expected(images)


def test_empty_list_sends_nothing(verifiers):
    with FakeOpenAIServer() as server:
        assert verifiers(server).score("p", []) == []
        assert verifiers(server).score_partial("p", []) == []
        assert server.call_count == 0


# ----- what goes over the wire -----


def test_request_shape(verifiers):
    image = distinct_images(1)[0]
    with FakeOpenAIServer(api_key=KEY) as server:
        [grades] = verifiers(server, max_new_tokens=321).score("a lighthouse at dusk", [image])
        [record] = server.requests
    assert grades == expected_grades(png(image))
    assert record.path == "/v1/chat/completions"
    assert record.api_key == KEY
    body = record.body
    assert body["model"] == OpenAIVerifier.DEFAULT_MODEL == "gpt-4o-mini"
    assert body["temperature"] == 0
    assert body["max_tokens"] == 321
    assert "seed" not in body  # not set: not sent
    assert "stream" not in body or body["stream"] is False
    [message] = body["messages"]
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["text", "image_url"]
    assert message["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert record.image_mime == "image/png" and record.image_sha256 == sha(image)  # lossless, the very pixels
    assert message["content"][0]["text"] == f"{load_rubric()}\n\n<prompt>a lighthouse at dusk</prompt>"
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "grades"
    assert response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"] == openai_strict_schema()


def test_strict_schema_fits_openai_strict_mode():
    schema = openai_strict_schema()
    assert strict_schema_problem(schema) is None
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert list(schema["properties"]) == list(RUBRIC_METRICS) == schema["required"]
    for aspect in schema["properties"].values():
        assert aspect["additionalProperties"] is False
        assert list(aspect["properties"]) == ["explanation", "score"] == aspect["required"]  # explanation first
        assert aspect["properties"]["score"]["type"] == "number"
    # The fake refuses what strict mode refuses, so the check above means something.
    loose = json.loads(json.dumps(schema))
    del loose["properties"]["overall_score"]["additionalProperties"]
    assert "additionalProperties" in strict_schema_problem(loose)


def test_model_name_and_seed_are_sent(verifiers):
    with FakeOpenAIServer(known_models=["qwen2.5-vl-7b"]) as server:
        verifiers(server, model_name="qwen2.5-vl-7b", seed=1994).score("p", distinct_images(2))
        assert [r.body["seed"] for r in server.requests] == [1994, 1994]
        assert {r.body["model"] for r in server.requests} == {"qwen2.5-vl-7b"}


@pytest.mark.parametrize("kind", ["json_object", "none"])
def test_response_format_fallbacks(verifiers, kind):
    images = distinct_images(3)
    with FakeOpenAIServer(json_schema_supported=False) as server:
        grades = verifiers(server, options={"response_format": kind}).score("p", images)
        formats = [r.body.get("response_format") for r in server.requests]
    assert grades == expected(images)  # "none": the fake answers in a ```json fence, parsed all the same
    assert formats == ([{"type": "json_object"}] * 3 if kind == "json_object" else [None] * 3)


def test_a_server_without_json_schema_is_a_config_error_naming_the_fallback(verifiers):
    with FakeOpenAIServer(json_schema_supported=False) as server:
        verifier = verifiers(server, max_concurrency=1)
        with pytest.raises(VerifierConfigError, match="response_format.*json_object"):
            verifier.score("p", distinct_images(3))
        assert server.call_count == 1  # a setting that cannot work is not asked again


def test_base_url_from_environment(verifiers, monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        verifier = verifiers(None)
        assert verifier.base_url == server.base_url
        verifier.score("p", distinct_images(2))
        assert server.call_count == 2


def test_options_base_url_wins_over_environment(verifiers, monkeypatch):
    with FakeOpenAIServer() as used, FakeOpenAIServer() as ignored:
        monkeypatch.setenv("OPENAI_BASE_URL", ignored.base_url)
        verifiers(used).score("p", distinct_images(1))
        assert (used.call_count, ignored.call_count) == (1, 0)


def test_a_local_server_needs_no_key(verifiers, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    images = distinct_images(2)
    with FakeOpenAIServer() as server:
        assert verifiers(server).score("p", images) == expected(images)
        assert {r.api_key for r in server.requests} == {"EMPTY"}  # a placeholder, never another secret


def test_a_local_server_that_wants_a_key_says_so(verifiers, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeOpenAIServer(api_key=KEY) as server:
        with pytest.raises(VerifierConfigError, match="OPENAI_API_KEY .*received nothing, and the server wants a key"):
            verifiers(server, max_concurrency=1).score("p", distinct_images(2))
        assert server.call_count == 1


# ----- configuration errors at construction -----


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_key_for_openai_is_one_line(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("OPENAI_API_KEY")
    else:
        monkeypatch.setenv("OPENAI_API_KEY", value)
    with pytest.raises(VerifierConfigError) as caught:
        OpenAIVerifier(VerifierArgs(name="openai"))
    message = str(caught.value)
    assert message.startswith("OPENAI_API_KEY (verifier_args.name=openai): received nothing, allowed: ")
    assert "\n" not in message


def test_missing_key_for_an_explicit_openai_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(VerifierConfigError, match=r"^OPENAI_API_KEY \(verifier_args.name=openai\): received nothing"):
        OpenAIVerifier(VerifierArgs(name="openai", options={"base_url": "https://api.openai.com/v1/"}))


@pytest.mark.parametrize("options, match", [
    ({"base_ulr": "http://x"}, "base_ulr"),
    ({"base_url": "127.0.0.1:8000/v1"}, "http"),
    ({"base_url": 5}, "http"),
    ({"response_format": "json"}, "json_schema, json_object, none"),
])
def test_bad_options_fail_at_construction(options, match):
    with pytest.raises(VerifierConfigError, match=match):
        OpenAIVerifier(VerifierArgs(name="openai", options=options))


def test_bad_base_url_environment_fails_at_construction(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000")
    with pytest.raises(VerifierConfigError, match="OPENAI_BASE_URL"):
        OpenAIVerifier(VerifierArgs(name="openai"))


# ----- HTTP errors -----


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


SLOW_DOWN = error_body(429, "Rate limit reached for requests.")  # no wait named in the message
RATE_LIMIT_CASES = [  # (headers, error body, the wait the caller must get)
    ({"Retry-After": "1"}, SLOW_DOWN, 1.0),
    ({"Retry-After": "17"}, SLOW_DOWN, 17.0),
    ({"retry-after-ms": "1500"}, SLOW_DOWN, 1.5),
    ({"Retry-After": "2", "retry-after-ms": "2500"}, SLOW_DOWN, 2.5),  # the longer wait wins
    ({}, error_body(429, "Rate limit reached. Please try again in 20s."), 20.0),  # OpenAI's message
    ({}, error_body(429, "Rate limit reached. Please try again in 350ms."), 0.35),
    ({"Retry-After": "3"}, error_body(429, "Please try again in 20s."), 20.0),
    ({"Retry-After": "soon"}, SLOW_DOWN, None),  # unreadable: no hint rather than a made-up one
    ({}, SLOW_DOWN, None),
]


def test_rate_limit_carries_retry_after(verifiers):
    failures = [(429, headers, body) for headers, body, _ in RATE_LIMIT_CASES]
    with FakeOpenAIServer(failures=failures) as server:
        verifier = verifiers(server, max_concurrency=1)
        for headers, body, wait in RATE_LIMIT_CASES:  # one scripted 429 per call
            with pytest.raises(RateLimitError) as caught:
                verifier.score("p", distinct_images(1))
            found = caught.value.retry_after
            assert (found is None if wait is None else found == pytest.approx(wait)), (headers, body, found)
        assert server.call_count == len(RATE_LIMIT_CASES)


def test_rate_limit_retry_after_as_http_date(verifiers):
    with FakeOpenAIServer(failures=[(429, {"Retry-After": _http_date(30)}, SLOW_DOWN)]) as server:
        with pytest.raises(RateLimitError) as caught:
            verifiers(server).score("p", distinct_images(1))
    assert 27 <= caught.value.retry_after <= 31


def test_rate_limit_fault_kinds(verifiers):
    with FakeOpenAIServer(failures=["429", "429_ms"], retry_after="3", retry_after_ms="4200") as server:
        verifier = verifiers(server, max_concurrency=1)
        waits = []
        for _ in range(2):
            with pytest.raises(RateLimitError) as caught:
                verifier.score("p", distinct_images(1))
            waits.append(caught.value.retry_after)
        # The fake's default message says "try again in 20s": the longest hint wins.
        assert waits == [20.0, 20.0]
        images = distinct_images(2)
        assert verifier.score("p", images) == expected(images)  # a 429 is not a refusal: later requests go out


def test_exhausted_quota_is_a_config_error_and_stops_sending(verifiers):
    with FakeOpenAIServer(failures=["insufficient_quota"]) as server:
        verifier = verifiers(server, max_concurrency=1)
        with pytest.raises(VerifierConfigError, match="no quota left"):
            verifier.score("p", distinct_images(3))
        with pytest.raises(VerifierConfigError, match="not sent"):
            verifier.score("p", distinct_images(1))
        assert server.call_count == 1


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
def test_server_error_is_retryable_and_a_retry_succeeds(verifiers, status):
    images = distinct_images(3)
    with FakeOpenAIServer(failures=[(status, {})]) as server:
        verifier = verifiers(server, max_concurrency=1)
        with pytest.raises(RetryableVerifierError) as caught:
            verifier.score("p", images)
        assert not isinstance(caught.value, RateLimitError)
        assert verifier.score("p", images) == expected(images)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_is_a_config_error_and_nothing_more_is_sent(verifiers, monkeypatch, status):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    with FakeOpenAIServer(api_key=KEY, wrong_key_status=status) as server:
        verifier = verifiers(server, max_concurrency=1)
        results = verifier.score_partial("p", distinct_images(4))
        assert all(isinstance(result, VerifierConfigError) for result in results)
        assert "OPENAI_API_KEY (verifier_args.name=openai): received a key the server rejects" in str(results[0])
        assert all("not sent" in str(result) for result in results[1:])
        with pytest.raises(VerifierConfigError, match="OPENAI_API_KEY"):
            verifier.score("p", distinct_images(2))
        assert server.call_count == 1
        assert server.requests[0].status == status


def test_refused_key_under_concurrency_sends_no_later_request(verifiers, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    with FakeOpenAIServer(api_key=KEY) as server:
        verifier = verifiers(server, max_concurrency=2)
        with pytest.raises(VerifierConfigError):
            verifier.score("p", distinct_images(8))
        assert server.call_count <= 2  # only those already in flight when the first refusal came back


def test_unknown_model_is_a_config_error(verifiers):
    with FakeOpenAIServer(known_models=["gpt-4o-mini"]) as server:
        with pytest.raises(VerifierConfigError, match="gpt-nope") as caught:
            verifiers(server, model_name="gpt-nope").score("p", distinct_images(1))
    assert "model_not_found" in str(caught.value)


def test_other_client_error_names_the_image(verifiers):
    with FakeOpenAIServer(failures=[(400, {}, error_body(400, "Invalid image."))]) as server:
        with pytest.raises(VerifierError) as caught:
            verifiers(server).score("p", distinct_images(1))
    assert not isinstance(caught.value, VerifierConfigError)
    assert caught.value.image_index == 0


# ----- answers that do not grade -----


@pytest.mark.parametrize("kind, error_type, fragment", [
    ("content_filter", UngradeableError, "content_filter"),
    ("refusal", UngradeableError, "refused"),
    ("not_json_text", VerifierError, "no JSON"),
    ("missing_fields", VerifierError, "emotional_or_thematic_resonance"),
    ("out_of_range", VerifierError, "overall_score"),
    ("string_score", VerifierError, "overall_score"),
    ("empty_content", VerifierError, "empty"),
    ("no_choices", VerifierError, "no choices"),
    ("length", VerifierError, "max_new_tokens=800"),
])
def test_bad_answers_name_the_image_and_the_rest_are_kept(verifiers, kind, error_type, fragment):
    images = distinct_images(4)
    with FakeOpenAIServer(faults={sha(images[2]): kind}) as server:
        results = verifiers(server, max_concurrency=4).score_partial("p", images)
    good = expected(images)
    assert [results[i] for i in (0, 1, 3)] == [good[i] for i in (0, 1, 3)]  # the answers that arrived are kept
    assert type(results[2]) is error_type
    assert results[2].image_index == 2 and "image 2" in str(results[2]) and fragment in str(results[2])


# ----- transport failures -----


@pytest.mark.parametrize("kind", ["hang", "drip"])
def test_deadline_on_the_whole_request(verifiers, kind):
    with FakeOpenAIServer(faults={0: kind}, hang_s=5.0, drip_s=5.0) as server:
        started = time.monotonic()
        with pytest.raises(RetryableVerifierError, match="request_timeout_s=0.5"):
            verifiers(server, request_timeout_s=0.5).score("p", distinct_images(1))
        assert time.monotonic() - started < 2.5  # a drip never trips the SDK's per-read timeout: ours does


@pytest.mark.parametrize("kind", ["cut", "reset", "html"])
def test_broken_transport_is_retryable_and_a_retry_succeeds(verifiers, kind):
    images = distinct_images(2)
    with FakeOpenAIServer(faults={0: kind}) as server:
        verifier = verifiers(server, max_concurrency=1)
        with pytest.raises(RetryableVerifierError) as caught:
            verifier.score("p", images)
        assert not isinstance(caught.value, RateLimitError)
        assert verifier.score("p", images) == expected(images)


def test_json_garbage_with_a_json_content_type_is_retryable(verifiers):
    with FakeOpenAIServer(failures=[(200, {"Content-Type": "application/json"}, "{not json")]) as server:
        with pytest.raises(RetryableVerifierError, match="not a JSON completion"):
            verifiers(server).score("p", distinct_images(1))


def test_connection_refused_is_retryable(verifiers):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetryableVerifierError, match="ConnectError"):
        verifiers(None, options={"base_url": f"http://127.0.0.1:{port}/v1"}).score("p", distinct_images(1))


# ----- check_access -----


def test_check_access_asks_for_the_model_only(verifiers):
    with FakeOpenAIServer(api_key=KEY, known_models=["gpt-4o-mini"]) as server:
        verifiers(server).check_access()
        assert [(r.path, r.model, r.api_key, r.status) for r in server.model_requests] == \
            [("/v1/models/gpt-4o-mini", "gpt-4o-mini", KEY, 200)]
        assert server.call_count == 0  # no generation, no image


def test_check_access_with_a_hub_style_model_id(verifiers):
    model = "Qwen/Qwen2.5-VL-7B-Instruct"  # as vLLM names its models: the SDK percent-encodes the slash
    with FakeOpenAIServer(known_models=[model]) as server:
        verifiers(server, model_name=model).check_access()
        [request] = server.model_requests
    assert (request.path, request.model, request.status) == ("/v1/models/Qwen%2FQwen2.5-VL-7B-Instruct", model, 200)


def test_check_access_refused_key_then_nothing_is_sent(verifiers, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    with FakeOpenAIServer(api_key=KEY) as server:
        verifier = verifiers(server)
        with pytest.raises(VerifierConfigError, match="OPENAI_API_KEY"):
            verifier.check_access()
        with pytest.raises(VerifierConfigError, match="not sent"):
            verifier.score("p", distinct_images(2))
        assert server.call_count == 0


def test_check_access_unknown_model(verifiers):
    with FakeOpenAIServer(known_models=["gpt-4o-mini"]) as server:
        with pytest.raises(VerifierConfigError, match="'gpt-nope'"):
            verifiers(server, model_name="gpt-nope").check_access()


def test_check_access_on_a_server_that_only_lists_models(verifiers):
    with FakeOpenAIServer(known_models=["Qwen/Qwen2.5-VL-7B-Instruct"], retrieve_supported=False) as server:
        verifiers(server, model_name="Qwen/Qwen2.5-VL-7B-Instruct").check_access()  # found in the list
        with pytest.raises(VerifierConfigError, match="allowed: one of Qwen/Qwen2.5-VL-7B-Instruct"):
            verifiers(server, model_name="llava").check_access()
        assert [r.model for r in server.model_requests] == ["Qwen/Qwen2.5-VL-7B-Instruct", None, "llava", None]


def test_check_access_of_an_unreachable_server_is_retryable(verifiers):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetryableVerifierError):
        verifiers(None, options={"base_url": f"http://127.0.0.1:{port}/v1"}).check_access()


# ----- the verifier contract (tests/verifier_contract.py), and what it does not cover -----


def test_openai_keeps_the_contract(verifiers):
    check_contract = pytest.importorskip("verifier_contract", reason="tests/verifier_contract.py not present").check_contract
    images = distinct_images(5)
    with FakeOpenAIServer(api_key=KEY, reverse_groups=3, group_wait_s=0.5) as server:
        def make(options=None):  # answers come back out of order in groups of three
            return verifiers(server, max_concurrency=3, options={"base_url": server.base_url, **(options or {})})

        grades = check_contract(make, "a red apple on a table", images)
        assert grades == expected(images)
        assert score_each(make(), "a red apple on a table", images) == grades  # what the engine calls
        before = server.call_count
        with pytest.raises(ValueError, match="images\\[1\\]"):
            make().score("p", [images[0], "not an image"])
        assert server.call_count == before  # refused before anything was sent


def test_typed_errors_per_image_never_a_none(verifiers):
    images = distinct_images(5)
    with FakeOpenAIServer(faults={sha(images[1]): "not_json_text", sha(images[3]): "503"}) as server:
        results = verifiers(server, max_concurrency=3).score_partial("p", images)
    good = expected(images)
    assert [results[i] for i in (0, 2, 4)] == [good[i] for i in (0, 2, 4)]
    assert type(results[1]) is VerifierError and results[1].image_index == 1
    assert type(results[3]) is RetryableVerifierError and "image 3" in str(results[3])


# ----- what the real SDK does with each fault -----


def _sdk_outcome(server: FakeOpenAIServer, timeout_s: float = 1.0) -> tuple[str, object]:
    image = distinct_images(1)[0]
    messages = [{"role": "user", "content": [{"type": "text", "text": "grade in JSON"},
                                             {"type": "image_url", "image_url": {"url": png_data_url(image)}}]}]

    async def ask():
        client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=timeout_s)
        try:
            return await client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=100,
                                                        response_format={"type": "json_object"})
        finally:
            await client.close()

    try:
        return "returns", asyncio.run(ask())
    except Exception as error:  # noqa: BLE001 - the point of the test
        return "raises", error


SDK_RAISES = {
    "429": (openai.RateLimitError, 429), "429_ms": (openai.RateLimitError, 429),
    "insufficient_quota": (openai.RateLimitError, 429), "500": (openai.InternalServerError, 500),
    "503": (openai.InternalServerError, 503), "401": (openai.AuthenticationError, 401),
    "403": (openai.PermissionDeniedError, 403), "404": (openai.NotFoundError, 404),
    "400": (openai.BadRequestError, 400), "400_response_format": (openai.BadRequestError, 400),
}
SDK_TRANSPORT = {"hang": (openai.APITimeoutError, httpx2.ReadTimeout),
                 "cut": (openai.APIConnectionError, httpx2.RemoteProtocolError),
                 "reset": (openai.APIConnectionError, httpx2.ReadError)}


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_what_the_sdk_does_with_each_fault(kind):
    with FakeOpenAIServer(faults={0: kind}, hang_s=3.0, drip_s=1.5) as server:
        started = time.monotonic()
        outcome, value = _sdk_outcome(server)
        elapsed = time.monotonic() - started
    if kind in SDK_RAISES:
        error_type, status = SDK_RAISES[kind]
        assert (outcome, type(value), value.status_code) == ("raises", error_type, status)
        if kind == "429":
            assert value.response.headers["retry-after"] == "2"
        if kind == "429_ms":
            assert value.response.headers["retry-after-ms"] == "1500"
        if kind == "400_response_format":
            assert value.param == "response_format"
    elif kind in SDK_TRANSPORT:
        error_type, cause = SDK_TRANSPORT[kind]
        assert (outcome, type(value), type(value.__cause__)) == ("raises", error_type, cause)
        if kind == "hang":
            assert 0.9 <= elapsed < 2.5  # the SDK's timeout, per read
    elif kind == "html":
        assert outcome == "returns" and isinstance(value, str) and value.startswith("<!DOCTYPE html>")
    elif kind == "drip":
        assert outcome == "returns" and isinstance(value, openai.types.chat.ChatCompletion)
        assert elapsed >= 1.4  # longer than the 1 s timeout: it is per read, not a deadline
    else:
        assert kind in ANSWER_FAULTS
        assert outcome == "returns" and isinstance(value, openai.types.chat.ChatCompletion)
        if kind == "no_choices":
            assert value.choices == []
            return
        [choice] = value.choices
        finish = {"content_filter": "content_filter", "length": "length"}.get(kind, "stop")
        assert choice.finish_reason == finish
        if kind in ("content_filter", "refusal"):
            assert choice.message.content is None
        assert (choice.message.refusal is not None) == (kind == "refusal")


# ----- the fake as a separate process -----


def test_fake_server_runs_as_a_script(verifiers):
    script = Path(__file__).with_name("fake_openai.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", "--api_key", KEY],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the fake server printed no URL within 20 s"
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        images = distinct_images(2)
        assert verifiers(None, options={"base_url": base_url}).score("p", images) == expected(images)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0
