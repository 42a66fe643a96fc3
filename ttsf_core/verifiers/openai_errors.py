"""An OpenAI-compatible server's answers and failures as ttsf reads them: a completion's usage, and
every failure as one of the typed errors of `base` (429 with its wait, a refused key, an exhausted
quota, a refused response_format, ...). Imported when the verifier talks to a server, not when a config
naming it is validated or resolved."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import TYPE_CHECKING, Any

import openai
from openai.types.chat import ChatCompletion

from ttsf_core.verifiers.base import (
    RateLimitError,
    RetryableVerifierError,
    Usage,
    VerifierConfigError,
    VerifierError,
)
from ttsf_core.verifiers.remote import parse_retry_after

from ttsf_core.verifiers.openai_compat import API_KEY_ENV, RESPONSE_FORMATS

if TYPE_CHECKING:
    from ttsf_core.verifiers.openai_compat import OpenAIVerifier


def completion_usage(response: Any, model: str) -> tuple[Usage, ...]:
    """A completion's `usage` (prompt, completion and reasoning tokens) and the model that answered;
    nothing for an answer that is not a completion (a proxy's page is not billed)."""
    if not isinstance(response, ChatCompletion):
        return ()
    usage = response.usage
    if usage is None:
        return (Usage(model=model, model_version=response.model or None),)
    details = usage.completion_tokens_details
    reasoning = (details.reasoning_tokens or 0) if details is not None else 0
    return (Usage(model=model, model_version=response.model or None, prompt_tokens=usage.prompt_tokens or 0,
                  thought_tokens=reasoning, output_tokens=max(0, (usage.completion_tokens or 0) - reasoning)),)


def classify(error: BaseException, index: int | None, verifier: OpenAIVerifier) -> BaseException:
    """Any failure of one request as one of the typed errors of `base`: the caller decides on retries."""
    where = f"{verifier.base_url} request for image {index}" if index is not None else f"{verifier.base_url} request"
    if isinstance(error, (VerifierError, RetryableVerifierError)):
        return error
    if isinstance(error, openai.APIStatusError):
        return map_api_error(error, index, verifier)
    if isinstance(error, (asyncio.TimeoutError, openai.APITimeoutError)):
        return RetryableVerifierError(
            f"{where} had no complete answer within request_timeout_s={verifier.args.request_timeout_s:g} s")
    if isinstance(error, openai.APIConnectionError):  # refused, reset, cut short: the cause says which
        cause = error.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        return RetryableVerifierError(f"{where} failed in transit: {detail}")
    if isinstance(error, (json.JSONDecodeError, openai.APIResponseValidationError)):
        # A 200 whose body is not JSON, or not a completion: a proxy or a cut-off answer, not the model.
        return RetryableVerifierError(f"{where}: the answer was not a JSON completion ({type(error).__name__}: {error})")
    return RetryableVerifierError(f"{where} failed: {type(error).__name__}: {error}") \
        if isinstance(error, OSError) else error


def map_api_error(error: openai.APIStatusError, index: int | None, verifier: OpenAIVerifier) -> Exception:
    """An HTTP error answer as one of our typed errors (see the module docstring)."""
    status, code = error.status_code, error.code
    detail = f"{status}{f' {code}' if code else ''}: {_message(error)}"
    where = f"{verifier.base_url} request for image {index}" if index is not None else f"{verifier.base_url} request"
    if status == 429 and code == "insufficient_quota":
        return VerifierConfigError(
            f"{API_KEY_ENV} (verifier_args.name={verifier.name}): received a key whose account has no quota left "
            f"({detail}), allowed: a key of an account with credit (https://platform.openai.com/settings/organization/billing)",
            index)
    if status == 429:
        return RateLimitError(f"{where} was rate limited ({detail})", retry_after=retry_after_seconds(error))
    if status in (401, 403):
        received = "a key the server rejects" if verifier._api_key else \
            "nothing, and the server wants a key"
        return VerifierConfigError(
            f"{API_KEY_ENV} (verifier_args.name={verifier.name}): received {received} ({verifier.base_url} answered "
            f"{detail}), allowed: a valid API key for {verifier.base_url} in the environment", index)
    if status == 404:
        return VerifierConfigError(
            f"--verifier_model (verifier_args.model_name): received {verifier.model_name!r} ({verifier.base_url} "
            f"answered {detail}), allowed: a model this server serves (GET {verifier.base_url}/models lists them; "
            "an OpenAI-compatible base URL usually ends in /v1)", index)
    if status in (408, 409) or status >= 500:
        return RetryableVerifierError(f"{where} failed on the server side ({detail})", retry_after_seconds(error))
    if status in (400, 422) and _about_response_format(error):
        return VerifierConfigError(
            f"verifier_args.options.response_format: received {verifier.response_format!r} ({verifier.base_url} "
            f"refused it: {detail}), allowed: {', '.join(RESPONSE_FORMATS)} (json_object or none for servers "
            "without structured outputs)", index)
    return VerifierError(f"{where} was refused ({detail})", index)


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    return str(body)[:300] if body else error.message


def _about_response_format(error: openai.APIStatusError) -> bool:
    text = f"{error.param or ''} {_message(error)}".lower()
    return "response_format" in text or "json_schema" in text


_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def retry_after_seconds(error: openai.APIStatusError) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `Retry-After` (seconds or an HTTP date), or OpenAI's
    message ("Please try again in 20s"). When several say, the longest wait wins: retrying earlier than
    any asks only earns another 429."""
    headers = getattr(error.response, "headers", None) or {}
    found: list[float | None] = []
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        seconds = _number(milliseconds)
        found.append(None if seconds is None else seconds / 1000.0)
    found.append(parse_retry_after(headers.get("retry-after")))
    match = _TRY_AGAIN.search(_message(error))
    if match:
        found.append(float(match.group(1)) / (1000.0 if match.group(2).lower() == "ms" else 1.0))
    waits = [max(0.0, value) for value in found if value is not None]
    return max(waits) if waits else None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
