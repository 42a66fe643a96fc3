"""A local stand-in for an OpenAI-compatible chat-completions server, over real HTTP, for offline tests.

It answers `POST /v1/chat/completions` and `GET /v1/models/{id}` (and `GET /v1/models`) the way the
OpenAI API does, with grades derived from the pixels of the image sent as a data URL in an
`image_url` content part (`fake_gemini.expected_grades`), so a test can tell whether each score came
back with its own image. It checks the `Authorization: Bearer` key, checks what a real server
checks in `response_format` (a strict json_schema must be strict-mode valid; json_object needs the
word "JSON" in the messages), can hold requests and answer a group of them in reverse arrival order,
and injects faults by name:

    with FakeOpenAIServer(api_key="k", faults={2: "429", "<image sha256>": "refusal"}) as server:
        ... point the client at server.base_url (".../v1") ...
        server.requests  # what arrived, in arrival order, with the status answered

Faults (FAULT_KINDS): HTTP errors ("429" with Retry-After, "429_ms" with retry-after-ms,
"insufficient_quota", "500", "503", "401", "403", "404", "400", "400_response_format"), transport
faults ("hang", "drip", "cut", "reset", "html": a proxy's HTML page with status 200) and answers
that do not grade ("not_json_text", "missing_fields", "out_of_range", "string_score", "empty_content",
"no_choices", "length", "content_filter", "refusal"). `faults` maps a call index (0-based, arrival
order) or an image's sha256 to a kind; `failures` scripts the first arrivals in order, each a kind or
(status, headers[, body]) with body a dict (sent as JSON), a str, or None for OpenAI's error JSON.

Every wait is bounded (_HOLD_LIMIT_S). As a script it prints its base URL and serves until killed:

    python tests/fake_openai.py --port 0 --api_key k
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping

if __name__ == "__main__":  # run as a script: make ttsf_core and fake_gemini importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_gemini import expected_grades  # noqa: E402

HTTP_ERROR_FAULTS = ("429", "429_ms", "insufficient_quota", "500", "503", "401", "403", "404", "400",
                     "400_response_format")
TRANSPORT_FAULTS = ("hang", "drip", "cut", "reset", "html")
ANSWER_FAULTS = ("not_json_text", "missing_fields", "out_of_range", "string_score", "empty_content", "no_choices",
                 "length", "content_filter", "refusal")
FAULT_KINDS = HTTP_ERROR_FAULTS + TRANSPORT_FAULTS + ANSWER_FAULTS
_COMPLETIONS = re.compile(r"^/v1/chat/completions/?(?:\?.*)?$")
_MODEL = re.compile(r"^/v1/models/([^?]+)(?:\?.*)?$")
_MODELS = re.compile(r"^/v1/models/?(?:\?.*)?$")
_HOLD_LIMIT_S = 10.0  # no request is held longer than this, whatever the options say
_DATA_URL = re.compile(r"^data:image/(png|jpeg|webp|gif);base64,(.*)$", re.DOTALL)
REFUSAL_TEXT = "I'm sorry, but I can't help with grading this image."


def error_body(status: int, message: str | None = None, *, type_: str | None = None, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """An error body shaped like the OpenAI API's (`{"error": {message, type, param, code}}`)."""
    defaults = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key",
              "Incorrect API key provided: wr***ey. You can find your API key at https://platform.openai.com/account/api-keys."),
        403: ("invalid_request_error", "unsupported_country_region_territory",
              "Country, region, or territory not supported"),
        404: ("invalid_request_error", "model_not_found",
              "The model does not exist or you do not have access to it."),
        429: ("requests", "rate_limit_exceeded",
              "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. "
              "Please try again in 20s."),
        500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
        503: ("server_error", None, "The engine is currently overloaded, please try again later"),
    }
    default_type, default_code, default_message = defaults.get(status, ("api_error", None, f"HTTP {status}"))
    return {"error": {"message": message or default_message, "type": type_ or default_type, "param": param,
                      "code": code if code is not None else default_code}}


@dataclass
class RecordedRequest:
    """One chat-completions request as the fake saw it. Times are time.monotonic()."""

    call_index: int  # 0-based arrival order among chat-completions requests
    path: str
    model: str | None
    api_key: str | None  # the bearer token, None when no Authorization header came
    arrived_at: float
    image_sha256: str | None  # of the decoded image bytes
    image_mime: str | None
    text: str  # every text part of the messages, joined
    body: dict[str, Any] | None
    status: int | None = None  # None while held, or when no HTTP answer was sent (hang, reset)
    answered_at: float | None = None
    delivered: bool | None = None
    fault: str | None = None
    usage: dict[str, Any] | None = None  # the completion's `usage` answered (None: nothing billed)


