"""GeminiVerifier through the real google-genai client, against the local fake server (no network)."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fake_gemini import FakeGeminiServer, expected_grades, google_error_body, thinking_config
from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    METRIC_NAMES,
    RateLimitError,
    RetryableVerifierError,
    UngradeableError,
    Verifier,
    VerifierConfigError,
    VerifierError,
)
from ttsf_core.verifiers.gemini import GeminiVerifier
from ttsf_core.verifiers.remote import png_bytes
from ttsf_core.verifiers.registry import build_verifier

pytestmark = pytest.mark.timeout(60)
KEY = "test-key-123"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)


@pytest.fixture
def verifiers():
    """Builds verifiers pointed at a server and closes them after the test."""
    made: list[GeminiVerifier] = []

    def make(server: FakeGeminiServer | None = None, **kwargs) -> GeminiVerifier:
        options = dict(kwargs.pop("options", {}))
        if server is not None:
            options.setdefault("base_url", server.url)
        kwargs.setdefault("request_timeout_s", 10.0)
        made.append(GeminiVerifier(VerifierArgs(name="gemini", options=options, **kwargs)))
        return made[-1]

    yield make
    for verifier in made:
        verifier.close()


def distinct_images(count: int) -> list[Image.Image]:
    """Visibly different 32x32 images: solid colours, then horizontal gradients."""
    colours = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (250, 250, 250), (5, 5, 5), (128, 90, 200), (240, 200, 10)]
    images = [Image.new("RGB", (32, 32), colour) for colour in colours]
    for shift in range(max(0, count - len(images))):
        gradient = Image.new("RGB", (32, 32))
        pixels = [((x * 8 + shift * 37) % 256, y * 8, (x + y + shift * 11) % 256) for y in range(32) for x in range(32)]
        gradient.putdata(pixels)
        images.append(gradient)
    return images[:count]


def sha(image: Image.Image) -> str:
    return hashlib.sha256(png_bytes(image)).hexdigest()


def expected(images: list[Image.Image]):
    grades = [expected_grades(png_bytes(image)) for image in images]
    # The test means something only if no two images share grades.
    assert len({json.dumps(g.scores(), sort_keys=True) for g in grades}) == len(grades)
    return grades


# ----- order and concurrency -----


def test_grades_stay_with_their_images_when_answers_come_back_reversed(verifiers):
    images = distinct_images(6)
    with FakeGeminiServer(reverse_groups=6, group_wait_s=2.0) as server:
        grades = verifiers(server, max_concurrency=6).score("a red apple", images)
        records = server.requests
    assert grades == expected(images)
    # The server really did answer the last arrival first.
    arrival = [r.call_index for r in records]
    answer_order = [r.call_index for r in sorted(records, key=lambda r: r.answered_at)]
    assert answer_order == arrival[::-1]
    assert {r.image_sha256 for r in records} == {sha(image) for image in images}


def test_concurrency_is_bounded_by_max_concurrency(verifiers):
    images = distinct_images(9)
    with FakeGeminiServer(latency_s=0.1) as server:
        started = time.monotonic()
        grades = verifiers(server, max_concurrency=3).score("p", images)
        elapsed = time.monotonic() - started
        assert server.max_in_flight == 3  # never more, and really in parallel
        assert server.call_count == 9
    assert grades == expected(images)
    assert elapsed < 9 * 0.1  # faster than one at a time


def test_one_verifier_shared_by_threads_keeps_the_bound(verifiers):
    from concurrent.futures import ThreadPoolExecutor

    images = distinct_images(8)
    with FakeGeminiServer(latency_s=0.05) as server:
        verifier = verifiers(server, max_concurrency=2)
        with ThreadPoolExecutor(4) as callers:
            results = list(callers.map(lambda chunk: verifier.score("p", chunk), [images[:4], images[4:]]))
        assert server.max_in_flight == 2
    assert results[0] + results[1] == expected(images)


def test_empty_list_sends_nothing(verifiers):
    with FakeGeminiServer() as server:
        assert verifiers(server).score("p", []) == []
        assert server.call_count == 0


# ----- what goes over the wire -----


@pytest.mark.parametrize("api_version", [None, "v1", "v1beta"])
def test_request_path_model_and_key(verifiers, api_version):
    options = {"api_version": api_version} if api_version else {}
    with FakeGeminiServer(api_key=KEY) as server:
        image = distinct_images(1)[0]
        [grades] = verifiers(server, options=options, model_name="gemini-test-model").score("a cat on a mat", [image])
        [record] = server.requests
    assert grades == expected_grades(png_bytes(image))
    assert record.path == f"/{api_version or 'v1'}/models/gemini-test-model:generateContent"
    assert record.api_key == KEY


def test_default_model_and_generation_config(verifiers):
    with FakeGeminiServer() as server:
        verifiers(server, max_new_tokens=321).score("a lighthouse at dusk", distinct_images(1))
        [record] = server.requests
    assert record.model == GeminiVerifier.DEFAULT_MODEL == "gemini-3.8-flash"
    assert "<prompt>a lighthouse at dusk</prompt>" in record.prompt_text
    assert "0 to 10" in record.prompt_text
    config = record.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    # Gemini 3: temperature left at its default (Google's guidance), the lowest thinking level it takes
    # (3.8 Flash refuses MINIMAL), the model's own media resolution.
    assert "temperature" not in config
    assert thinking_config(record.body) == {"thinkingLevel": "LOW"}
    assert "mediaResolution" not in config
    assert config["maxOutputTokens"] == 321
    schema = json.dumps(config["responseSchema"])
    # The Gemini Developer API rejects additionalProperties in responseSchema with a 400.
    assert "additional" not in schema.lower()
    assert list(config["responseSchema"]["properties"]) == list(METRIC_NAMES)


def test_base_url_from_environment(verifiers, monkeypatch):
    with FakeGeminiServer() as server:
        monkeypatch.setenv("GEMINI_BASE_URL", server.url)
        verifiers(None).score("p", distinct_images(2))
        assert server.call_count == 2


def test_options_base_url_wins_over_environment(verifiers, monkeypatch):
    with FakeGeminiServer() as used, FakeGeminiServer() as ignored:
        monkeypatch.setenv("GEMINI_BASE_URL", ignored.url)
        verifiers(used).score("p", distinct_images(1))
        assert (used.call_count, ignored.call_count) == (1, 0)


def test_registry_builds_a_protocol_verifier():
    verifier = build_verifier(VerifierArgs(name="gemini"))
    try:
        assert isinstance(verifier, GeminiVerifier) and isinstance(verifier, Verifier)
    finally:
        verifier.close()


# ----- configuration errors at construction -----


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_key_fails_at_construction(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("GEMINI_API_KEY", value)
    with pytest.raises(VerifierConfigError, match="GEMINI_API_KEY"):
        GeminiVerifier(VerifierArgs())


@pytest.mark.parametrize(
    "options, match",
    [({"base_ulr": "http://x"}, "base_ulr"), ({"base_url": "127.0.0.1:80"}, "http"), ({"base_url": 5}, "http")],
)
def test_bad_options_fail_at_construction(options, match):
    with pytest.raises(VerifierConfigError, match=match):
        GeminiVerifier(VerifierArgs(options=options))


def test_bad_base_url_environment_fails_at_construction(monkeypatch):
    monkeypatch.setenv("GEMINI_BASE_URL", "localhost:1234")
    with pytest.raises(VerifierConfigError, match="GEMINI_BASE_URL"):
        GeminiVerifier(VerifierArgs())


# ----- HTTP errors -----


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


RATE_LIMIT_CASES = [  # (Retry-After header, error body, the wait the caller must get)
    ({"Retry-After": "1"}, None, 1.0),
    ({"Retry-After": "17"}, None, 17.0),
    ({}, google_error_body(429, retry_delay="7s"), 7.0),
    ({"Retry-After": "3"}, google_error_body(429, retry_delay="7.5s"), 7.5),  # the longer wait wins
    ({"Retry-After": "soon"}, None, None),  # unreadable: no hint rather than a made-up one
    ({}, None, None),
]


def test_rate_limit_carries_retry_after(verifiers):
    failures = [(429, headers, body) for headers, body, _ in RATE_LIMIT_CASES]
    with FakeGeminiServer(failures=failures) as server:
        verifier = verifiers(server, max_concurrency=1)
        for headers, body, expected_wait in RATE_LIMIT_CASES:  # one scripted 429 per call
            with pytest.raises(RateLimitError) as caught:
                verifier.score("p", distinct_images(1))
            assert caught.value.retry_after == expected_wait, (headers, body)
        assert server.call_count == len(RATE_LIMIT_CASES)


def test_rate_limit_retry_after_as_http_date(verifiers):
    with FakeGeminiServer(failures=[(429, {"Retry-After": _http_date(30)})]) as server:
        with pytest.raises(RateLimitError) as caught:
            verifiers(server).score("p", distinct_images(1))
    assert 27 <= caught.value.retry_after <= 31


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_retryable_and_a_retry_succeeds(verifiers, status):
    images = distinct_images(3)
    with FakeGeminiServer(failures=[(status, {})]) as server:
        verifier = verifiers(server, max_concurrency=1)
        with pytest.raises(RetryableVerifierError) as caught:
            verifier.score("p", images)
        assert not isinstance(caught.value, RateLimitError)
        assert verifier.score("p", images) == expected(images)  # the caller's retry works


@pytest.mark.parametrize("status", [400, 401, 403])
def test_wrong_key_is_a_config_error(verifiers, monkeypatch, status):
    monkeypatch.setenv("GEMINI_API_KEY", "not-the-key")
    with FakeGeminiServer(api_key=KEY, wrong_key_status=status) as server:
        with pytest.raises(VerifierConfigError, match="GEMINI_API_KEY"):
            verifiers(server).score("p", distinct_images(2))
        assert server.wait_for_answers(2)  # the second request may still be on its way back
        assert {r.status for r in server.requests} == {status}


def test_unknown_model_is_a_config_error(verifiers):
    with FakeGeminiServer(failures=[(404, {})]) as server:
        with pytest.raises(VerifierConfigError, match="gemini-nope"):
            verifiers(server, model_name="gemini-nope").score("p", distinct_images(1))


def test_other_client_error_is_not_retryable(verifiers):
    with FakeGeminiServer(failures=[(400, {})]) as server:
        with pytest.raises(VerifierError) as caught:
            verifiers(server).score("p", distinct_images(1))
    assert not isinstance(caught.value, VerifierConfigError)
    assert caught.value.image_index == 0


# ----- malformed answers -----


@pytest.mark.parametrize("mode", ["not_json", "out_of_range", "missing_aspect", "blocked"])
def test_malformed_answer_names_the_bad_image(verifiers, mode):
    images = distinct_images(4)
    with FakeGeminiServer(malformed={sha(images[2]): mode}) as server:
        with pytest.raises(VerifierError) as caught:
            verifiers(server, max_concurrency=4).score("p", images)
    # A safety block is final (UngradeableError); a malformed answer may be asked again (VerifierError).
    assert type(caught.value) is (UngradeableError if mode == "blocked" else VerifierError)
    assert caught.value.image_index == 2
    assert "image 2" in str(caught.value)


def test_malformed_by_call_number(verifiers):
    images = distinct_images(3)
    with FakeGeminiServer(malformed={1: "not_json"}) as server:
        with pytest.raises(VerifierError) as caught:
            verifiers(server, max_concurrency=1).score("p", images)  # one at a time: call n is image n
    assert caught.value.image_index == 1


# ----- transport failures -----


def test_request_timeout_is_retryable(verifiers):
    with FakeGeminiServer(latency_s=2.0) as server:
        started = time.monotonic()
        with pytest.raises(RetryableVerifierError, match="image 0"):
            verifiers(server, request_timeout_s=0.2).score("p", distinct_images(1))
        assert time.monotonic() - started < 1.5  # gave up at the timeout, not when the server answered


def test_connection_refused_is_retryable(verifiers):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = verifiers(None, options={"base_url": f"http://127.0.0.1:{port}"})
    with pytest.raises(RetryableVerifierError):
        verifier.score("p", distinct_images(1))


# ----- the fake as a separate process -----


def test_fake_server_runs_as_a_script(verifiers):
    script = Path(__file__).with_name("fake_gemini.py")
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--latency_s", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the fake server printed no URL within 20 s"
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        images = distinct_images(2)
        assert verifiers(None, options={"base_url": url}).score("p", images) == expected(images)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0


def test_a_video_over_the_inline_limit_is_ungradeable_and_never_sent(verifiers):
    from ttsf_core.verifiers.base import UngradeableError
    from ttsf_core.verifiers.gemini import INLINE_LIMIT_BYTES

    with FakeGeminiServer() as server:
        verifier = verifiers(server)
        (result,) = verifier.score_videos_partial("a prompt", [b"\0" * (INLINE_LIMIT_BYTES + 1)])
        assert server.requests == []
    assert isinstance(result, UngradeableError)
    assert "over Gemini's 20 MB inline request limit" in str(result) and "video_grading: frames" in str(result)
