"""A local stand-in for Gemini's generateContent endpoint, over real HTTP, for offline tests.

It answers `POST /v1/models/{model}:generateContent` and `/v1beta/...` the way the Gemini
Developer API does, with grades derived from the pixels of the inline image (`expected_grades`;
an inline video/mp4 is graded from the mean of all its frames), so a test can tell whether each
score came back with its own image. It can delay answers, answer
a group of requests in reverse arrival order, fail scripted requests with realistic Google error
JSON, send malformed answers, and check the API key. Every wait in it is bounded.

    with FakeGeminiServer(latency_s=0.1) as server:
        ... point the SDK at server.url ...
        server.requests  # what arrived, in arrival order

It can also inject faults from a seeded `FaultSchedule`: HTTP errors (429 with Retry-After, 500,
503, a bad key), transport faults (a hang, a drip-fed answer, a cut-off body, a TCP reset, a
proxy's HTML page) and bad answers (not JSON, a missing aspect, a score of 11, NaN or "high", no
candidates, a safety stop, a blocked prompt). Whether a request gets a fault depends only on the
seed, the image's sha256 and how many times that image was asked before, never on arrival order,
so a run under the same schedule meets the same faults however its threads interleave:

    faults = FaultSchedule(seed=7, rate=0.3, kinds=("429", "503", "reset"))
    with FakeGeminiServer(faults=faults) as server:
        ...
        server.fault_counts()  # {"429": 4, "503": 2, ...}; each request's `fault` is in server.requests

It answers the SDK's models.get (`GET /v1/models/{model}` or `/v1beta/...`) with the model's metadata,
and models.list (`GET /v1beta/models`), both recorded in `server.metadata_requests`.

It answers as the service does today (read 2026-12-03, see ttsf_core/verifiers/gemini_models.py):
- models Google shut down (`shut_down_models`, by default the Gemini 2.0 Flash family) get today's
  404 NOT_FOUND body, on generateContent and models.get alike;
- an alias (`aliases`, by default gemini-3.5-flash -> gemini-3.6-flash and the retired 2.5 models ->
  their replacements) is answered by its target, which `modelVersion` names; a test may move an alias
  while a run goes on (`server.aliases[...] = ...`);
- every answer carries `modelVersion` and `usageMetadata`: prompt tokens (text at 4 characters a token
  plus the image at `mediaResolution`: 280/560/1120 on Gemini 3, 258 before), thought tokens by the
  `thinkingConfig` sent (MINIMAL 0, LOW 96, MEDIUM 384, HIGH 1024; a budget: min(budget, 512); none
  sent: the model's default level), answer tokens (its text at 4 characters a token). What each request
  was billed is kept in its record (`record.usage`);
- a thinking level the model does not take (3.7/3.8 Flash refuse MINIMAL), a thinking level sent to a
  2.5 model, or a media resolution sent to a 2.0 model get 400 INVALID_ARGUMENT.

As a script (for end-to-end tests in another process), it prints its URL and serves until killed:

    python tests/fake_gemini.py --port 0 --latency_s 0.05
    python tests/fake_gemini.py --port 0 --fault-rate 0.3 --fault-seed 7 --fault-kinds 429:2,503,reset

and then also answers `GET /_fake/requests` with what arrived (call index, image sha256, attempt,
fault, status) as JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import math
import os
import re
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image, ImageStat

if __name__ == "__main__":  # run as a script: make ttsf_core importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttsf_core.verifiers.base import METRIC_NAMES, AspectGrade, Grades  # noqa: E402

MALFORMED_MODES = ("not_json", "out_of_range", "missing_aspect", "blocked")
_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:?]+):generateContent(?:\?.*)?$")
_MODEL_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:?]+)(?:\?.*)?$")
_REQUESTS_PATH = "/_fake/requests"

# Every fault a FaultSchedule can inject, by the layer it breaks.
HTTP_ERROR_FAULTS = ("429", "500", "503", "401", "403", "400_key")
TRANSPORT_FAULTS = ("hang", "drip", "cut", "reset", "html")
ANSWER_FAULTS = (
    "not_json_text",
    "missing_fields",
    "out_of_range",
    "nan",
    "string_score",
    "empty_candidates",
    "safety",
    "blocked",
)
FAULT_KINDS = HTTP_ERROR_FAULTS + TRANSPORT_FAULTS + ANSWER_FAULTS
# The default draw: what the real service and the network do now and then, and quickly.
TRANSIENT_FAULTS = ("429", "500", "503", "cut", "reset")
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
_LIST_PATH = re.compile(r"^/(v1|v1beta)/models(?:\?.*)?$")


@dataclass(frozen=True)
class FakeModel:
    """How the fake treats a model: its thinking (levels it takes, lowest first, and its default;
    "budget" for 2.5; None for 2.0), whether it is Gemini 3 (image tokens, media resolution)."""

    levels: tuple[str, ...] | None = ("MINIMAL", "LOW", "MEDIUM", "HIGH")
    default_level: str = "MEDIUM"
    budget: bool = False
    gemini3: bool = True
    media_resolution: bool = True


_ALL = ("MINIMAL", "LOW", "MEDIUM", "HIGH")
_NO_MINIMAL = ("LOW", "MEDIUM", "HIGH")
# What the service serves today (2026-12-03), as the fake knows it. A model not listed is served with
# the defaults above unless `known_models` says otherwise.
CATALOGUE: dict[str, FakeModel] = {
    "gemini-3.8-flash": FakeModel(_NO_MINIMAL, "HIGH"),
    "gemini-3.7-flash": FakeModel(_NO_MINIMAL, "HIGH"),
    "gemini-3.6-flash": FakeModel(_ALL, "MEDIUM"),
    "gemini-3.5-flash-lite": FakeModel(_ALL, "MINIMAL"),
    "gemini-3.1-flash-lite": FakeModel(_ALL, "MINIMAL"),
    "gemini-3.1-pro-preview": FakeModel(_NO_MINIMAL, "HIGH"),
    "gemini-2.5-flash-lite": FakeModel(None, budget=True, gemini3=False),
}
SHUT_DOWN_MODELS = frozenset({"gemini-2.0-flash", "gemini-2.0-flash-001", "gemini-2.0-flash-lite",
                              "gemini-2.0-flash-lite-001"})
ALIASES = {"gemini-3.5-flash": "gemini-3.6-flash", "gemini-2.5-flash": "gemini-3.5-flash-lite",
           "gemini-2.5-pro": "gemini-3.8-flash"}
IMAGE_TOKENS = {"MEDIA_RESOLUTION_LOW": 280, "MEDIA_RESOLUTION_MEDIUM": 560, "MEDIA_RESOLUTION_HIGH": 1120}
OLDER_IMAGE_TOKENS = 258
VIDEO_TOKENS = 300
THOUGHT_TOKENS = {"MINIMAL": 0, "LOW": 96, "MEDIUM": 384, "HIGH": 1024}
BUDGET_THOUGHT_CAP = 512


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


def fake_model(name: str) -> FakeModel:
    return CATALOGUE.get(name, FakeModel())


def expected_grades(png_bytes: bytes) -> Grades:
    """The grades the fake answers for an image (or an mp4): a pure function of its mean pixel per
    channel (a video's over all its frames)."""
    means = _mean_rgb(png_bytes)
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


def _mean_rgb(blob: bytes) -> list[float]:
    if blob[4:8] == b"ftyp":  # an ISO media file: an mp4 sent whole (export_args.video_grading: whole)
        from ttsf_core.video import read_frames

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "video.mp4"
            path.write_bytes(blob)
            frames = [ImageStat.Stat(frame.convert("RGB")).mean for frame in read_frames(path)]
        return [sum(channel) / len(frames) for channel in zip(*frames)]
    with Image.open(io.BytesIO(blob)) as image:
        return ImageStat.Stat(image.convert("RGB")).mean


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
class FaultSchedule:
    """Which generateContent requests get which fault: seeded, per image, independent of arrival order.

    seed, rate: request number `attempt` (0-based) of the image with sha256 `sha` gets a fault with
        probability `rate`, decided by sha256(seed, sha, attempt) alone, so one schedule injects the
        same faults into the same run whatever the order its threads send in.
    kinds, weights: the faults drawn from (names in FAULT_KINDS) and their relative weights
        (None: equal). Default: TRANSIENT_FAULTS.
    max_faults_per_image: after this many drawn faults an image is always answered, so transient
        faults never starve it (None: no limit).
    persistent: {image sha256: kind}: every request for that image gets this fault (a "never
        gradeable" image); not counted against max_faults_per_image.
    by_call: {call index (0-based, arrival order): kind}, scripted like FakeGeminiServer's
        `failures`; wins over the draw.
    retry_after_s: the wait a "429" asks for (Retry-After header, rounded up, and RetryInfo).
    hang_s: how long a "hang" holds the request when the client does not give up first.
    drip_interval_s, drip_s: a "drip" sends its body one byte every drip_interval_s for drip_s
        seconds, then the rest at once.
    """

    seed: int = 0
    rate: float = 0.0
    kinds: Sequence[str] = TRANSIENT_FAULTS
    weights: Sequence[float] | None = None
    max_faults_per_image: int | None = 3
    persistent: Mapping[str, str] = field(default_factory=dict)
    by_call: Mapping[int, str] = field(default_factory=dict)
    retry_after_s: float = 1.0
    hang_s: float = 5.0
    drip_interval_s: float = 0.5
    drip_s: float = 4.0

    def __post_init__(self) -> None:
        self.kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        self.weights = None if self.weights is None else tuple(float(w) for w in self.weights)
        self.persistent = dict(self.persistent)
        self.by_call = dict(self.by_call)
        self._check()

    @classmethod
    def parse_kinds(cls, text: str) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
        """"429:3,503,reset" -> (("429", "503", "reset"), (3.0, 1.0, 1.0)); weights None if none given."""
        kinds, weights = [], []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            kind, _, weight = item.partition(":")
            try:
                weights.append(float(weight) if weight else 1.0)
            except ValueError:
                raise ValueError(f"fault kinds: received weight {weight!r} in {item!r}, allowed: a number") from None
            kinds.append(kind.strip())
        return tuple(kinds), (tuple(weights) if any(":" in part for part in text.split(",")) else None)

    def draw(self, image_sha256: str, attempt: int) -> str | None:
        """The seeded draw for one request, before max_faults_per_image and `persistent` apply."""
        if self.rate <= 0:
            return None
        if _unit(self.seed, image_sha256, attempt, "rate") >= self.rate:
            return None
        weights = self.weights or (1.0,) * len(self.kinds)
        point = _unit(self.seed, image_sha256, attempt, "kind") * sum(weights)
        for kind, weight in zip(self.kinds, weights):
            point -= weight
            if point < 0:
                return kind
        return next(kind for kind, weight in zip(reversed(self.kinds), reversed(weights)) if weight > 0)

    def fault_for(self, image_sha256: str, attempt: int) -> str | None:
        """The fault for request number `attempt` (0-based) of this image: a pure function."""
        if image_sha256 in self.persistent:
            return self.persistent[image_sha256]
        if self.max_faults_per_image is not None:
            earlier = sum(self.draw(image_sha256, k) is not None for k in range(attempt))
            if earlier >= self.max_faults_per_image:
                return None
        return self.draw(image_sha256, attempt)

    def plan(self, image_sha256: str, attempts: int) -> list[str | None]:
        """The faults of this image's first `attempts` requests."""
        return [self.fault_for(image_sha256, attempt) for attempt in range(attempts)]

    def _check(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate: received {self.rate!r}, allowed: 0 to 1")
        if self.rate > 0 and not self.kinds:
            raise ValueError("kinds: received nothing, allowed: one or more of " + ", ".join(FAULT_KINDS))
        named = list(self.kinds) + list(self.persistent.values()) + list(self.by_call.values())
        unknown = sorted({kind for kind in named if kind not in FAULT_KINDS})
        if unknown:
            raise ValueError(f"fault kinds: received {', '.join(map(repr, unknown))}, allowed: {', '.join(FAULT_KINDS)}")
        if self.weights is not None and (
            len(self.weights) != len(self.kinds) or min(self.weights, default=0) < 0 or sum(self.weights) <= 0
        ):
            raise ValueError(
                f"weights: received {self.weights!r}, allowed: one weight >= 0 per kind ({len(self.kinds)}), not all 0"
            )
        if self.max_faults_per_image is not None and self.max_faults_per_image < 0:
            raise ValueError(f"max_faults_per_image: received {self.max_faults_per_image!r}, allowed: None or >= 0")
        if not 0 <= self.retry_after_s <= 86400:
            raise ValueError(f"retry_after_s: received {self.retry_after_s!r}, allowed: 0 to 86400")
        for name in ("hang_s", "drip_s"):
            if not 0 < getattr(self, name) <= _HOLD_LIMIT_S:
                raise ValueError(f"{name}: received {getattr(self, name)!r}, allowed: > 0 and <= {_HOLD_LIMIT_S}")
        if not 0 < self.drip_interval_s <= self.drip_s:
            raise ValueError(f"drip_interval_s: received {self.drip_interval_s!r}, allowed: > 0 and <= drip_s")


def _unit(seed: int, image_sha256: str, attempt: int, salt: str) -> float:
    """A uniform number in [0, 1) from its arguments alone (the same on every platform and run)."""
    digest = hashlib.sha256(f"{seed}\x00{image_sha256}\x00{attempt}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


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
    status: int | None = None  # the HTTP status answered (None while held, or when none was sent)
    answered_at: float | None = None
    delivered: bool | None = None  # False when the client had gone (e.g. it timed out) or got no whole answer
    attempt: int | None = None  # 0-based: how many requests for this image arrived before this one
    fault: str | None = None  # the FaultSchedule kind injected, if any
    model_version: str | None = None  # the model that answered (an alias's target)
    usage: dict[str, int] | None = None  # the usageMetadata answered (None: nothing billed)


@dataclass
class MetadataRequest:
    """One models.get request (`GET /{version}/models/{model}`)."""

    path: str
    api_version: str
    model: str
    api_key: str | None
    arrived_at: float
    status: int | None = None


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
    action: str | None = None  # "hang", "drip", "cut" or "reset": how the transport misbehaves
    hold_s: float = 0.0  # hang: the longest hold; drip: the dripping time
    interval_s: float = 0.0  # drip: between two bytes


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
    faults: a FaultSchedule; applies to requests with the right key, a known model, an inline
        image and no scripted `failures` answer. Each request's `fault` is recorded.
    known_models: when given, other models are answered 404 NOT_FOUND (generateContent and
        models.get alike); names with or without "models/".
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
        faults: FaultSchedule | None = None,
        known_models: Iterable[str] | None = None,
        shut_down_models: Iterable[str] = SHUT_DOWN_MODELS,
        aliases: Mapping[str, str] | None = None,
        retire_after: tuple[str, int] | None = None,
    ):
        self._check(latency_s, reverse_groups, group_wait_s, malformed, wrong_key_status)
        if faults is not None and not isinstance(faults, FaultSchedule):
            raise ValueError(f"faults: received {type(faults).__name__}, allowed: None or a FaultSchedule")
        self.faults = faults
        self.known_models = (
            None if known_models is None else frozenset(name.removeprefix("models/") for name in known_models)
        )
        self.shut_down_models = frozenset(name.removeprefix("models/") for name in shut_down_models)
        self.aliases = dict(ALIASES if aliases is None else aliases)  # a test may move one mid-run
        # (model, n): Google shuts `model` down after its first n generateContent requests (404 after).
        self.retire_after = retire_after
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
        self._metadata: list[MetadataRequest] = []
        self._attempts: dict[str, int] = {}  # image sha256 -> requests for it so far
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
    def metadata_requests(self) -> list[MetadataRequest]:
        """models.get requests, in arrival order (not counted in `requests` or `call_count`)."""
        with self._lock:
            return list(self._metadata)

    def fault_counts(self) -> dict[str, int]:
        """How many generateContent requests got each fault kind (kinds never injected are absent)."""
        with self._lock:
            return dict(Counter(record.fault for record in self._records if record.fault is not None))

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
        if handler.command == "GET":
            if handler.path.split("?")[0] == _REQUESTS_PATH:
                handler.reply(_json_answer(200, self._requests_summary()))
                return
            if _LIST_PATH.match(handler.path):
                self._handle_model_list(handler)
                return
            model_match = _MODEL_PATH.match(handler.path)
            if model_match is not None:
                self._handle_model_get(handler, model_match)
                return
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

    def _handle_model_get(self, handler: "_Handler", match: re.Match) -> None:
        """models.get: the key is checked as for generateContent, then the model must be known."""
        with self._lock:
            record = MetadataRequest(
                path=handler.path,
                api_version=match.group(1),
                model=match.group(2),
                api_key=handler.headers.get("x-goog-api-key"),
                arrived_at=time.monotonic(),
            )
            self._metadata.append(record)
        if self.api_key is not None and record.api_key != self.api_key:
            answer = _json_answer(self.wrong_key_status, _bad_key_body(self.wrong_key_status))
        elif not self._model_known(record.model):
            answer = _json_answer(404, _unknown_model_body(record.model, record.api_version))
        else:
            answer = _json_answer(200, _model_body(record.model))
        with self._lock:  # before the client can see the answer, so that a test never races it
            record.status = answer.status
        handler.reply(answer)

    def _handle_model_list(self, handler: "_Handler") -> None:
        """models.list: every model served today (never a shut-down one), one page."""
        with self._lock:
            record = MetadataRequest(path=handler.path, api_version=handler.path.split("/")[1], model="",
                                     api_key=handler.headers.get("x-goog-api-key"), arrived_at=time.monotonic())
            self._metadata.append(record)
        if self.api_key is not None and record.api_key != self.api_key:
            answer = _json_answer(self.wrong_key_status, _bad_key_body(self.wrong_key_status))
        else:
            names = sorted(self.known_models if self.known_models is not None else CATALOGUE)
            answer = _json_answer(200, {"models": [_model_body(name) for name in names
                                                   if name not in self.shut_down_models]})
        with self._lock:
            record.status = answer.status
        handler.reply(answer)

    def _model_known(self, model: str) -> bool:
        if model in self.shut_down_models:
            return False
        return self.known_models is None or model in self.known_models or model in self.aliases

    def _retired(self, record: RecordedRequest) -> bool:
        if self.retire_after is None or record.model != self.retire_after[0]:
            return False
        with self._lock:
            earlier = sum(other.model == record.model for other in self._records[: record.call_index])
        return earlier >= self.retire_after[1]

    def served_by(self, model: str) -> str:
        """The model that answers for `model` (an alias's target, else itself)."""
        with self._lock:
            return self.aliases.get(model, model)

    def _requests_summary(self) -> dict[str, Any]:
        fields = ("call_index", "model", "image_sha256", "attempt", "fault", "status", "delivered", "arrived_at")
        with self._lock:
            return {
                "requests": [{name: getattr(record, name) for name in fields} for record in self._records],
                "metadata_requests": [
                    {"model": record.model, "status": record.status} for record in self._metadata
                ],
            }

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
            if record.image_sha256 is not None:
                record.attempt = self._attempts.get(record.image_sha256, 0)
                self._attempts[record.image_sha256] = record.attempt + 1
            key_ok = self.api_key is None or record.api_key == self.api_key
            failure = self._failures.pop(0) if key_ok and self._failures else None
            if failure is None and key_ok and self.faults is not None and record.image_sha256 is not None:
                if self._model_known(record.model):
                    record.fault = self.faults.by_call.get(record.call_index) or self.faults.fault_for(
                        record.image_sha256, record.attempt
                    )
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
        if not self._model_known(record.model) or self._retired(record):
            return _json_answer(404, _unknown_model_body(record.model, record.api_version))
        record.model_version = self.served_by(record.model)
        refused = _refused_setting(record.body, record.model_version)
        if refused is not None:
            return _json_answer(400, google_error_body(400, refused))
        if record.fault is not None:
            answer = _fault_answer(record.fault, self.faults, image, record.model_version)
        else:
            mode = self.malformed.get(record.call_index) or self.malformed.get(record.image_sha256 or "")
            answer = _json_answer(200, _success_body(image, mode, record.model_version))
        return self._billed(record, image, answer)

    def _billed(self, record: RecordedRequest, image: bytes, answer: _Answer) -> _Answer:
        """A 200 JSON answer gets its usageMetadata (and the record what was billed)."""
        if answer.status != 200 or answer.action in ("hang", "reset", "cut"):
            return answer
        try:
            body = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            return answer  # a proxy's page: nothing billed
        body["usageMetadata"] = record.usage = _usage(record.body, record.model_version, image, _answer_text(body))
        answer.body = json.dumps(body).encode()
        return answer

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
        status = None if answer.action in ("hang", "reset") else answer.status
        with self._lock:
            record.status, record.answered_at, record.delivered = status, time.monotonic(), delivered
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
        """Send the answer; False if the client had already gone or, by design, got no whole answer."""
        if answer.action == "reset":
            return self._reset()
        if answer.action == "hang":
            return self._hang(answer.hold_s)
        try:
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json; charset=UTF-8", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if answer.action == "cut":  # half the body, then a clean close (FIN)
                self.wfile.write(answer.body[: len(answer.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return False
            if answer.action == "drip":
                return self._drip(answer.body, answer.interval_s, answer.hold_s)
            self.wfile.write(answer.body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _drip(self, body: bytes, interval_s: float, drip_s: float) -> bool:
        """One byte every interval_s for drip_s seconds (never a read timeout), then the rest."""
        stopping = self.server.fake._stopping
        started = time.monotonic()
        steps = min(len(body), max(1, int(drip_s / interval_s + 1e-9)))
        for step in range(steps + 1):  # byte `step` at started + step * interval_s; the rest at drip_s
            if stopping.wait(max(0.0, started + step * interval_s - time.monotonic())):
                self.close_connection = True
                break
            self.wfile.write(body[step : step + 1] if step < steps else body[step:])
            self.wfile.flush()
        else:
            return True
        return False

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
                    break  # the client closed its end: it gave up
            except (OSError, ValueError):
                break
        return False

    def _reset(self) -> bool:
        """Close with an RST (SO_LINGER 0) before any byte of an answer.

        The socket is detached and closed at once: socketserver would otherwise shut its write side
        first, and the client would see a clean FIN rather than a reset."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())
        except OSError:
            pass
        return False

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
        pass


def _json_answer(status: int, body: Any) -> _Answer:
    return _Answer(status, json.dumps(body).encode(), {"Content-Type": "application/json; charset=UTF-8"})


_PROXY_ERROR_PAGE = """<!DOCTYPE html>
<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
<p>The upstream server did not answer in time. Please try again later.</p>
</body>
</html>
"""
_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]


def _fault_answer(kind: str, schedule: FaultSchedule, image: bytes, model: str) -> _Answer:
    """What the fake sends for one injected fault (see FAULT_KINDS)."""
    if kind == "429":
        delay = schedule.retry_after_s
        answer = _json_answer(429, google_error_body(429, retry_delay=f"{delay:g}s"))
        answer.headers["Retry-After"] = str(math.ceil(delay))
        return answer
    if kind in ("500", "503"):
        return _json_answer(int(kind), google_error_body(int(kind)))
    if kind in ("401", "403", "400_key"):
        code = int(kind[:3])
        return _json_answer(code, _bad_key_body(code))
    if kind == "html":
        return _Answer(200, _PROXY_ERROR_PAGE.encode(), {"Content-Type": "text/html; charset=UTF-8"})
    if kind == "hang":
        return _Answer(0, b"", {}, action="hang", hold_s=schedule.hang_s)
    if kind == "reset":
        return _Answer(0, b"", {}, action="reset")
    if kind in ("drip", "cut"):
        answer = _json_answer(200, _success_body(image, None, model))
        answer.action, answer.hold_s, answer.interval_s = kind, schedule.drip_s, schedule.drip_interval_s
        return answer
    if kind == "empty_candidates":
        return _json_answer(200, {"candidates": []})
    if kind == "safety":
        candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": _SAFETY_RATINGS}
        return _json_answer(200, {"candidates": [candidate], "modelVersion": model})
    if kind == "blocked":
        feedback = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS}
        return _json_answer(200, {"promptFeedback": feedback, "modelVersion": model})
    grades = expected_grades(image).model_dump()
    if kind == "not_json_text":
        text = "The image looks lovely: I would give it an 8 out of 10 for accuracy and a 7 overall."
    else:
        if kind == "missing_fields":
            del grades["emotional_or_thematic_resonance"]
        elif kind == "out_of_range":
            grades["overall_score"]["score"] = 11
        elif kind == "nan":
            grades["overall_score"]["score"] = float("nan")  # json.dumps writes the bare token NaN
        elif kind == "string_score":
            grades["overall_score"]["score"] = "high"
        else:  # pragma: no cover - FaultSchedule checks the names
            raise ValueError(f"fault kind: received {kind!r}, allowed: {', '.join(FAULT_KINDS)}")
        text = json.dumps(grades)
    return _json_answer(200, _text_body(text, model))


def _text_body(text: str, model: str) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "modelVersion": model,
    }


def _model_body(model: str) -> dict[str, Any]:
    """A Model resource, as models.get and models.list answer it today."""
    entry = fake_model(model)
    return {
        "name": f"models/{model}",
        "baseModelId": model,
        "version": "001",
        "displayName": " ".join(part.capitalize() for part in model.split("-")),
        "description": "A fake Gemini model served by tests/fake_gemini.py.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
        "temperature": 1.0,
        "maxTemperature": 2.0,
        "topP": 0.95,
        "topK": 64,
        "thinking": entry.levels is not None or entry.budget,
    }


def _unknown_model_body(model: str, api_version: str) -> dict[str, Any]:
    return google_error_body(
        404,
        f"models/{model} is not found for API version {api_version}, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def _success_body(image: bytes, mode: str | None, model: str) -> dict[str, Any]:
    if mode == "blocked":
        return {"promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": model}
    grades = expected_grades(image).model_dump()
    if mode == "out_of_range":
        grades["overall_score"]["score"] = 11.5
    if mode == "missing_aspect":
        del grades["emotional_or_thematic_resonance"]
    text = "The image looks lovely, I would give it 8 out of 10." if mode == "not_json" else json.dumps(grades)
    return _text_body(text, model)


def _generation_config(body: Any) -> dict[str, Any]:
    """The request's generationConfig with every key in lowerCamelCase: like the real service (proto3
    JSON), the fake reads a field by either of its names (google-genai 3.6.1 sends thinkingConfig's
    fields as thinking_level / thinking_budget)."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    return _camel_keys(config) if isinstance(config, dict) else {}


def thinking_config(body: Any) -> dict[str, Any]:
    """The thinkingConfig a request sent, keys in lowerCamelCase ({} when none)."""
    return _generation_config(body).get("thinkingConfig") or {}


def _camel_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {_camel(key): _camel_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_camel_keys(value) for value in node]
    return node


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _refused_setting(body: Any, model: str) -> str | None:
    """Google's 400 message for a setting the model does not take, or None."""
    config = _generation_config(body)
    thinking = thinking_config(body)
    entry = fake_model(model)
    level = thinking.get("thinkingLevel")
    if level is not None:
        if entry.levels is None or entry.budget:
            return f"Thinking level is not supported for this model: models/{model}. Use thinking_budget instead."
        if level not in entry.levels:
            return (f"Thinking level {level} is not supported for models/{model}. Supported thinking levels: "
                    f"{', '.join(entry.levels)}.")
    if "thinkingBudget" in thinking and entry.levels is not None and not entry.budget and entry.gemini3 is False:
        return f"Thinking budget is not supported for this model: models/{model}."
    if config.get("mediaResolution") and not entry.media_resolution:
        return f"media_resolution is not supported for models/{model}."
    return None


def _usage(body: Any, model: str, image: bytes | None, answer_text: str) -> dict[str, Any]:
    """usageMetadata as the service reports it for this request (see the module docstring)."""
    config = _generation_config(body)
    entry = fake_model(model)
    text = _tokens(_prompt_text(body))
    if image is not None and image[4:8] == b"ftyp":
        modality, media = "VIDEO", VIDEO_TOKENS
    elif entry.gemini3:
        modality, media = "IMAGE", IMAGE_TOKENS.get(config.get("mediaResolution"), IMAGE_TOKENS["MEDIA_RESOLUTION_HIGH"])
    else:
        modality, media = "IMAGE", OLDER_IMAGE_TOKENS
    thinking = thinking_config(body)
    if entry.budget:
        budget = thinking.get("thinkingBudget", -1)
        thoughts = BUDGET_THOUGHT_CAP if budget < 0 else min(budget, BUDGET_THOUGHT_CAP)
    elif entry.levels is None:
        thoughts = 0
    else:
        thoughts = THOUGHT_TOKENS[thinking.get("thinkingLevel") or entry.default_level]
    output = _tokens(answer_text)
    usage = {
        "promptTokenCount": text + media,
        "candidatesTokenCount": output,
        "totalTokenCount": text + media + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text}, {"modality": modality, "tokenCount": media}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _answer_text(body: dict[str, Any]) -> str:
    candidates = body.get("candidates") or []
    parts = (candidates[0].get("content") or {}).get("parts") or [] if candidates else []
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


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
    parser.add_argument("--fault-rate", "--fault_rate", dest="fault_rate", type=float, default=0.0,
                        help="probability that a request gets a fault (0: no faults)")
    parser.add_argument("--fault-seed", "--fault_seed", dest="fault_seed", type=int, default=0)
    parser.add_argument("--fault-kinds", "--fault_kinds", dest="fault_kinds", default=",".join(TRANSIENT_FAULTS),
                        help="comma-separated kinds, each with an optional :weight, e.g. 429:3,503,reset; "
                        f"allowed: {', '.join(FAULT_KINDS)}")
    parser.add_argument("--fault-max-per-image", "--fault_max_per_image", dest="fault_max_per_image", type=int,
                        default=3, help="faults per image before it is always answered (-1: no limit)")
    args = parser.parse_args(argv)
    faults = None
    if args.fault_rate > 0:
        try:
            kinds, weights = FaultSchedule.parse_kinds(args.fault_kinds)
            faults = FaultSchedule(
                seed=args.fault_seed,
                rate=args.fault_rate,
                kinds=kinds,
                weights=weights,
                max_faults_per_image=None if args.fault_max_per_image < 0 else args.fault_max_per_image,
            )
        except ValueError as error:
            parser.error(str(error))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeGeminiServer(
        args.host, args.port, latency_s=args.latency_s, api_key=args.api_key, faults=faults
    ) as server:
        print(server.url, flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
