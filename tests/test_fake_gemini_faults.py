"""The fake Gemini's fault schedule, and what the real google-genai SDK does with each fault.

Every fault kind of `fake_gemini.FaultSchedule` is sent to the real client
(`genai.Client(api_key=..., http_options=types.HttpOptions(base_url=..., timeout=ms))`,
`client.models.generate_content(model=DEFAULT_GEMINI_MODEL, contents=[text part, PNG part],
config=<the verifier's JSON-schema config>)`), and what comes back is asserted exactly: the
verifier's error classification is built on these observations. The SDK's own retry is off (its
default), so each call is one request. Transport errors come from the HTTP library the SDK runs
on: httpx2 when it is installed (the SDK's default, and this environment's), else httpx; the
table writes it `<httpx>`.

| kind             | the SDK                                                                               |
|------------------|---------------------------------------------------------------------------------------|
| 429              | raises google.genai.errors.ClientError, code 429, status RESOURCE_EXHAUSTED; error.response.headers["Retry-After"] and a RetryInfo retryDelay in error.details |
| 500              | raises google.genai.errors.ServerError, code 500, status INTERNAL                     |
| 503              | raises google.genai.errors.ServerError, code 503, status UNAVAILABLE                  |
| 401              | raises google.genai.errors.ClientError, code 401, status UNAUTHENTICATED              |
| 403              | raises google.genai.errors.ClientError, code 403, status PERMISSION_DENIED            |
| 400_key          | raises google.genai.errors.ClientError, code 400, status INVALID_ARGUMENT, details hold ErrorInfo reason API_KEY_INVALID |
| hang             | raises <httpx>.ReadTimeout (a TimeoutException) after the client's timeout            |
| drip             | returns the whole valid answer, however long it takes: the timeout is per read, not a deadline |
| cut              | raises <httpx>.RemoteProtocolError ("peer closed connection without sending complete message body") |
| reset            | raises <httpx>.ReadError ([Errno 104] Connection reset by peer; a NetworkError)       |
| html             | raises json.decoder.JSONDecodeError (a ValueError) from models.py's json.loads -- NOT errors.UnknownApiResponseError |
| not_json_text    | returns: .text is the prose, .parsed None, finish_reason STOP                         |
| missing_fields   | returns: .text is JSON without emotional_or_thematic_resonance, .parsed the dict      |
| out_of_range     | returns: .text is JSON with overall_score.score 11, .parsed the dict                  |
| nan              | returns: .text holds the bare token NaN, .parsed the dict with float('nan')           |
| string_score     | returns: .text is JSON with overall_score.score "high", .parsed the dict              |
| empty_candidates | returns: .text None, .candidates [], .prompt_feedback None                            |
| safety           | returns: .text None, candidates[0].finish_reason FinishReason.SAFETY, candidates[0].content None |
| blocked          | returns: .text None, .candidates None, prompt_feedback.block_reason BlockedReason.SAFETY |

For every kind that returns, `.text` is never an exception: a caller learns of the fault only by
reading the text, the finish reason or the prompt feedback.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import random
import select
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from fake_gemini import (
    ANSWER_FAULTS,
    FAULT_KINDS,
    HTTP_ERROR_FAULTS,
    TRANSIENT_FAULTS,
    TRANSPORT_FAULTS,
    FakeGeminiServer,
    FaultSchedule,
    expected_grades,
)
from ttsf_core.verifiers.base import METRIC_NAMES, Grades
from ttsf_core.verifiers.gemini_models import DEFAULT_GEMINI_MODEL

pytestmark = pytest.mark.timeout(60)
KEY = "fault-test-key"
MODEL = DEFAULT_GEMINI_MODEL


# ----- helpers -----


def png(index: int) -> bytes:
    """A distinct small PNG for each index (a solid colour)."""
    colour = ((index * 37) % 256, (index * 91 + 13) % 256, (index * 53 + 101) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _schema(node):
    if isinstance(node, dict):
        return {key: _schema(value) for key, value in node.items() if key != "additionalProperties"}
    if isinstance(node, list):
        return [_schema(value) for value in node]
    return node


# As the verifier asks: JSON out, with the Grades schema (without additionalProperties, which the
# Gemini Developer API refuses).
CONFIG = types.GenerateContentConfig(
    response_mime_type="application/json", response_schema=_schema(Grades.model_json_schema()), temperature=0
)


def client_for(server: FakeGeminiServer, timeout_ms: int = 5000) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.url, timeout=timeout_ms))


def ask(client: genai.Client, image: bytes) -> types.GenerateContentResponse:
    return client.models.generate_content(
        model=MODEL,
        contents=[types.Part.from_text(text="Grade this image."), types.Part.from_bytes(data=image, mime_type="image/png")],
        config=CONFIG,
    )


def http_backend(client: genai.Client):
    """The module (httpx2 or httpx) whose client the SDK sends with."""
    for cls in type(client._api_client._httpx_client).__mro__:
        top = cls.__module__.split(".")[0]
        if top in ("httpx", "httpx2"):
            return sys.modules[top]
    raise AssertionError("the SDK's HTTP client is neither httpx nor httpx2")


# ----- what the SDK does with each fault, table-driven -----


def raises(cls, code=None, status=None):
    return ("raises", cls, code, status)


def transport(name):
    return ("transport", name)


def returns(check):
    return ("returns", check)


def _text_json(response):
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    return json.loads(response.text)


def _check_drip(response, image):
    assert Grades.model_validate_json(response.text) == expected_grades(image)


def _check_not_json_text(response, image):
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.text.startswith("The image looks lovely")
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert response.parsed is None


def _check_missing_fields(response, image):
    answer = _text_json(response)
    assert list(answer) == [name for name in METRIC_NAMES if name != "emotional_or_thematic_resonance"]
    assert response.parsed == answer


def _check_out_of_range(response, image):
    answer = _text_json(response)
    assert answer["overall_score"]["score"] == 11
    assert response.parsed["overall_score"]["score"] == 11


def _check_nan(response, image):
    assert '"score": NaN}' in response.text  # the bare token, which Python's json accepts
    assert math.isnan(_text_json(response)["overall_score"]["score"])
    assert math.isnan(response.parsed["overall_score"]["score"])


def _check_string_score(response, image):
    assert _text_json(response)["overall_score"]["score"] == "high"
    assert response.parsed["overall_score"]["score"] == "high"


def _check_empty_candidates(response, image):
    assert response.text is None
    assert response.candidates == []
    assert response.prompt_feedback is None


def _check_safety(response, image):
    assert response.text is None
    [candidate] = response.candidates
    assert candidate.finish_reason == types.FinishReason.SAFETY
    assert candidate.content is None
    assert response.prompt_feedback is None


def _check_blocked(response, image):
    assert response.text is None
    assert response.candidates is None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY


SDK_OUTCOMES = {
    "429": raises(errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
    "500": raises(errors.ServerError, 500, "INTERNAL"),
    "503": raises(errors.ServerError, 503, "UNAVAILABLE"),
    "401": raises(errors.ClientError, 401, "UNAUTHENTICATED"),
    "403": raises(errors.ClientError, 403, "PERMISSION_DENIED"),
    "400_key": raises(errors.ClientError, 400, "INVALID_ARGUMENT"),
    "hang": transport("ReadTimeout"),
    "drip": returns(_check_drip),
    "cut": transport("RemoteProtocolError"),
    "reset": transport("ReadError"),
    "html": raises(json.JSONDecodeError),
    "not_json_text": returns(_check_not_json_text),
    "missing_fields": returns(_check_missing_fields),
    "out_of_range": returns(_check_out_of_range),
    "nan": returns(_check_nan),
    "string_score": returns(_check_string_score),
    "empty_candidates": returns(_check_empty_candidates),
    "safety": returns(_check_safety),
    "blocked": returns(_check_blocked),
}


def test_the_table_covers_every_kind():
    assert set(SDK_OUTCOMES) == set(FAULT_KINDS)
    assert len(FAULT_KINDS) == len(set(FAULT_KINDS)) == len(HTTP_ERROR_FAULTS + TRANSPORT_FAULTS + ANSWER_FAULTS)
    assert set(TRANSIENT_FAULTS) <= set(FAULT_KINDS)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_what_the_sdk_does_with_each_fault(kind):
    image = png(1)
    # hang: the client gives up after 1 s; drip: short, so that only the answer is checked here.
    schedule = FaultSchedule(persistent={sha(image): kind}, retry_after_s=2.5, hang_s=5.0, drip_interval_s=0.1, drip_s=0.3)
    with FakeGeminiServer(api_key=KEY, faults=schedule) as server:
        client = client_for(server, timeout_ms=1000 if kind == "hang" else 5000)
        try:
            started = time.monotonic()
            outcome = SDK_OUTCOMES[kind]
            if outcome[0] == "returns":
                outcome[1](ask(client, image), image)
            else:
                with pytest.raises(Exception) as caught:
                    ask(client, image)
                error = caught.value
                if outcome[0] == "raises":
                    _, cls, code, status = outcome
                    assert type(error) is cls, repr(error)
                    if code is not None:
                        assert (error.code, error.status) == (code, status)
                        assert error.response.status_code == code
                else:
                    backend = http_backend(client)
                    assert type(error) is getattr(backend, outcome[1]), repr(error)
                    assert isinstance(error, backend.TransportError)
                _check_error_details(kind, error, started)
            assert server.wait_for_answers(1, timeout_s=5.0)
            [record] = server.requests
        finally:
            client.close()
    assert (record.fault, record.attempt, record.image_sha256) == (kind, 0, sha(image))
    assert record.status == {"hang": None, "reset": None, "cut": 200, "drip": 200, "html": 200}.get(
        kind, int(kind[:3]) if kind in HTTP_ERROR_FAULTS else 200
    )
    assert record.delivered is (kind not in ("hang", "reset", "cut"))
    assert server.fault_counts() == {kind: 1}


def _check_error_details(kind: str, error: Exception, started: float) -> None:
    if kind == "429":  # both hints, the header rounded up to whole seconds
        assert error.response.headers["Retry-After"] == "3"
        [retry_info] = [d for d in error.details["error"]["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
        assert retry_info["retryDelay"] == "2.5s"
    elif kind == "400_key":
        reasons = [detail.get("reason") for detail in error.details["error"]["details"]]
        assert reasons == ["API_KEY_INVALID"]
        assert error.message == "API key not valid. Please pass a valid API key."
    elif kind == "hang":
        assert 0.9 <= time.monotonic() - started < 3.0  # the client's timeout, not the server's hang_s
    elif kind == "cut":
        assert "peer closed connection without sending complete message body" in str(error)
    elif kind == "reset":
        assert "Connection reset by peer" in str(error)
    elif kind == "html":
        assert isinstance(error, ValueError) and not isinstance(error, errors.UnknownApiResponseError)
        assert error.doc.startswith("<!DOCTYPE html>")


def test_a_hung_request_is_closed_once_the_client_gives_up():
    image = png(2)
    with FakeGeminiServer(faults=FaultSchedule(by_call={0: "hang"}, hang_s=8.0)) as server:
        client = client_for(server, timeout_ms=500)
        try:
            with pytest.raises(http_backend(client).ReadTimeout):
                ask(client, image)
            assert server.wait_for_answers(1, timeout_s=3.0)  # long before hang_s
            [record] = server.requests
            assert record.answered_at - record.arrived_at < 2.0
            assert (record.fault, record.status, record.delivered) == ("hang", None, False)
            # The same client goes on working: the next request is answered.
            assert Grades.model_validate_json(ask(client, image).text) == expected_grades(image)
        finally:
            client.close()


# ----- drip: a per-read timeout is not a deadline -----


def test_drip_outlasts_a_one_second_timeout_through_the_sdk():
    image = png(3)
    schedule = FaultSchedule(persistent={sha(image): "drip"}, drip_interval_s=0.5, drip_s=4.0)
    with FakeGeminiServer(faults=schedule) as server:
        client = client_for(server, timeout_ms=1000)  # the SDK's timeout: 1 s per read
        try:
            started = time.monotonic()
            response = ask(client, image)
            elapsed = time.monotonic() - started
        finally:
            client.close()
        assert server.wait_for_answers(1)
        [record] = server.requests
    assert 3.5 <= elapsed < 8.0
    assert Grades.model_validate_json(response.text) == expected_grades(image)
    assert (record.fault, record.status, record.delivered) == ("drip", 200, True)


def test_drip_outlasts_a_one_second_httpx_read_timeout():
    image = png(4)
    schedule = FaultSchedule(by_call={0: "drip"}, drip_interval_s=0.5, drip_s=4.0)
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "grade"}, {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}]}
        ]
    }
    with FakeGeminiServer(faults=schedule) as server:
        url = f"{server.url}/v1beta/models/{MODEL}:generateContent"
        with httpx.Client(timeout=httpx.Timeout(1.0)) as http:
            started = time.monotonic()
            with http.stream("POST", url, json=body) as response:
                chunks = [(time.monotonic(), chunk) for chunk in response.iter_raw()]
            elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 3.0 <= elapsed < 8.0
    gaps = [later - earlier for (earlier, _), (later, _) in zip(chunks, chunks[1:])]
    assert len(chunks) >= 6 and max(gaps) < 1.0  # bytes kept coming, each read well within 1 s
    answer = json.loads(b"".join(chunk for _, chunk in chunks))
    assert Grades.model_validate_json(answer["candidates"][0]["content"]["parts"][0]["text"]) == expected_grades(image)


# ----- the schedule: deterministic per image, capped, persistent, scripted -----


def test_the_decision_is_a_pure_function_of_seed_image_and_attempt():
    one = FaultSchedule(seed=11, rate=0.5, kinds=FAULT_KINDS)
    two = FaultSchedule(seed=11, rate=0.5, kinds=FAULT_KINDS)
    other_seed = FaultSchedule(seed=12, rate=0.5, kinds=FAULT_KINDS)
    shas = [sha(png(i)) for i in range(50)]
    plans = {s: one.plan(s, 6) for s in shas}
    assert plans == {s: two.plan(s, 6) for s in reversed(shas)}
    assert plans != {s: other_seed.plan(s, 6) for s in shas}
    assert all(one.fault_for(s, k) == plans[s][k] for s in reversed(shas) for k in reversed(range(6)))
    drawn = {kind for plan in plans.values() for kind in plan if kind}
    assert len(drawn) >= 10  # every kind can be drawn


def test_same_seed_same_faults_per_image_whatever_the_thread_order():
    images = [png(i) for i in range(24)]
    schedule = FaultSchedule(seed=5, rate=0.6, kinds=TRANSIENT_FAULTS, max_faults_per_image=3)

    def run(order: list[int], workers: int) -> list:
        with FakeGeminiServer(faults=schedule) as server:
            client = client_for(server)
            transient = (errors.APIError, http_backend(client).TransportError)

            def until_answered(index: int) -> int:
                for attempt in range(6):  # bounded: the cap makes the 4th attempt succeed
                    try:
                        ask(client, images[index])
                        return attempt
                    except transient:
                        time.sleep(random.uniform(0, 0.01))  # shuffle the interleaving
                raise AssertionError(f"image {index} never answered")

            try:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(until_answered, order))
            finally:
                client.close()
            assert server.wait_for_answers(len(server.requests), timeout_s=5.0)
            return server.requests

    forward = run(list(range(24)), workers=8)
    backward = run(list(reversed(range(24))), workers=3)
    assert [r.image_sha256 for r in forward] != [r.image_sha256 for r in backward]  # other arrival orders
    faults_forward = {(r.image_sha256, r.attempt): r.fault for r in forward}
    faults_backward = {(r.image_sha256, r.attempt): r.fault for r in backward}
    assert faults_forward == faults_backward
    for image in images:  # exactly the schedule's plan: faults, then the first clean answer
        plan = schedule.plan(sha(image), 4)
        clean = plan.index(None)
        assert [faults_forward[(sha(image), k)] for k in range(clean + 1)] == plan[: clean + 1]
        assert (sha(image), clean + 1) not in faults_forward
    per_image = [sum(f is not None for (s, _), f in faults_forward.items() if s == sha(image)) for image in images]
    assert max(per_image) == 3 and min(per_image) == 0  # the cap was reached, and honoured
    drawn = {f for f in faults_forward.values() if f}
    assert drawn <= set(TRANSIENT_FAULTS) and len(drawn) >= 3


def test_max_faults_per_image():
    s = sha(png(6))
    assert FaultSchedule(rate=1.0, kinds=("503",)).plan(s, 6) == ["503"] * 3 + [None] * 3  # default 3
    assert FaultSchedule(rate=1.0, kinds=("503",), max_faults_per_image=1).plan(s, 3) == ["503", None, None]
    assert FaultSchedule(rate=1.0, kinds=("503",), max_faults_per_image=0).plan(s, 3) == [None] * 3
    assert FaultSchedule(rate=1.0, kinds=("503",), max_faults_per_image=None).plan(s, 8) == ["503"] * 8
    capped = FaultSchedule(seed=3, rate=0.7, kinds=FAULT_KINDS, max_faults_per_image=2)
    for i in range(100):
        plan = capped.plan(sha(png(i)), 12)
        assert sum(kind is not None for kind in plan) <= 2
        # Capping only removes later faults: the draws before the cap stand.
        assert plan[: plan.index(None)] == [capped.draw(sha(png(i)), k) for k in range(plan.index(None))]


def test_rate_is_the_fraction_of_requests_faulted():
    shas = [sha(png(i)) for i in range(200)]
    for seed, rate in [(0, 0.1), (1, 0.3), (2, 0.5), (3, 0.9)]:
        schedule = FaultSchedule(seed=seed, rate=rate, kinds=FAULT_KINDS)
        observed = sum(schedule.fault_for(s, 0) is not None for s in shas) / len(shas)
        assert abs(observed - rate) <= 0.1, (seed, rate, observed)
    assert all(FaultSchedule(rate=0.0).fault_for(s, 0) is None for s in shas)
    assert all(FaultSchedule(rate=1.0).fault_for(s, 0) is not None for s in shas)


def test_rate_through_the_server_over_200_images():
    schedule = FaultSchedule(seed=9, rate=0.3, kinds=("429", "500", "503"), weights=(2, 1, 1))
    images = [png(i) for i in range(200)]
    with FakeGeminiServer(faults=schedule) as server:
        client = client_for(server)
        try:
            for image in images:
                try:
                    ask(client, image)
                except errors.APIError:
                    pass
        finally:
            client.close()
        assert server.wait_for_answers(200)  # each record is completed just after its answer went out
        counts = server.fault_counts()
        records = server.requests
    assert abs(sum(counts.values()) / 200 - 0.3) <= 0.1
    assert counts == {kind: sum(schedule.fault_for(sha(i), 0) == kind for i in images) for kind in counts}
    assert counts["429"] > counts["500"] and counts["429"] > counts["503"]  # weight 2 against 1
    assert [r.status for r in records] == [int(r.fault) if r.fault else 200 for r in records]


def test_weights_and_kinds():
    shas = [sha(png(i)) for i in range(100)]
    only_first = FaultSchedule(rate=1.0, kinds=("429", "safety"), weights=(1, 0), max_faults_per_image=None)
    assert {only_first.fault_for(s, k) for s in shas for k in range(3)} == {"429"}
    single = FaultSchedule(rate=1.0, kinds="reset")
    assert single.kinds == ("reset",) and single.fault_for(shas[0], 0) == "reset"
    assert FaultSchedule.parse_kinds("429:3, 503 ,reset") == (("429", "503", "reset"), (3.0, 1.0, 1.0))
    assert FaultSchedule.parse_kinds("429,503") == (("429", "503"), None)


def test_persistent_faults_never_let_an_image_through():
    never, fine = png(7), png(8)
    schedule = FaultSchedule(seed=1, rate=0.0, persistent={sha(never): "safety"})
    assert schedule.plan(sha(never), 10) == ["safety"] * 10  # beyond max_faults_per_image
    with FakeGeminiServer(faults=schedule) as server:
        client = client_for(server)
        try:
            for _ in range(5):
                assert ask(client, never).candidates[0].finish_reason == types.FinishReason.SAFETY
            assert ask(client, fine).text
        finally:
            client.close()
        assert server.wait_for_answers(6)
        assert [(r.attempt, r.fault) for r in server.requests] == [(k, "safety") for k in range(5)] + [(0, None)]
        assert server.fault_counts() == {"safety": 5}


def test_faults_scripted_by_call_index():
    schedule = FaultSchedule(by_call={0: "503", 2: "blocked"})
    with FakeGeminiServer(faults=schedule) as server:
        client = client_for(server)
        try:
            with pytest.raises(errors.ServerError):
                ask(client, png(1))
            assert ask(client, png(1)).text
            assert ask(client, png(2)).prompt_feedback.block_reason == types.BlockedReason.SAFETY
            assert ask(client, png(2)).text
        finally:
            client.close()
        assert server.wait_for_answers(4)
        assert [(r.call_index, r.attempt, r.fault) for r in server.requests] == [
            (0, 0, "503"), (1, 1, None), (2, 0, "blocked"), (3, 1, None)
        ]


def test_faults_need_the_right_key_and_leave_scripted_failures_first():
    image = png(1)
    schedule = FaultSchedule(rate=1.0, kinds=("500",), max_faults_per_image=None)
    with FakeGeminiServer(api_key=KEY, faults=schedule, failures=[(429, {})]) as server:
        client = client_for(server)
        wrong = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.url, timeout=5000))
        try:
            with pytest.raises(errors.ClientError) as first:
                ask(client, image)
            with pytest.raises(errors.ClientError) as refused:
                ask(wrong, image)
            with pytest.raises(errors.ServerError):
                ask(client, image)
        finally:
            client.close()
            wrong.close()
        assert server.wait_for_answers(3)
        assert (first.value.code, refused.value.code) == (429, 403)
        assert [(r.attempt, r.fault, r.status) for r in server.requests] == [(0, None, 429), (1, None, 403), (2, "500", 500)]


def test_bad_schedules_are_refused():
    for kwargs, match in [
        ({"rate": 1.5}, "rate"),
        ({"rate": 0.5, "kinds": ()}, "kinds"),
        ({"kinds": ("429", "teapot")}, "teapot"),
        ({"persistent": {"abc": "nope"}}, "nope"),
        ({"by_call": {0: "418"}}, "418"),
        ({"kinds": ("429", "500"), "weights": (1,)}, "weights"),
        ({"kinds": ("429",), "weights": (0,)}, "weights"),
        ({"max_faults_per_image": -1}, "max_faults_per_image"),
        ({"hang_s": 60}, "hang_s"),
        ({"drip_interval_s": 5, "drip_s": 4}, "drip_interval_s"),
    ]:
        with pytest.raises(ValueError, match=match):
            FaultSchedule(**kwargs)
    with pytest.raises(ValueError, match="faults"):
        FakeGeminiServer(faults={"rate": 0.5})
    with pytest.raises(ValueError, match="weight"):
        FaultSchedule.parse_kinds("429:lots")


# ----- models.get -----


@pytest.mark.parametrize("api_version", [None, "v1", "v1beta"])
def test_models_get(api_version):
    with FakeGeminiServer(api_key=KEY) as server:
        client = genai.Client(
            api_key=KEY, http_options=types.HttpOptions(base_url=server.url, api_version=api_version, timeout=5000)
        )
        try:
            model = client.models.get(model=MODEL)
        finally:
            client.close()
        [record] = server.metadata_requests
        assert server.requests == [] and server.call_count == 0  # not a generateContent request
    assert model.name == f"models/{MODEL}"
    assert model.display_name and "generateContent" in model.supported_actions
    assert model.thinking is True  # today's models say whether they think
    assert record.path == f"/{api_version or 'v1'}/models/{MODEL}"  # the SDK's default version is v1
    assert (record.model, record.api_key, record.status) == (MODEL, KEY, 200)


@pytest.mark.parametrize("status, name", [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")])
def test_models_get_checks_the_key(status, name):
    with FakeGeminiServer(api_key=KEY, wrong_key_status=status) as server:
        client = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.url, timeout=5000))
        try:
            with pytest.raises(errors.ClientError) as caught:
                client.models.get(model=MODEL)
        finally:
            client.close()
        assert [r.status for r in server.metadata_requests] == [status]
    assert (caught.value.code, caught.value.status) == (status, name)


def test_unknown_model_is_404_for_models_get_and_generate_content():
    with FakeGeminiServer(known_models=[MODEL, "models/gemini-3.1-pro-preview"]) as server:
        client = client_for(server)
        try:
            assert client.models.get(model="gemini-3.1-pro-preview").name == "models/gemini-3.1-pro-preview"
            with pytest.raises(errors.ClientError) as caught:
                client.models.get(model="gemini-nope")
            with pytest.raises(errors.ClientError) as generating:
                client.models.generate_content(model="gemini-nope", contents=[types.Part.from_bytes(data=png(1), mime_type="image/png")])
            assert ask(client, png(1)).text
        finally:
            client.close()
        assert [r.status for r in server.metadata_requests] == [200, 404]
    for error in (caught.value, generating.value):
        assert (error.code, error.status) == (404, "NOT_FOUND")
        assert "models/gemini-nope is not found" in error.message


# ----- the script mode -----


def _start_script(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_gemini.py")), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ready, _, _ = select.select([process.stdout], [], [], 20)
    if not ready:
        _stop(process)
        raise AssertionError("the fake server printed no URL within 20 s")
    return process, process.stdout.readline().strip()


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_script_mode_injects_faults():
    process, url = _start_script("--fault-rate", "1", "--fault-seed", "3", "--fault-kinds", "503", "--fault-max-per-image", "1")
    try:
        assert url.startswith("http://127.0.0.1:")
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=url, timeout=5000))
        try:
            with pytest.raises(errors.ServerError):
                ask(client, png(1))
            assert ask(client, png(1)).text  # the cap of 1 lets the second through
        finally:
            client.close()
        with urllib.request.urlopen(f"{url}/_fake/requests", timeout=5) as answer:
            summary = json.load(answer)
    finally:
        _stop(process)
    assert process.returncode == 0
    assert [(r["attempt"], r["fault"], r["status"]) for r in summary["requests"]] == [(0, "503", 503), (1, None, 200)]


def test_script_mode_refuses_unknown_fault_kinds():
    process = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fake_gemini.py")), "--port", "0", "--fault-rate", "0.5",
         "--fault-kinds", "429,teapot"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 2
    assert "'teapot'" in process.stderr and "400_key" in process.stderr
