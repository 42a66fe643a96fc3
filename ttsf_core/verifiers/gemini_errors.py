"""Gemini's failures as the typed errors of `base` (the caller decides on retries), and the one-line
messages that say what to do: a rejected key, a model Google no longer serves, a setting the model
refuses, a safety block, an answer that is not JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.genai import errors as genai_errors
from google.genai import types

from ttsf_core.verifiers.base import (
    RateLimitError,
    RetryableVerifierError,
    UngradeableError,
    VerifierConfigError,
    VerifierError,
)
from ttsf_core.verifiers.gemini_models import API_KEY_ENV, DEFAULT_GEMINI_MODEL, known_model
from ttsf_core.verifiers.remote import TRANSIENT_ERRORS, parse_retry_after

MODELS_PAGE = "https://ai.google.dev/gemini-api/docs/models"
# Words of a 400 INVALID_ARGUMENT that refuses one of the settings ttsf sends, and the flag that sets it.
_SETTING_WORDS = {"thinking": ("--verifier_thinking_level", "verifier_args.thinking_level"),
                  "media_resolution": ("--verifier_media_resolution", "verifier_args.media_resolution"),
                  "media resolution": ("--verifier_media_resolution", "verifier_args.media_resolution")}


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


def map_api_error(error: genai_errors.APIError, index: int | None, model: str,
                  served: list[str] | None = None) -> Exception:
    """An SDK HTTP error as one of our typed errors. `served`: models the API lists today (to suggest
    instead of one it no longer serves)."""
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
        return VerifierConfigError(not_served_line(model, detail, served), index)
    if code == 400 and (setting := _refused_setting(error)) is not None:
        flag, field = setting
        return VerifierConfigError(f"{flag} ({field}): Gemini refused it for {model} ({detail}), allowed: a "
                                   f"setting {model} takes (leave {flag} unset for ttsf's default)", index)
    if code == 408 or isinstance(error, genai_errors.ServerError):
        return RetryableVerifierError(f"{where} failed on the server side ({detail})", retry_after_seconds(error))
    return VerifierError(f"{where} was refused ({detail})", index)


def not_served_line(model: str, detail: str, served: list[str] | None = None) -> str:
    """One line: Google does not serve `model`, and which models to choose instead (never `model`)."""
    choices = [name for name in (served or []) if name != model][:4]
    entry = known_model(model)
    fallback = [name for name in ((entry.replacement if entry else None), DEFAULT_GEMINI_MODEL) if name and name != model]
    choices = choices or list(dict.fromkeys(fallback))
    shown = " or ".join(f"--verifier_model {name}" for name in choices) or \
        f"a model from {MODELS_PAGE}"
    return (f"--verifier_model (verifier_args.model_name): received {model!r} (Google no longer serves it, or never "
            f"did: {detail}), allowed: a model Gemini serves today, e.g. {shown} ({MODELS_PAGE} lists them)")


def _refused_setting(error: genai_errors.APIError) -> tuple[str, str] | None:
    text = f"{error.message or ''} {json.dumps(error.details, default=str) if error.details else ''}".lower()
    if error.status not in (None, "INVALID_ARGUMENT"):
        return None
    return next((setting for word, setting in _SETTING_WORDS.items() if word in text), None)


def _is_bad_key(error: genai_errors.APIError) -> bool:
    # An invalid key is answered with 400 INVALID_ARGUMENT and reason API_KEY_INVALID, not 401.
    return error.code == 400 and any(d.get("reason") == "API_KEY_INVALID" for d in _error_details(error))


def answer_text(response: types.GenerateContentResponse, index: int) -> str:
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


def retry_after_seconds(error: genai_errors.APIError) -> float | None:
    """Seconds to wait, from the Retry-After header (seconds or HTTP date) or the body's RetryInfo.

    When both are present the longer wait wins: retrying earlier than either asks only earns
    another 429.
    """
    headers = getattr(error.response, "headers", None) or {}
    header = next((value for name, value in headers.items() if name.lower() == "retry-after"), None)
    found = [parse_retry_after(header), _retry_info_delay(error)]
    found = [value for value in found if value is not None]
    return max(found) if found else None


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
