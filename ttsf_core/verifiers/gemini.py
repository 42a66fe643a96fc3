"""Gemini as a verifier: one structured-output request per image, through the google-genai SDK
(or per video, sent whole as its mp4, under export_args.video_grading: whole).

Requests run on the SDK's async client, on one event loop per verifier: at most max_concurrency at
once (shared by every thread that calls it), each with a deadline on the whole request
(request_timeout_s: an answer dripping a byte at a time cannot hold a worker), and results are
collected by input position, so every score stays with its image however the answers come back.
Each answer's usage (the model version that answered, its prompt, image, thought and output tokens)
comes back with its grades, and each result is handed on as it arrives, so it can be stored at once.
What is sent follows the model (gemini_models): a thinking level to Gemini 3, a thinking budget to
2.5, the media resolution when one is chosen, temperature 0 only to models before Gemini 3.
Every failure becomes one of the typed errors of `base` (gemini_errors): 429 -> RateLimitError with
Retry-After; 5xx, timeouts, resets, cut bodies, non-JSON bodies -> RetryableVerifierError; a rejected
key, a model Google no longer serves or a setting it refuses -> VerifierConfigError; a safety block ->
UngradeableError; an answer that does not fit the schema -> VerifierError. An image never gets a None.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    SCORE_MAX,
    Graded,
    Grades,
    OnResult,
    RetryableVerifierError,
    UngradeableError,
    Usage,
    VerifierConfigError,
    parse_grades,
    with_usage,
)
from ttsf_core.verifiers.gemini_models import (
    API_KEY_ENV,
    DEFAULT_GEMINI_MODEL,
    known_model,
    sent_settings,
    typical_tokens,
)
from ttsf_core.verifiers.base import checked_images
from ttsf_core.verifiers.remote import RemoteGrader
from ttsf_core.verifiers.rubric import grading_text, load_rubric

if TYPE_CHECKING:  # the SDK loads when the verifier first talks to the API, not when it is named
    from google import genai
    from google.genai import types

BASE_URL_ENV = "GEMINI_BASE_URL"
ALLOWED_OPTIONS = ("base_url", "api_version")
CHECK_TIMEOUT_MS = 15_000
# Gemini's limit on a whole generateContent request with inline data (larger files need its File API).
INLINE_LIMIT_BYTES = 20 * 2**20


class GeminiVerifier(RemoteGrader):
    """Grades images with a Gemini model. Safe to share between threads: one pool bounds them all."""

    name = "gemini"
    reads_rubric = True  # its grades follow the rubric: the rubric is part of its grading identity
    score_max = SCORE_MAX  # the rubric's scale has a top (adaptive allocation expects no gain above it)
    reads_video = True  # export_args.video_grading "whole": an mp4 is sent as it is (score_videos_partial)
    billed = True  # every answer has a price (ttsf_core.costs)
    takes_thinking = True  # verifier_args.thinking_level and media_resolution
    DEFAULT_MODEL = DEFAULT_GEMINI_MODEL

    def __init__(self, args: VerifierArgs):
        self.args = args
        self.model_name = (args.model_name or "").strip() or self.DEFAULT_MODEL
        options = _checked_options(args.options)
        self.sent = self.check_settings(args)
        api_key = os.environ.get(API_KEY_ENV, "").strip()
        if not api_key:
            raise VerifierConfigError(
                f"{API_KEY_ENV} (verifier_args.name={self.name}): received nothing, allowed: your Gemini API key in "
                "the environment (https://aistudio.google.com/apikey), or another --verifier_to_use"
            )
        from ttsf_core.verifiers import gemini_wire as wire  # the SDK: a verifier built is about to talk

        # The SDK's own retry stays off (its default): retries belong to the caller, which honours
        # Retry-After; the SDK's retry would not. Its timeout is per read: the deadline on a whole
        # request is ours (request_timeout_s, enforced in `_ask`).
        http_options = wire.types.HttpOptions(
            base_url=_base_url(options),
            api_version=options.get("api_version"),
            timeout=max(1, round(args.request_timeout_s * 1000)),
        )
        self._api_key, self._http_options = api_key, http_options
        self._client: genai.Client | None = None
        # The one rubric (rubric.md, or verifier_args.prompt_path); the prompt joins it per request.
        self.rubric = load_rubric(args.prompt_path)
        self._config = wire.request_config(self.sent, args)
        self._init_remote()
        # Once Gemini refuses the key or the model, no later request of this verifier is sent.
        self._refusal: VerifierConfigError | None = None

    @classmethod
    def check_settings(cls, args: VerifierArgs) -> dict[str, Any]:
        """What will be sent to the model for these args (no network); VerifierConfigError, in one line,
        for a setting ttsf knows the model does not take."""
        try:
            return sent_settings((args.model_name or "").strip() or cls.DEFAULT_MODEL, args.thinking_level,
                                 args.media_resolution)
        except ValueError as error:
            raise VerifierConfigError(str(error)) from None

    @classmethod
    def grading_settings(cls, args: VerifierArgs) -> dict[str, Any]:
        """What decides its grades beyond `args` (no network): the model when it is ttsf's default, and
        every setting sent but a temperature of 0 (sent to every model before there were others)."""
        model = (args.model_name or "").strip() or cls.DEFAULT_MODEL
        try:
            sent = sent_settings(model, args.thinking_level, args.media_resolution)
        except ValueError:
            return {}  # refused when the verifier is built
        own = {name: value for name, value in sent.items() if not (name == "temperature" and value == 0.0)}
        return ({"model": model} if not (args.model_name or "").strip() else {}) | own

    @classmethod
    def typical_usage(cls, args: VerifierArgs, prompt: str) -> Usage:
        """What ttsf expects one request to take, before any grade was measured (`ttsf estimate`)."""
        model = (args.model_name or "").strip() or cls.DEFAULT_MODEL
        text = grading_text(load_rubric(args.prompt_path), prompt)
        return Usage(model=model, **typical_tokens(model, args.thinking_level, args.media_resolution, len(text)))

    def score_partial(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades | BaseException]:
        """One Grades or typed error per image, in input order (grade_partial without the usage)."""
        return [result.grades if isinstance(result, Graded) else result for result in self.grade_partial(prompt, images)]

    def grade_partial(self, prompt: str, images: Sequence[Image.Image],
                      on_result: OnResult | None = None) -> list[Graded | BaseException]:
        """One Graded (grades and usage) or typed error per image, in input order, each also passed to
        `on_result(index, result)` as it arrives. The answers that did arrive are kept (a retry then asks
        only for the rest); a rejected key stops the requests not yet sent."""
        images = checked_images(images)  # before anything is sent
        if not images:
            return []
        from ttsf_core.verifiers.gemini_wire import image_part

        parts = [image_part(image) for image in images]
        return self._event_loop().run(self._ask_all(prompt, parts, on_result))

    def score_videos_partial(self, prompt: str, videos: Sequence[bytes],
                             on_result: OnResult | None = None) -> list[Graded | BaseException]:
        """One Graded or typed error per mp4 (its bytes), in input order, each sent whole as inline
        video/mp4: Gemini samples it itself (1 frame a second, with the audio track if any). A video over
        the inline request limit is ungradeable this way, and says how to grade it instead."""
        from ttsf_core.verifiers.gemini_wire import video_part

        parts: list[types.Part | BaseException] = [
            video_part(video) if len(video) <= INLINE_LIMIT_BYTES else UngradeableError(
                f"image {index}: a {len(video) / 2**20:.1f} MB video is over Gemini's {INLINE_LIMIT_BYTES // 2**20} MB "
                "inline request limit; grade videos by frames (export_args.video_grading: frames)", index)
            for index, video in enumerate(videos)]
        if not parts:
            return []
        return self._event_loop().run(self._ask_all(prompt, parts, on_result))

    def score_one(self, prompt: str, image: Image.Image, index: int = 0) -> Grades:
        """Grade one image (`index` only names it in errors)."""
        from ttsf_core.verifiers.gemini_wire import image_part

        result = self._event_loop().run(self._ask(prompt, image_part(checked_images([image])[0]), index))
        if isinstance(result, BaseException):
            raise result
        return result.grades

    def check_access(self) -> None:
        """Ask for the model's metadata (no generation, no image): a rejected key, or a model Google does
        not serve (then the models it lists are suggested instead), raises VerifierConfigError now,
        before any image is made; an unreachable service raises RetryableVerifierError (grading will
        retry it)."""
        from ttsf_core.verifiers import gemini_wire as wire
        from ttsf_core.verifiers.gemini_errors import map_api_error
        from ttsf_core.verifiers.remote import TRANSIENT_ERRORS

        probe = wire.types.HttpOptions(base_url=self._http_options.base_url,
                                       api_version=self._http_options.api_version, timeout=CHECK_TIMEOUT_MS)
        try:
            with wire.genai.Client(api_key=self._api_key, http_options=probe) as client:
                try:
                    client.models.get(model=self.model_name)
                except wire.genai.errors.APIError as error:
                    served = wire.served_flash_models(client) if error.code == 404 else None
                    raise map_api_error(error, None, self.model_name, served) from error
        except TRANSIENT_ERRORS as error:
            raise RetryableVerifierError(f"Gemini could not be reached: {type(error).__name__}: {error}") from error

    def access_warnings(self) -> list[str]:
        """What is worth saying before a run (not worth stopping it for)."""
        if known_model(self.model_name) is None and self.args.thinking_level is None:
            return [f"ttsf does not know how {self.model_name} thinks: it is sent no thinking setting and thinks "
                    "as much as it does by default (thought tokens are billed as output); "
                    "--verifier_thinking_level sets it"]
        return []

    async def _ask_all(self, prompt: str, media: list[types.Part | BaseException],
                       on_result: OnResult | None) -> list[Graded | BaseException]:
        """One request per image or video part (an error in its place is returned as it is); each
        result goes to `on_result` as soon as it is known."""
        async def ask(part: types.Part | BaseException, index: int) -> Graded | BaseException:
            result = part if isinstance(part, BaseException) else await self._ask(prompt, part, index)
            if on_result is not None:
                on_result(index, result)
            return result

        return list(await asyncio.gather(*(ask(part, index) for index, part in enumerate(media))))

    async def _ask(self, prompt: str, media: types.Part, index: int) -> Graded | BaseException:
        """One request, at most max_concurrency at once, each bounded by request_timeout_s from its
        first byte to its last; every failure is returned as one of the typed errors of `base` (one
        whose answer was billed carries its usage)."""
        from ttsf_core.verifiers import gemini_wire as wire
        from ttsf_core.verifiers.gemini_errors import answer_text, classify

        contents = [wire.types.Part.from_text(text=grading_text(self.rubric, prompt)), media]
        async with self._semaphore():
            if self._refusal is not None:
                return VerifierConfigError(f"{self._refusal} (request for image {index} not sent)", index)
            try:
                request = self._genai_client().aio.models.generate_content(
                    model=self.model_name, contents=contents, config=self._config)
                response = await asyncio.wait_for(request, timeout=self.args.request_timeout_s)
            except Exception as error:  # noqa: BLE001 - classified below, never lost
                found = classify(error, index, self.model_name, self.args.request_timeout_s)
                if isinstance(found, VerifierConfigError):
                    self._refusal = found
                return found
            usage = wire.response_usage(response, self.model_name)
            try:
                return Graded(parse_grades(answer_text(response, index), index), usage)
            except Exception as error:  # noqa: BLE001 - a billed answer that cannot be used
                return with_usage(classify(error, index, self.model_name, self.args.request_timeout_s), usage)

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
        from ttsf_core.verifiers.gemini_wire import genai

        with self._lock:
            if self._client is None:
                self._client = genai.Client(api_key=self._api_key, http_options=self._http_options)
            return self._client


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
