"""Any OpenAI-compatible chat-completions server as a verifier (OpenAI, vLLM, SGLang, Ollama, LM Studio),
through the real `openai` client: one request per image, the image as a PNG data URL, the one rubric.

Requests run on the SDK's async client (AsyncOpenAI), on one event loop per verifier: at most
max_concurrency at once (shared by every thread that calls it), each with a deadline on the whole
request (request_timeout_s: the SDK's own timeout is per read, so an answer dripping a byte at a time
would never trip it), and results are collected by input position, so every score stays with its
image however the answers come back. The SDK's own retries are off (max_retries=0): the caller
retries, honouring Retry-After. Every failure becomes one of the typed errors of `base`:

  429                                 RateLimitError, retry_after from retry-after-ms, Retry-After
                                      (seconds or an HTTP date) or the message's "try again in 20s"
                                      (the longest wait wins)
  429 insufficient_quota              VerifierConfigError (the account has no credit: waiting won't help)
  5xx, 408, 409, timeouts, refused or
  reset connections, cut bodies,
  non-JSON or non-completion bodies   RetryableVerifierError
  401, 403                            VerifierConfigError (the key); nothing more is sent
  404                                 VerifierConfigError (the model, or a base URL without /v1)
  400 about response_format           VerifierConfigError (use options.response_format: json_object)
  other 4xx                           VerifierError naming the image
  finish_reason content_filter,
  a refusal                           UngradeableError (final for this image)
  no choices, empty content, an
  answer not fitting the schema       VerifierError naming the image (asked again a bounded number of times)

Configuration (VerifierArgs):
  model_name                  default "gpt-4o-mini"
  options.base_url            else $OPENAI_BASE_URL, else https://api.openai.com/v1
  options.response_format     "json_schema" (default: strict structured output against RubricGrades),
                              "json_object" (servers without json_schema), "none" (plain text; the
                              answer is still parsed by base.parse_grades)
  seed                        sent as `seed` when set
  max_new_tokens              sent as `max_tokens`; temperature is 0
  $OPENAI_API_KEY             required for api.openai.com. Any other base URL is taken for a server
                              that may need no key (vLLM, SGLang, Ollama, LM Studio without --api-key):
                              without one the placeholder "EMPTY" is sent, and a server that does want
                              a key answers 401, reported as a VerifierConfigError naming OPENAI_API_KEY.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.parse
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    RUBRIC_DEFAULT_METRIC,
    RUBRIC_METRICS,
    SCORE_MAX,
    Graded,
    Grades,
    OnResult,
    RetryableVerifierError,
    RubricGrades,
    UngradeableError,
    Usage,
    VerifierConfigError,
    VerifierError,
    parse_grades,
    with_usage,
)
from ttsf_core.verifiers.base import checked_images
from ttsf_core.verifiers.remote import RemoteGrader, png_bytes
from ttsf_core.verifiers.rubric import grading_text, load_rubric

if TYPE_CHECKING:  # the SDK loads when the verifier first talks to a server
    import openai

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
ALLOWED_OPTIONS = ("base_url", "response_format")
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
NO_KEY = "EMPTY"  # what a server that needs no key gets as the bearer token (vLLM's convention)
KEY_HOSTS = ("openai.com",)  # base URLs on these hosts (and their subdomains) require OPENAI_API_KEY
CHECK_TIMEOUT_S = 15.0
SCHEMA_NAME = "grades"


class OpenAIVerifier(RemoteGrader):
    """Grades images with a vision model behind an OpenAI-compatible chat-completions endpoint. Safe to
    share between threads: one semaphore bounds them all."""

    name = "openai"
    reads_rubric = True  # its grades follow the rubric: the rubric is part of its grading identity
    score_max = SCORE_MAX  # the rubric's scale has a top (adaptive allocation expects no gain above it)
    metrics = RUBRIC_METRICS
    default_metric = RUBRIC_DEFAULT_METRIC
    billed = True  # every answer has a price (ttsf_core.costs; set yours in config `prices`)
    DEFAULT_MODEL = "gpt-4o-mini"

    def __init__(self, args: VerifierArgs):
        self.args = args
        options = _checked_options(args.options)
        self.base_url = _base_url(options)
        api_key = os.environ.get(API_KEY_ENV, "").strip()
        if not api_key and needs_key(self.base_url):
            raise VerifierConfigError(
                f"{API_KEY_ENV} (verifier_args.name={self.name}): received nothing, allowed: your OpenAI API key in "
                f"the environment (https://platform.openai.com/api-keys), a server that needs no key in "
                f"{BASE_URL_ENV} or verifier_args.options.base_url (vLLM, SGLang, Ollama, LM Studio), or another "
                "--verifier_to_use"
            )
        self._api_key = api_key or None
        self.model_name = (args.model_name or "").strip() or self.DEFAULT_MODEL
        self.response_format = options.get("response_format", "json_schema")
        # The one rubric (rubric.md, or verifier_args.prompt_path); the prompt joins it per request.
        self.rubric = load_rubric(args.prompt_path)
        self._create_args: dict[str, Any] = {"model": self.model_name, "temperature": 0,
                                             "max_tokens": args.max_new_tokens}
        if self.response_format != "none":
            self._create_args["response_format"] = response_format_param(self.response_format)
        if args.seed is not None:
            self._create_args["seed"] = args.seed
        self._client: "openai.AsyncOpenAI | None" = None
        self._init_remote()
        # Once the server refuses the key, the model or the account, no later request is sent.
        self._refusal: VerifierConfigError | None = None

    @classmethod
    def typical_usage(cls, args: VerifierArgs, prompt: str) -> Usage:
        """What ttsf expects one request to take before any grade was measured (`ttsf estimate`): the text
        at 4 characters a token, an image at OpenAI's high-detail price of a 1024 px square (765 tokens),
        a 400-token answer."""
        text = grading_text(load_rubric(args.prompt_path), prompt)
        return Usage(model=(args.model_name or "").strip() or cls.DEFAULT_MODEL, prompt_tokens=-(-len(text) // 4) + 765,
                     image_tokens=765, output_tokens=400)

    def score_partial(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades | BaseException]:
        """One Grades or typed error per image, in input order (grade_partial without the usage)."""
        return [result.grades if isinstance(result, Graded) else result for result in self.grade_partial(prompt, images)]

    def grade_partial(self, prompt: str, images: Sequence[Image.Image],
                      on_result: OnResult | None = None) -> list[Graded | BaseException]:
        """One Graded (grades and the completion's `usage`) or typed error per image, in input order, each
        also passed to `on_result(index, result)` as it arrives. The answers that did arrive are kept (a
        retry then asks only for the rest). A refused key stops the requests not yet sent."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: received {prompt!r}, allowed: a non-empty text")
        images = checked_images(images)  # before anything is sent
        if not images:
            return []
        # Encoded here, on the caller's thread: the event loop only waits on the network.
        text, urls = grading_text(self.rubric, prompt), [png_data_url(image) for image in images]
        return self._event_loop().run(self._ask_all(text, urls, on_result))

    def check_access(self) -> None:
        """GET /models/{model} (no generation, no image): a refused key or an unknown model raises
        VerifierConfigError now, before any image is made; an unreachable server raises
        RetryableVerifierError (grading will retry it). A server that only lists its models
        (GET /models) is asked for the list instead."""
        import openai

        from ttsf_core.verifiers.openai_errors import map_api_error

        client = openai.OpenAI(api_key=self._api_key or NO_KEY, base_url=self.base_url, max_retries=0,
                               timeout=CHECK_TIMEOUT_S)
        try:
            with client:
                try:
                    found = client.models.retrieve(self.model_name)
                except openai.NotFoundError as not_found:
                    found = self._model_from_list(client, not_found)
                if not isinstance(found, openai.BaseModel):
                    raise RetryableVerifierError(f"{self.base_url}/models answered something that is not a model: "
                                                 f"{str(found)[:200]!r}")
        except VerifierConfigError as error:
            self._refusal = error
            raise
        except openai.APIStatusError as error:
            found_error = map_api_error(error, None, self)
            if isinstance(found_error, VerifierConfigError):
                self._refusal = found_error
            raise found_error from error
        except (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError) as error:
            raise RetryableVerifierError(f"{self.base_url} could not be reached: {type(error).__name__}: "
                                         f"{error}") from error

    def _model_from_list(self, client: "openai.OpenAI", not_found: "openai.NotFoundError") -> Any:
        """The model from GET /models, for servers without GET /models/{id}; VerifierConfigError if the
        list lacks it (or the server has neither route: the base URL is wrong)."""
        import openai

        from ttsf_core.verifiers.openai_errors import map_api_error

        try:
            page = client.models.list()
        except openai.NotFoundError:
            raise map_api_error(not_found, None, self) from not_found
        if isinstance(page, str):  # a non-JSON body comes back as text: not an API answering
            raise RetryableVerifierError(f"{self.base_url}/models answered something that is not a model list: "
                                         f"{page[:200]!r}")
        served = [model.id for model in page]
        for model in served:
            if model == self.model_name:
                return openai.types.Model(id=model, object="model", created=0, owned_by="")
        raise VerifierConfigError(
            f"--verifier_model (verifier_args.model_name): received {self.model_name!r} (the server at "
            f"{self.base_url} does not serve it), allowed: one of {', '.join(served[:20]) or 'nothing (it lists no models)'}"
        )

    async def _ask_all(self, text: str, urls: list[str], on_result: OnResult | None) -> list[Graded | BaseException]:
        async def ask(url: str, index: int) -> Graded | BaseException:
            result = await self._ask(text, url, index)
            if on_result is not None:
                on_result(index, result)
            return result

        return list(await asyncio.gather(*(ask(url, index) for index, url in enumerate(urls))))

    async def _ask(self, text: str, image_url: str, index: int) -> Graded | BaseException:
        """One request (the grading text, then the image), at most max_concurrency at once, each bounded
        by request_timeout_s from its first byte to its last; every failure is returned as one of the
        typed errors of `base`."""
        from ttsf_core.verifiers.openai_errors import classify, completion_usage

        messages = [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}]
        async with self._semaphore():
            if self._refusal is not None:
                return VerifierConfigError(f"{self._refusal} (request for image {index} not sent)", index)
            try:
                request = self._openai_client().chat.completions.create(messages=messages, **self._create_args)
                response = await asyncio.wait_for(request, timeout=self.args.request_timeout_s)
            except Exception as error:  # noqa: BLE001 - classified below, never lost
                found = classify(error, index, self)
                if isinstance(found, VerifierConfigError):
                    self._refusal = found
                return found
            usage = completion_usage(response, self.model_name)
            try:
                return Graded(self._grades(response, index), usage)
            except Exception as error:  # noqa: BLE001 - a billed answer that cannot be used
                return with_usage(classify(error, index, self), usage) if usage else classify(error, index, self)

    def _grades(self, response: Any, index: int) -> Grades:
        """The grades in one completion. A content filter or a refusal is final for this image
        (UngradeableError); a missing or unusable answer is a VerifierError."""
        from openai.types.chat import ChatCompletion

        where = f"{self.base_url} answer for image {index}"
        if not isinstance(response, ChatCompletion):  # the SDK returns a non-JSON body as a str
            raise RetryableVerifierError(f"{where} is not a chat completion (a proxy's page?): {str(response)[:200]!r}")
        if not response.choices:
            raise VerifierError(f"{where} holds no choices", index)
        choice = response.choices[0]
        refusal = getattr(choice.message, "refusal", None)
        if choice.finish_reason == "content_filter" or refusal:
            reason = f"refused: {refusal}" if refusal else "finish reason: content_filter"
            raise UngradeableError(f"{where}: the model will not grade it ({reason})", index)
        try:
            return parse_grades(choice.message.content, index)
        except VerifierError as error:
            if choice.finish_reason != "length":
                raise
            raise VerifierError(f"{error} (the answer was cut at max_new_tokens={self.args.max_new_tokens})",
                                index) from None

    def close(self) -> None:
        loop = self._take_loop()
        with self._lock:
            client, self._client = self._client, None
        if loop is not None:
            if client is not None:
                loop.run(client.close())
            loop.close()

    def _openai_client(self) -> "openai.AsyncOpenAI":
        import openai

        with self._lock:
            if self._client is None:
                self._client = openai.AsyncOpenAI(api_key=self._api_key or NO_KEY, base_url=self.base_url,
                                                  max_retries=0, timeout=self.args.request_timeout_s)
            return self._client


