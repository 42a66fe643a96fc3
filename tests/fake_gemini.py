"""A local stand-in for Gemini's generateContent endpoint, over real HTTP, for offline tests.

It answers `POST /v1/models/{model}:generateContent` and `/v1beta/...` the way the Gemini
Developer API does, with grades derived from the pixels of the inline image (`expected_grades`),
so a test can tell whether each score came back with its own image. It can delay answers, answer
a group of requests in reverse arrival order, fail scripted requests with realistic Google error
JSON, send malformed answers, and check the API key. Every wait in it is bounded.

    with FakeGeminiServer(latency_s=0.1) as server:
        ... point the SDK at server.url ...
        server.requests  # what arrived, in arrival order

As a script (for end-to-end tests in another process), it prints its URL and serves until killed:

    python tests/fake_gemini.py --port 0 --latency_s 0.05
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping

from PIL import Image, ImageStat

if __name__ == "__main__":  # run as a script: make ttsf_core importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttsf_core.verifiers.base import METRIC_NAMES, AspectGrade, Grades  # noqa: E402

MALFORMED_MODES = ("not_json", "out_of_range", "missing_aspect", "blocked")
_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:?]+):generateContent(?:\?.*)?$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Each aspect mixes the mean red, green and blue differently, plus its own offset, so that no two
# aspects of one image share a score and a swapped image changes every score.
_ASPECT_WEIGHTS = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.5, 0.5, 0.0),
    (0.0, 0.5, 0.5),
    (0.2, 0.3, 0.5),
)
_HOLD_LIMIT_S = 10.0  # no request is held longer than this, whatever the options say


def expected_grades(png_bytes: bytes) -> Grades:
    """The grades the fake answers for an image: a pure function of its mean pixel per channel."""
    with Image.open(io.BytesIO(png_bytes)) as image:
        means = ImageStat.Stat(image.convert("RGB")).mean
    red, green, blue = (value / 255.0 for value in means)
    explanation = f"fake grade from mean RGB ({means[0]:.1f}, {means[1]:.1f}, {means[2]:.1f})"
    return Grades(
        **{
            metric: AspectGrade(
                explanation=explanation,
                score=round(9.0 * (w_r * red + w_g * green + w_b * blue) + 0.15 * offset, 3),
            )
            for offset, (metric, (w_r, w_g, w_b)) in enumerate(zip(METRIC_NAMES, _ASPECT_WEIGHTS))
        }
    )


def google_error_body(code: int, message: str | None = None, retry_delay: str | None = None) -> dict[str, Any]:
    """An error body shaped like the Gemini API's (`{"error": {code, message, status, details}}`)."""
    status = _STATUS_NAMES.get(code, "UNKNOWN")
    details: list[dict[str, Any]] = []
    if code == 429:
        message = message or "You exceeded your current quota, please check your plan and billing details."
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            }
        )
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    body: dict[str, Any] = {"code": code, "message": message or _default_message(code), "status": status}
    if details:
        body["details"] = details
    return {"error": body}


def _default_message(code: int) -> str:
    return {
        400: "Request contains an invalid argument.",
        500: "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
    }.get(code, f"HTTP {code}")


def _bad_key_body(code: int) -> dict[str, Any]:
    """What Gemini answers for a bad key: 400 API_KEY_INVALID, 401 UNAUTHENTICATED or 403."""
    if code == 400:
        body = google_error_body(400, "API key not valid. Please pass a valid API key.")
        body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return body
    if code == 401:
        return google_error_body(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )
    return google_error_body(code, "Permission denied: the API key is not valid for this project.")


@dataclass
class RecordedRequest:
    """One generateContent request as the fake saw it. Times are time.monotonic()."""

    call_index: int  # 0-based arrival order among generateContent requests
    path: str
    api_version: str
    model: str
    api_key: str | None
    arrived_at: float
    image_sha256: str | None
    prompt_text: str
    body: dict[str, Any] | None
    status: int | None = None  # the HTTP status answered (None while held)
    answered_at: float | None = None
    delivered: bool | None = None  # False when the client had gone (e.g. it timed out)


@dataclass
class _Group:
    """Requests held together so they can be answered in reverse arrival order."""

    deadline: float
    size: int = 0
    closed: bool = False
    answered: int = 0


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]


