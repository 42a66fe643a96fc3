"""Gemini as a verifier: one structured-output request per image, through the google-genai SDK
(or per video, sent whole as its mp4, under export_args.video_grading: whole).

Requests run on the SDK's async client, on one event loop per verifier: at most max_concurrency at
once (shared by every thread that calls it), each with a deadline on the whole request
(request_timeout_s: an answer dripping a byte at a time cannot hold a worker), and results are
collected by input position, so every score stays with its image however the answers come back.
Every failure becomes one of the typed errors of `base` (the caller decides about retries): 429 ->
RateLimitError with Retry-After; 5xx, timeouts, resets, cut bodies, non-JSON bodies ->
RetryableVerifierError; a rejected key or unknown model -> VerifierConfigError; a safety block ->
UngradeableError; an answer that does not fit the schema -> VerifierError. An image never gets a None.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
from typing import Any, Sequence

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    Grades,
    RateLimitError,
    RetryableVerifierError,
    RubricGrades,
    UngradeableError,
    VerifierConfigError,
    VerifierError,
    parse_grades,
)
from ttsf_core.verifiers.remote import TRANSIENT_ERRORS, RemoteGrader, checked_images, png_bytes
from ttsf_core.verifiers.rubric import grading_text, load_rubric

API_KEY_ENV = "GEMINI_API_KEY"
BASE_URL_ENV = "GEMINI_BASE_URL"
ALLOWED_OPTIONS = ("base_url", "api_version")

class GeminiVerifier(RemoteGrader):
    """Grades images with a Gemini model. Safe to share between threads: one pool bounds them all."""

    name = "gemini"
    reads_rubric = True  # its grades follow the rubric: the rubric is part of its grading identity
    reads_video = True  # export_args.video_grading "whole": an mp4 is sent as it is (score_videos_partial)
    DEFAULT_MODEL = "gemini-2.0-flash"

    def __init__(self, args: VerifierArgs):
        self.args = args
        self.model_name = (args.model_name or "").strip() or self.DEFAULT_MODEL
        options = _checked_options(args.options)
        api_key = os.environ.get(API_KEY_ENV, "").strip()
        if not api_key:
            raise VerifierConfigError(
                f"{API_KEY_ENV} (verifier_args.name={self.name}): received nothing, allowed: your Gemini API key in "
                "the environment (https://aistudio.google.com/apikey), or another --verifier_to_use"
            )
        # The SDK's own retry stays off (its default): retries belong to the caller, which honours
        # Retry-After; the SDK's retry would not. Its timeout is per read: the deadline on a whole
        # request is ours (request_timeout_s, enforced in `_ask`).
        http_options = types.HttpOptions(
            base_url=_base_url(options),
            api_version=options.get("api_version"),
            timeout=max(1, round(args.request_timeout_s * 1000)),
        )
        self._api_key, self._http_options = api_key, http_options
        self._client: genai.Client | None = None
        # The one rubric (rubric.md, or verifier_args.prompt_path); the prompt joins it per request.
        self.rubric = load_rubric(args.prompt_path)
        self._config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=gemini_response_schema(),
            max_output_tokens=args.max_new_tokens,
            temperature=0,
            seed=args.seed,  # verifier_args.seed; None: not sent
        )
        self._init_remote()
        # Once Gemini refuses the key or the model, no later request of this verifier is sent.
        self._refusal: VerifierConfigError | None = None

    def score_partial(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades | BaseException]:
        """One Grades or typed error per image, in input order: the answers that did arrive are kept
        (a retry then asks only for the rest). A rejected key stops the requests not yet sent."""
        images = checked_images(images)  # before anything is sent
        if not images:
            return []
        return self._event_loop().run(self._ask_all(prompt, [_image_part(image) for image in images]))

    def score_videos_partial(self, prompt: str, videos: Sequence[bytes]) -> list[Grades | BaseException]:
        """One Grades or typed error per mp4 (its bytes), in input order, each sent whole as inline
        video/mp4: Gemini samples it itself (1 frame a second, with the audio track if any). A video over
        the inline request limit is ungradeable this way, and says how to grade it instead."""
        parts: list[types.Part | BaseException] = [
            _video_part(video) if len(video) <= INLINE_LIMIT_BYTES else UngradeableError(
                f"image {index}: a {len(video) / 2**20:.1f} MB video is over Gemini's {INLINE_LIMIT_BYTES // 2**20} MB "
                "inline request limit; grade videos by frames (export_args.video_grading: frames)", index)
            for index, video in enumerate(videos)]
        if not parts:
            return []
        return self._event_loop().run(self._ask_all(prompt, parts))

    def score_one(self, prompt: str, image: Image.Image, index: int = 0) -> Grades:
        """Grade one image (`index` only names it in errors)."""
        result = self._event_loop().run(self._ask(prompt, _image_part(checked_images([image])[0]), index))
        if isinstance(result, BaseException):
            raise result
        return result

    def check_access(self) -> None:
        """Ask for the model's metadata (no generation, no image): a rejected key or an unknown model
        raises VerifierConfigError now, before any image is made; an unreachable service raises
        RetryableVerifierError (grading will retry it)."""
        probe = types.HttpOptions(base_url=self._http_options.base_url, api_version=self._http_options.api_version,
                                  timeout=CHECK_TIMEOUT_MS)
        try:
            with genai.Client(api_key=self._api_key, http_options=probe) as client:
                client.models.get(model=self.model_name)
        except genai_errors.APIError as error:
            raise map_api_error(error, None, self.model_name) from error
        except TRANSIENT_ERRORS as error:
            raise RetryableVerifierError(f"Gemini could not be reached: {type(error).__name__}: {error}") from error

    async def _ask_all(self, prompt: str, media: list[types.Part | BaseException]) -> list[Grades | BaseException]:
        """One request per image or video part (an error in its place is returned as it is)."""
        async def ask(part: types.Part | BaseException, index: int) -> Grades | BaseException:
            return part if isinstance(part, BaseException) else await self._ask(prompt, part, index)

        return list(await asyncio.gather(*(ask(part, index) for index, part in enumerate(media))))

    async def _ask(self, prompt: str, media: types.Part, index: int) -> Grades | BaseException:
        """One request, at most max_concurrency at once, each bounded by request_timeout_s from its
        first byte to its last; every failure is returned as one of the typed errors of `base`."""
        contents = [types.Part.from_text(text=grading_text(self.rubric, prompt)), media]
        async with self._semaphore():
            if self._refusal is not None:
                return VerifierConfigError(f"{self._refusal} (request for image {index} not sent)", index)
            try:
                request = self._genai_client().aio.models.generate_content(
                    model=self.model_name, contents=contents, config=self._config)
                response = await asyncio.wait_for(request, timeout=self.args.request_timeout_s)
                return parse_grades(_answer_text(response, index), index)
            except Exception as error:  # noqa: BLE001 - classified below, never lost
                found = classify(error, index, self.model_name, self.args.request_timeout_s)
                if isinstance(found, VerifierConfigError):
                    self._refusal = found
                return found

    def close(self) -> None:
        loop = self._take_loop()
        with self._lock:
            client, self._client = self._client, None
        if loop is not None and client is not None:
            loop.run(client.aio.aclose())
        if client is not None:
            client.close()
        if loop is not None:
            loop.close()

    def _genai_client(self) -> genai.Client:
        with self._lock:
            if self._client is None:
                self._client = genai.Client(api_key=self._api_key, http_options=self._http_options)
            return self._client


CHECK_TIMEOUT_MS = 15_000
# Gemini's limit on a whole generateContent request with inline data (larger files need its File API).
INLINE_LIMIT_BYTES = 20 * 2**20


def _image_part(image: Image.Image) -> types.Part:
    return types.Part.from_bytes(data=png_bytes(image), mime_type="image/png")


def _video_part(mp4: bytes) -> types.Part:
    return types.Part.from_bytes(data=mp4, mime_type="video/mp4")


def classify(error: BaseException, index: int | None, model: str, deadline_s: float) -> BaseException:
    """Any failure of one request as one of the typed errors of `base`: the caller decides on retries."""
    where = f"Gemini request for image {index}" if index is not None else "Gemini request"
    if isinstance(error, (VerifierError, RetryableVerifierError)):
        return error
    if isinstance(error, genai_errors.APIError):
        return map_api_error(error, index, model)
    if isinstance(error, asyncio.TimeoutError):
        return RetryableVerifierError(f"{where} had no complete answer within request_timeout_s={deadline_s:g} s")
    if isinstance(error, TRANSIENT_ERRORS):
        return RetryableVerifierError(f"{where} failed in transit: {type(error).__name__}: {error}")
    if isinstance(error, (json.JSONDecodeError, genai_errors.UnknownApiResponseError)):
        # A 200 whose body is not JSON comes from a proxy or a cut-off answer, not from the model.
        return RetryableVerifierError(f"{where}: the answer was not JSON ({type(error).__name__}: {error})")
    return RetryableVerifierError(f"{where} failed: {type(error).__name__}: {error}") \
        if isinstance(error, OSError) else error


def gemini_response_schema() -> dict[str, Any]:
    """The rubric's JSON schema (RubricGrades) without `additionalProperties`.

    RubricGrades forbids extra fields, so pydantic emits `additionalProperties: false`; the SDK forwards it
    as `additional_properties`, which the Gemini Developer API rejects with 400 INVALID_ARGUMENT
    ("Unknown name"). parse_grades still rejects extra fields on our side.
    """
    return _without_key(RubricGrades.model_json_schema(), "additionalProperties")


def _without_key(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _without_key(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_without_key(v, key) for v in node]
    return node



def _answer_text(response: types.GenerateContentResponse, index: int) -> str:
    """The answer's text. A safety block (of the prompt or of the answer) is final for this image:
    UngradeableError; any other empty answer is a VerifierError (asked again, a bounded number of times)."""
    text = response.text
    if text:
        return text
    reason = _finish_reason(response)
    kind = UngradeableError if "SAFETY" in reason.upper() or "BLOCK" in reason.upper() else VerifierError
    raise kind(f"Gemini gave no text for image {index} ({reason})", index)


def _finish_reason(response: types.GenerateContentResponse) -> str:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt blocked: {feedback.block_reason}"
    candidates = response.candidates or []
    if candidates and candidates[0].finish_reason is not None:
        return f"finish reason: {candidates[0].finish_reason}"
    return "no candidates"


def map_api_error(error: genai_errors.APIError, index: int | None, model: str) -> Exception:
    """An SDK HTTP error as one of our typed errors (see the module docstring of `base`)."""
    code = error.code
    detail = f"{code} {error.status or ''}: {error.message or error.details}".strip()
    where = f"Gemini request for image {index}" if index is not None else "Gemini request"
    if code == 429:
        return RateLimitError(f"{where} was rate limited ({detail})", retry_after=retry_after_seconds(error))
    if code in (401, 403) or _is_bad_key(error):
        return VerifierConfigError(f"{API_KEY_ENV} (verifier_args.name=gemini): received a key Gemini rejects "
                                   f"({detail}), allowed: a valid Gemini API key (https://aistudio.google.com/apikey)",
                                   index)
    if code == 404:
        return VerifierConfigError(f"--verifier_model (verifier_args.model_name): received {model!r} (Gemini does "
                                   f"not know it: {detail}), allowed: a Gemini model such as gemini-2.0-flash", index)
    if code == 408 or isinstance(error, genai_errors.ServerError):
        return RetryableVerifierError(f"{where} failed on the server side ({detail})", retry_after_seconds(error))
    return VerifierError(f"{where} was refused ({detail})", index)


def _is_bad_key(error: genai_errors.APIError) -> bool:
    # An invalid key is answered with 400 INVALID_ARGUMENT and reason API_KEY_INVALID, not 401.
    return error.code == 400 and any(d.get("reason") == "API_KEY_INVALID" for d in _error_details(error))


def retry_after_seconds(error: genai_errors.APIError) -> float | None:
    """Seconds to wait, from the Retry-After header (seconds or HTTP date) or the body's RetryInfo.

    When both are present the longer wait wins: retrying earlier than either asks only earns
    another 429.
    """
    headers = getattr(error.response, "headers", None) or {}
    header = next((value for name, value in headers.items() if name.lower() == "retry-after"), None)
    found = [_parse_retry_after(header), _retry_info_delay(error)]
    found = [value for value in found if value is not None]
    return max(found) if found else None


def _parse_retry_after(value: str | None) -> float | None:
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_info_delay(error: genai_errors.APIError) -> float | None:
    for detail in _error_details(error):
        delay = detail.get("retryDelay") if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _error_details(error: genai_errors.APIError) -> list[dict[str, Any]]:
    body = error.details if isinstance(error.details, dict) else {}
    inner = body.get("error", body)
    details = inner.get("details") if isinstance(inner, dict) else None
    return [detail for detail in details if isinstance(detail, dict)] if isinstance(details, list) else []




def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(ALLOWED_OPTIONS))
    if unknown:
        raise VerifierConfigError(
            f"verifier_args.options: received unknown {', '.join(map(repr, unknown))}, allowed: {', '.join(ALLOWED_OPTIONS)}"
        )
    return options


def _base_url(options: dict[str, Any]) -> str | None:
    """options["base_url"], else $GEMINI_BASE_URL, else None (the SDK's default endpoint)."""
    source, value = "verifier_args.options.base_url", options.get("base_url")
    if value is None:
        source, value = BASE_URL_ENV, os.environ.get(BASE_URL_ENV, "").strip() or None
    if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
        raise VerifierConfigError(f"{source}: received {value!r}, allowed: an http:// or https:// URL")
    return value