def response_format_param(kind: str) -> dict[str, Any]:
    """The `response_format` of a request: strict json_schema against RubricGrades, or json_object."""
    if kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": openai_strict_schema()}}


_DROPPED_KEYWORDS = frozenset({"title", "default", "description"})


def openai_strict_schema() -> dict[str, Any]:
    """RubricGrades' JSON schema as OpenAI's strict mode takes it: references inlined (not every
    compatible server resolves $defs), every object `additionalProperties: false` with all its
    properties required, no titles or descriptions (the rubric explains). The 0-10 bounds stay
    (parse_grades enforces them as well)."""
    schema = RubricGrades.model_json_schema()
    defs = schema.pop("$defs", {})

    def strict(node: Any) -> Any:
        if isinstance(node, list):
            return [strict(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return strict(defs[node["$ref"].rsplit("/", 1)[-1]])
        found = {key: strict(value) for key, value in node.items() if key not in _DROPPED_KEYWORDS | {"properties"}}
        if "properties" in node:  # field names, not keywords: none is dropped
            found["properties"] = {name: strict(child) for name, child in node["properties"].items()}
        if found.get("type") == "object":
            found["additionalProperties"] = False
            found["required"] = list(found.get("properties", {}))
        return found

    return strict(schema)


def png_data_url(image: Image.Image) -> str:
    """The image as a data:image/png;base64 URL (lossless: the grader sees the generated pixels)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def needs_key(base_url: str) -> bool:
    """Whether OPENAI_API_KEY is required: for OpenAI's own API, yes; any other server may need none."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    return any(host == known or host.endswith("." + known) for known in KEY_HOSTS)


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(ALLOWED_OPTIONS))
    if unknown:
        raise VerifierConfigError(
            f"verifier_args.options: received unknown {', '.join(map(repr, unknown))}, allowed: {', '.join(ALLOWED_OPTIONS)}"
        )
    kind = options.get("response_format", "json_schema")
    if kind not in RESPONSE_FORMATS:
        raise VerifierConfigError(f"verifier_args.options.response_format: received {kind!r}, allowed: "
                                  f"{', '.join(RESPONSE_FORMATS)}")
    return options


def _base_url(options: dict[str, Any]) -> str:
    """options["base_url"], else $OPENAI_BASE_URL, else OpenAI's API; without a trailing slash."""
    source, value = "verifier_args.options.base_url", options.get("base_url")
    if value is None:
        source, value = BASE_URL_ENV, os.environ.get(BASE_URL_ENV, "").strip() or None
    if value is None:
        return DEFAULT_BASE_URL
    if not (isinstance(value, str) and value.startswith(("http://", "https://"))
            and urllib.parse.urlsplit(value).hostname):
        raise VerifierConfigError(f"{source}: received {value!r}, allowed: an http:// or https:// URL "
                                  "(such as http://127.0.0.1:8000/v1)")
    return value.rstrip("/")