class FakeGeminiServer:
    """Gemini generateContent on 127.0.0.1, in a daemon thread.

    latency_s: fixed delay before each answer.
    reverse_groups: hold requests until N are in flight (or `group_wait_s` passed since the
        first of the group arrived), then answer them in reverse arrival order.
    failures: answers for the first requests, in arrival order: (status, headers) or
        (status, headers, body) where body is a dict (sent as JSON), a str, or None for a
        realistic Google error JSON (429 -> RESOURCE_EXHAUSTED, 500 -> INTERNAL, ...).
    malformed: {call_index (int, 0-based) or image sha256 (str): mode}, mode in MALFORMED_MODES.
    api_key: when set, other keys in x-goog-api-key are refused with `wrong_key_status`
        (403 PERMISSION_DENIED by default; 400 gives Gemini's API_KEY_INVALID; 401 UNAUTHENTICATED).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        reverse_groups: int | None = None,
        group_wait_s: float = 1.0,
        failures: Iterable[tuple] = (),
        malformed: Mapping[int | str, str] | None = None,
        api_key: str | None = None,
        wrong_key_status: int = 403,
    ):
        self._check(latency_s, reverse_groups, group_wait_s, malformed, wrong_key_status)
        self.latency_s = float(latency_s)
        self.reverse_groups = reverse_groups
        self.group_wait_s = float(group_wait_s)
        self.malformed = dict(malformed or {})
        self.api_key = api_key
        self.wrong_key_status = wrong_key_status
        self._failures = [self._failure(item) for item in failures]
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._records: list[RecordedRequest] = []
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
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> "FakeGeminiServer":
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
            )
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

    def __enter__(self) -> "FakeGeminiServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ----- what tests read -----

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def wait_for_answers(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until `count` requests have been answered; True if they were."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while sum(r.answered_at is not None for r in self._records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    # ----- one request (called on the handler's thread) -----

    def _handle(self, handler: "_Handler") -> None:
        match = _PATH.match(handler.path)
        if handler.command != "POST" or match is None:
            handler.reply(_json_answer(404, google_error_body(404, f"Unknown path {handler.path}")))
            return
        body = handler.read_json()
        image = _inline_image(body)
        record, group, slot, failure = self._arrive(handler, match, body, image)
        try:
            answer = failure or self._answer_for(record, image)
        except Exception as error:  # a broken request must still be answered and leave the count
            answer = _json_answer(400, google_error_body(400, f"Unable to process input image: {error}"))
        if self.latency_s > 0:
            self._stopping.wait(self.latency_s)
        if group is not None:
            self._wait_for_turn(group, slot)
        self._reply_and_release(handler, record, answer, group)

    def _arrive(
        self, handler: "_Handler", match: re.Match, body: Any, image: bytes | None
    ) -> tuple[RecordedRequest, _Group | None, int, _Answer | None]:
        """Record the request, and in arrival order: take the next scripted failure (if the key is
        right, as the real service checks the key first) and join the open reverse group."""
        with self._lock:
            record = RecordedRequest(
                call_index=len(self._records),
                path=handler.path,
                api_version=match.group(1),
                model=match.group(2),
                api_key=handler.headers.get("x-goog-api-key"),
                arrived_at=time.monotonic(),
                image_sha256=hashlib.sha256(image).hexdigest() if image is not None else None,
                prompt_text=_prompt_text(body),
                body=body if isinstance(body, dict) else None,
            )
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            key_ok = self.api_key is None or record.api_key == self.api_key
            failure = self._failures.pop(0) if key_ok and self._failures else None
            group, slot = self._join_group() if self.reverse_groups else (None, 0)
            self._lock.notify_all()
            return record, group, slot, failure

    def _join_group(self) -> tuple[_Group, int]:
        group = self._group
        if group is None or group.closed:
            group = self._group = _Group(deadline=time.monotonic() + self.group_wait_s)
        slot = group.size
        group.size += 1
        group.closed = group.size >= self.reverse_groups
        return group, slot

    def _answer_for(self, record: RecordedRequest, image: bytes | None) -> _Answer:
        if self.api_key is not None and record.api_key != self.api_key:
            return _json_answer(self.wrong_key_status, _bad_key_body(self.wrong_key_status))
        if image is None:
            return _json_answer(400, google_error_body(400, "The request holds no inline image."))
        mode = self.malformed.get(record.call_index) or self.malformed.get(record.image_sha256 or "")
        return _json_answer(200, _success_body(image, mode, record.model))

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

    def _reply_and_release(
        self, handler: "_Handler", record: RecordedRequest, answer: _Answer, group: _Group | None
    ) -> None:
        with self._lock:
            # Leave the in-flight count before the client can see the answer, so that its next
            # request never finds this one still counted.
            self._in_flight -= 1
        delivered = handler.reply(answer)
        with self._lock:
            record.status, record.answered_at, record.delivered = answer.status, time.monotonic(), delivered
            if group is not None:
                group.answered += 1
            self._lock.notify_all()

    def _check(self, latency_s, reverse_groups, group_wait_s, malformed, wrong_key_status) -> None:
        if not 0 <= latency_s <= _HOLD_LIMIT_S:
            raise ValueError(f"latency_s: received {latency_s!r}, allowed: 0 to {_HOLD_LIMIT_S}")
        if reverse_groups is not None and reverse_groups < 1:
            raise ValueError(f"reverse_groups: received {reverse_groups!r}, allowed: None or >= 1")
        if not 0 < group_wait_s <= _HOLD_LIMIT_S:
            raise ValueError(f"group_wait_s: received {group_wait_s!r}, allowed: > 0 and <= {_HOLD_LIMIT_S}")
        bad = {key: mode for key, mode in (malformed or {}).items() if mode not in MALFORMED_MODES}
        if bad:
            raise ValueError(f"malformed: received {bad!r}, allowed modes: {', '.join(MALFORMED_MODES)}")
        if wrong_key_status not in (400, 401, 403):
            raise ValueError(f"wrong_key_status: received {wrong_key_status!r}, allowed: 400, 401, 403")

    @staticmethod
    def _failure(item: tuple) -> _Answer:
        status, headers, *rest = item
        body = rest[0] if rest else None
        if body is None:
            body = google_error_body(status)
        if isinstance(body, dict):
            answer = _json_answer(status, body)
        else:
            answer = _Answer(status, str(body).encode(), {"Content-Type": "text/plain"})
        answer.headers.update(headers)
        return answer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes connections itself; never wait on a client's keep-alive

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeGeminiServer):
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
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    timeout = 30  # an idle keep-alive connection is dropped after this (bounded wait)
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle plus delayed ACK add ~40 ms
        # to every answer on a kept-alive connection.
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
        """Send the answer; False if the client had already gone."""
        try:
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json; charset=UTF-8", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
        pass


def _json_answer(status: int, body: Any) -> _Answer:
    return _Answer(status, json.dumps(body).encode(), {"Content-Type": "application/json; charset=UTF-8"})


def _success_body(image: bytes, mode: str | None, model: str) -> dict[str, Any]:
    if mode == "blocked":
        return {"promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": model}
    grades = expected_grades(image).model_dump()
    if mode == "out_of_range":
        grades["overall_score"]["score"] = 11.5
    if mode == "missing_aspect":
        del grades["emotional_or_thematic_resonance"]
    text = "The image looks lovely, I would give it 8 out of 10." if mode == "not_json" else json.dumps(grades)
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "modelVersion": model,
    }


def _parts(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    contents = body.get("contents") or []
    parts = [part for content in contents if isinstance(content, dict) for part in content.get("parts") or []]
    return [part for part in parts if isinstance(part, dict)]


def _inline_image(body: Any) -> bytes | None:
    for part in _parts(body):
        blob = part.get("inlineData") or part.get("inline_data")
        if isinstance(blob, dict) and blob.get("data"):
            return _b64decode(blob["data"])
    return None


def _b64decode(data: Any) -> bytes | None:
    """Standard or URL-safe base64 (the SDK sends URL-safe; the real service accepts both)."""
    if not isinstance(data, str):
        return None
    text = data.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _prompt_text(body: Any) -> str:
    return "\n".join(part["text"] for part in _parts(body) if isinstance(part.get("text"), str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake Gemini generateContent endpoint until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency_s", type=float, default=0.0)
    parser.add_argument("--api_key", default=None)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeGeminiServer(args.host, args.port, latency_s=args.latency_s, api_key=args.api_key) as server:
        print(server.url, flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