@dataclass
class ModelRequest:
    """One GET /v1/models[/{id}] request."""

    path: str
    model: str | None  # None for the list
    api_key: str | None
    status: int | None = None


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    action: str | None = None  # "hang", "drip", "cut" or "reset"
    hold_s: float = 0.0


@dataclass
class _Group:
    deadline: float
    size: int = 0
    closed: bool = False
    answered: int = 0


class FakeOpenAIServer:
    """OpenAI chat completions on 127.0.0.1, in a daemon thread.

    api_key: when set, another bearer token (or none) is answered `wrong_key_status` (401 by default).
    known_models: when given, other models are answered 404 model_not_found (completions and
        models.retrieve alike).
    latency_s: a fixed delay before each completion answer.
    reverse_groups: hold completions until N are in flight (or group_wait_s passed since the first of
        the group), then answer them in reverse arrival order.
    faults: {call index or image sha256: kind}; failures: the first arrivals' answers, in order.
    json_schema_supported: False answers a json_schema response_format with 400 (param
        response_format), as servers without structured outputs do.
    retrieve_supported: False answers GET /v1/models/{id} with 404 (servers that only list models).
    retry_after: the Retry-After a "429" sends (seconds, as text); retry_after_ms for "429_ms".
    hang_s, drip_s: how long a "hang" holds its request, and a "drip" drips (a byte each 0.25 s).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 wrong_key_status: int = 401, known_models: Iterable[str] | None = None, latency_s: float = 0.0,
                 reverse_groups: int | None = None, group_wait_s: float = 1.0,
                 faults: Mapping[int | str, str] | None = None, failures: Iterable[Any] = (),
                 json_schema_supported: bool = True, retrieve_supported: bool = True, retry_after: str = "2",
                 retry_after_ms: str = "1500", hang_s: float = 5.0, drip_s: float = 3.0):
        for name, value in (("latency_s", latency_s), ("hang_s", hang_s), ("drip_s", drip_s),
                            ("group_wait_s", group_wait_s)):
            if not 0 <= value <= _HOLD_LIMIT_S:
                raise ValueError(f"{name}: received {value!r}, allowed: 0 to {_HOLD_LIMIT_S}")
        if reverse_groups is not None and reverse_groups < 1:
            raise ValueError(f"reverse_groups: received {reverse_groups!r}, allowed: None or >= 1")
        if wrong_key_status not in (401, 403):
            raise ValueError(f"wrong_key_status: received {wrong_key_status!r}, allowed: 401, 403")
        self.faults = dict(faults or {})
        self._failures = list(failures)
        unknown = sorted({kind for kind in [*self.faults.values(), *self._failures]
                          if isinstance(kind, str) and kind not in FAULT_KINDS})
        if unknown:
            raise ValueError(f"fault kinds: received {unknown!r}, allowed: {', '.join(FAULT_KINDS)}")
        self.api_key, self.wrong_key_status = api_key, wrong_key_status
        self.known_models = None if known_models is None else frozenset(known_models)
        self.latency_s, self.reverse_groups, self.group_wait_s = float(latency_s), reverse_groups, float(group_wait_s)
        self.json_schema_supported, self.retrieve_supported = json_schema_supported, retrieve_supported
        self.retry_after, self.retry_after_ms = retry_after, retry_after_ms
        self.hang_s, self.drip_s = float(hang_s), float(drip_s)
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._records: list[RecordedRequest] = []
        self._model_requests: list[ModelRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._group: _Group | None = None
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # ----- lifecycle -----

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.url}/v1"

    def start(self) -> "FakeOpenAIServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-openai", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake every held request, close the listener and every open connection."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
            connections = list(self._connections)
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ----- what tests read -----

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    @property
    def model_requests(self) -> list[ModelRequest]:
        with self._lock:
            return list(self._model_requests)

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def wait_for_answers(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until `count` completions have been answered or dropped; True if they were."""
        deadline = time.monotonic() + min(timeout_s, _HOLD_LIMIT_S)
        with self._lock:
            while sum(r.answered_at is not None for r in self._records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    # ----- one request (on the handler's thread) -----

    def _handle(self, handler: "_Handler") -> None:
        path = handler.path
        key = _bearer(handler.headers.get("Authorization"))
        if handler.command == "GET" and (_MODEL.match(path) or _MODELS.match(path)):
            self._handle_models(handler, path, key)
            return
        if handler.command != "POST" or not _COMPLETIONS.match(path):
            handler.reply(_json(404, error_body(404, f"Invalid URL ({handler.command} {path})", code="")))
            return
        body = handler.read_json()
        image, mime = _image(body)
        with self._lock:
            record = RecordedRequest(
                call_index=len(self._records), path=path, model=body.get("model") if isinstance(body, dict) else None,
                api_key=key, arrived_at=time.monotonic(),
                image_sha256=hashlib.sha256(image).hexdigest() if image is not None else None, image_mime=mime,
                text=_text(body), body=body if isinstance(body, dict) else None)
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            key_ok = self.api_key is None or key == self.api_key
            scripted = self._failures.pop(0) if key_ok and self._failures else None
            if scripted is None and key_ok:
                record.fault = self.faults.get(record.call_index) or self.faults.get(record.image_sha256 or "")
            elif isinstance(scripted, str):
                record.fault, scripted = scripted, None
            group, slot = self._join_group() if self.reverse_groups else (None, 0)
            self._lock.notify_all()
        try:
            answer = _scripted(scripted) if scripted is not None else self._answer(record, body, image)
            answer = _billed(record, answer)
        except Exception as error:  # a broken request is still answered, and leaves the count
            answer = _json(400, error_body(400, f"Could not process the request: {error}"))
        if self.latency_s > 0:
            self._stopping.wait(self.latency_s)
        if group is not None:
            self._wait_for_turn(group, slot)
        with self._lock:
            self._in_flight -= 1  # before the client can see the answer: its next request never finds it counted
        delivered = handler.reply(answer)
        with self._lock:
            record.status = None if answer.action in ("hang", "reset") else answer.status
            record.answered_at, record.delivered = time.monotonic(), delivered
            if group is not None:
                group.answered += 1
            self._lock.notify_all()

    def _handle_models(self, handler: "_Handler", path: str, key: str | None) -> None:
        match = _MODEL.match(path)
        model = urllib.parse.unquote(match.group(1)) if match else None
        record = ModelRequest(path=path, model=model, api_key=key)
        with self._lock:
            self._model_requests.append(record)
        if self.api_key is not None and key != self.api_key:
            answer = _json(self.wrong_key_status, error_body(self.wrong_key_status))
        elif model is None:
            served = sorted(self.known_models or {"gpt-4o-mini"})
            answer = _json(200, {"object": "list", "data": [_model_body(name) for name in served]})
        elif not self.retrieve_supported:
            answer = _json(404, {"detail": "Not Found"})  # a server routing only the list (FastAPI's 404)
        elif not self._known(model):
            answer = _json(404, error_body(404, f"The model `{model}` does not exist or you do not have access to it."))
        else:
            answer = _json(200, _model_body(model))
        with self._lock:
            record.status = answer.status
        handler.reply(answer)

    def _known(self, model: str | None) -> bool:
        return self.known_models is None or model in self.known_models

    def _answer(self, record: RecordedRequest, body: Any, image: bytes | None) -> _Answer:
        if self.api_key is not None and record.api_key != self.api_key:
            return _json(self.wrong_key_status, error_body(self.wrong_key_status))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _json(400, error_body(400, "'messages' is a required property", param="messages"))
        if not self._known(record.model):
            return _json(404, error_body(404, f"The model `{record.model}` does not exist or you do not have access "
                                              "to it."))
        problem = self._response_format_problem(body.get("response_format"), record.text)
        if problem is not None:
            return _json(400, error_body(400, problem, param="response_format"))
        if image is None:
            return _json(400, error_body(400, "The request holds no image (an image_url content part with a data URL).",
                                         param="messages"))
        if record.fault is not None:
            return self._fault(record.fault, image, record.model)
        fenced = (body.get("response_format") or {}).get("type") not in ("json_schema", "json_object")
        text = json.dumps(expected_grades(image).model_dump())
        return _json(200, completion(record.model, "```json\n" + text + "\n```" if fenced else text))

    def _response_format_problem(self, response_format: Any, text: str) -> str | None:
        if response_format is None:
            return None
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            if "json" not in text.lower():
                return "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
            return None
        if kind != "json_schema":
            return f"Invalid value for 'response_format.type': {kind!r}."
        if not self.json_schema_supported:
            return "response_format of type 'json_schema' is not supported by this server; use 'json_object'."
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name") or not isinstance(spec.get("schema"), dict):
            return "Missing required parameter: 'response_format.json_schema' (name and schema)."
        return strict_schema_problem(spec["schema"]) if spec.get("strict") else None

    def _fault(self, kind: str, image: bytes, model: str | None) -> _Answer:
        if kind == "429":
            answer = _json(429, error_body(429))
            answer.headers["Retry-After"] = self.retry_after
            return answer
        if kind == "429_ms":
            answer = _json(429, error_body(429))
            answer.headers["retry-after-ms"] = self.retry_after_ms
            return answer
        if kind == "insufficient_quota":
            return _json(429, error_body(429, "You exceeded your current quota, please check your plan and billing "
                                              "details.", type_="insufficient_quota", code="insufficient_quota"))
        if kind in ("500", "503", "401", "403", "404", "400"):
            return _json(int(kind), error_body(int(kind)))
        if kind == "400_response_format":
            return _json(400, error_body(400, "Invalid schema for response_format 'grades'.", param="response_format"))
        if kind == "html":
            return _Answer(200, _PROXY_PAGE.encode(), {"Content-Type": "text/html; charset=utf-8"})
        if kind in ("hang", "reset"):
            return _Answer(0, b"", {}, action=kind, hold_s=self.hang_s)
        grades = expected_grades(image).model_dump()
        if kind in ("drip", "cut"):
            answer = _json(200, completion(model, json.dumps(grades)))
            answer.action, answer.hold_s = kind, self.drip_s
            return answer
        if kind == "no_choices":
            return _json(200, {**completion(model, ""), "choices": []})
        if kind == "content_filter":
            return _json(200, completion(model, None, finish_reason="content_filter"))
        if kind == "refusal":
            return _json(200, completion(model, None, refusal=REFUSAL_TEXT))
        if kind == "empty_content":
            return _json(200, completion(model, ""))
        if kind == "not_json_text":
            return _json(200, completion(model, "The image looks lovely: I would give it an 8 out of 10."))
        if kind == "length":
            text = json.dumps(grades)
            return _json(200, completion(model, text[: len(text) // 3], finish_reason="length"))
        if kind == "missing_fields":
            del grades["emotional_or_thematic_resonance"]
        elif kind == "out_of_range":
            grades["overall_score"]["score"] = 11
        elif kind == "string_score":
            grades["overall_score"]["score"] = "high"
        return _json(200, completion(model, json.dumps(grades)))

    def _join_group(self) -> tuple[_Group, int]:
        group = self._group
        if group is None or group.closed:
            group = self._group = _Group(deadline=time.monotonic() + self.group_wait_s)
        slot = group.size
        group.size += 1
        group.closed = group.size >= self.reverse_groups
        return group, slot

    def _wait_for_turn(self, group: _Group, slot: int) -> None:
        """Wait until the group closes, then until every later arrival of it has been answered."""
        hold_until = time.monotonic() + _HOLD_LIMIT_S
        with self._lock:
            while not group.closed and not self._stopping.is_set():
                remaining = group.deadline - time.monotonic()
                if remaining <= 0:
                    group.closed = True
                    self._lock.notify_all()
                    break
                self._lock.wait(remaining)
            while group.answered < group.size - 1 - slot and not self._stopping.is_set():
                remaining = hold_until - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)


IMAGE_TOKENS = 765  # OpenAI's high-detail price of a 1024 px square image (85 + 4 tiles x 170)


def _billed(record: RecordedRequest, answer: _Answer) -> _Answer:
    """A completion answered in full gets the usage the service would bill: the text at 4 characters a
    token plus the image, and the answer's text at 4 characters a token (kept in the record)."""
    if answer.status != 200 or answer.action in ("hang", "reset", "cut"):
        return answer
    try:
        body = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        return answer  # a proxy's page: nothing billed
    if not isinstance(body, dict) or body.get("object") != "chat.completion":
        return answer
    content = "".join((choice.get("message") or {}).get("content") or "" for choice in body.get("choices") or [])
    prompt = -(-len(record.text) // 4) + (IMAGE_TOKENS if record.image_sha256 else 0)
    completion_tokens = -(-len(content) // 4)
    body["usage"] = record.usage = {
        "prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }
    answer.body = json.dumps(body).encode()
    return answer


def completion(model: str | None, content: str | None, *, finish_reason: str = "stop",
               refusal: str | None = None) -> dict[str, Any]:
    """A chat.completion object as the OpenAI API returns it (one choice)."""
    return {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or "unknown",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        "system_fingerprint": "fp_fake",
    }


def strict_schema_problem(schema: Any) -> str | None:
    """What OpenAI's strict mode refuses in a schema: an object without `additionalProperties: false`,
    or a property left out of `required`. Refs into $defs are followed."""
    defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}

    def walk(node: Any, context: tuple[str, ...]) -> str | None:
        if not isinstance(node, dict):
            return None
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            return walk(defs[name], context) if name in defs else f"In context={context}, unknown $ref {node['$ref']!r}"
        if node.get("type") != "object":
            return None
        prefix = f"Invalid schema for response_format 'grades': In context={context}, "
        if node.get("additionalProperties") is not False:
            return prefix + "'additionalProperties' is required to be supplied and to be false."
        properties = node.get("properties") or {}
        missing = [name for name in properties if name not in (node.get("required") or [])]
        if missing:
            return prefix + f"'required' is required to include every key in properties. Missing {missing[0]!r}."
        for name, child in properties.items():
            found = walk(child, (*context, "properties", name))
            if found:
                return found
        return None

    return walk(schema, ())


def _model_body(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _content_parts(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    parts: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        elif isinstance(content, list):
            parts += [part for part in content if isinstance(part, dict)]
    return parts


def _image(body: Any) -> tuple[bytes | None, str | None]:
    for part in _content_parts(body):
        if part.get("type") != "image_url":
            continue
        url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
        match = _DATA_URL.match(url or "")
        if match is None:
            continue
        try:
            return base64.b64decode(match.group(2), validate=True), f"image/{match.group(1)}"
        except (binascii.Error, ValueError):
            return None, None
    return None, None


def _text(body: Any) -> str:
    return "\n".join(part["text"] for part in _content_parts(body)
                     if part.get("type") == "text" and isinstance(part.get("text"), str))


def _json(status: int, body: Any) -> _Answer:
    return _Answer(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _scripted(item: Any) -> _Answer:
    status, headers, *rest = item
    body = rest[0] if rest else None
    answer = _json(status, error_body(status) if body is None else body) if not isinstance(body, str) \
        else _Answer(status, body.encode(), {"Content-Type": "text/plain"})
    answer.headers.update(headers)
    return answer


_PROXY_PAGE = """<!DOCTYPE html>
<html><head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>
"""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes connections itself

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeOpenAIServer):
        self.fake = fake
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self.fake._lock:
            self.fake._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self.fake._lock:
            self.fake._connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 30  # an idle keep-alive connection is dropped after this (bounded wait)
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_POST

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except json.JSONDecodeError:
            return None

    def reply(self, answer: _Answer) -> bool:
        """Send the answer; False if the client had gone or, by design, got no whole answer."""
        if answer.action == "reset":
            self.close_connection = True
            try:  # RST before any byte of an answer
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())
            except OSError:
                pass
            return False
        if answer.action == "hang":
            return self._hang(answer.hold_s)
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if answer.action == "cut":  # half the body, then a clean close
                self.wfile.write(answer.body[: len(answer.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return False
            if answer.action == "drip":
                return self._drip(answer.body, answer.hold_s)
            self.wfile.write(answer.body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _drip(self, body: bytes, drip_s: float, interval_s: float = 0.25) -> bool:
        """One byte every interval_s for drip_s seconds (never a read timeout), then the rest."""
        stopping = self.server.fake._stopping
        started = time.monotonic()
        steps = min(len(body), max(1, int(drip_s / interval_s)))
        try:
            for step in range(steps + 1):
                if stopping.wait(max(0.0, started + step * interval_s - time.monotonic())):
                    self.close_connection = True
                    return False
                self.wfile.write(body[step : step + 1] if step < steps else body[step:])
                self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _hang(self, hold_s: float) -> bool:
        """Answer nothing until the client goes (or hold_s passes, or the server stops), then close."""
        stopping = self.server.fake._stopping
        deadline = time.monotonic() + min(hold_s, _HOLD_LIMIT_S)
        self.close_connection = True
        while not stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.1))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    break  # the client closed its end
            except (OSError, ValueError):
                break
        return False

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI chat-completions endpoint until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api_key", default=None)
    parser.add_argument("--latency_s", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeOpenAIServer(args.host, args.port, api_key=args.api_key, latency_s=args.latency_s) as server:
        print(server.base_url, flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
