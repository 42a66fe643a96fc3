"""The one verifier protocol, the one grading schema and the one list of metric names."""

from __future__ import annotations

import json
import re
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

METRIC_NAMES: tuple[str, ...] = (
    "accuracy_to_prompt",
    "creativity_and_originality",
    "visual_quality_and_realism",
    "consistency_and_cohesion",
    "emotional_or_thematic_resonance",
    "overall_score",
)
SCORE_MIN = 0.0
SCORE_MAX = 10.0


class AspectGrade(BaseModel):
    """One aspect: the reasoning first (so a model commits to it before scoring), then the score."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    explanation: str
    # Strict: a "high" or true is a broken answer, not a 1.0; NaN is no score at all.
    score: float = Field(ge=SCORE_MIN, le=SCORE_MAX, strict=True, allow_inf_nan=False)


class Grades(BaseModel):
    """A verifier's grades for one image, one field per metric in METRIC_NAMES."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    accuracy_to_prompt: AspectGrade
    creativity_and_originality: AspectGrade
    visual_quality_and_realism: AspectGrade
    consistency_and_cohesion: AspectGrade
    emotional_or_thematic_resonance: AspectGrade
    overall_score: AspectGrade

    def score(self, metric: str) -> float:
        if metric not in METRIC_NAMES:
            raise ValueError(f"metric: received {metric!r}, allowed: {', '.join(METRIC_NAMES)}")
        return getattr(self, metric).score

    def scores(self) -> dict[str, float]:
        return {name: getattr(self, name).score for name in METRIC_NAMES}


# The schema and the list must never drift apart.
if tuple(Grades.model_fields) != METRIC_NAMES:  # pragma: no cover - import-time guard
    raise RuntimeError("Grades fields and METRIC_NAMES disagree")


class VerifierError(Exception):
    """A verifier answer that cannot be used (malformed, out of range, missing). Not retryable."""

    def __init__(self, message: str, image_index: int | None = None):
        super().__init__(message)
        self.image_index = image_index


class VerifierConfigError(VerifierError):
    """The verifier cannot run as configured (missing key, wrong key, unknown model)."""


class UngradeableError(VerifierError):
    """The verifier will never grade this image (a safety block): asking again only spends quota."""


def with_context(error: BaseException, context: str, image_name: str | None = None,
                 index: int | None = None) -> BaseException:
    """The same kind of error, its message prefixed with `context`; "image <index>" (a verifier knows
    an image only by its place in its call) becomes "image <image_name>"."""
    message = str(error)
    if image_name is not None and index is not None:
        message = re.sub(rf"\bimage {index}\b", f"image {image_name}", message)
    if isinstance(error, VerifierError):
        found = type(error)(f"{context}: {message}", error.image_index)
    elif isinstance(error, RetryableVerifierError):
        found = type(error)(f"{context}: {message}", error.retry_after)
    else:
        return error
    found.__cause__ = error.__cause__ or error
    return found


class RetryableVerifierError(Exception):
    """A transient failure (5xx, timeout, connection): the same request may succeed later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitError(RetryableVerifierError):
    """HTTP 429: wait at least `retry_after` seconds (from the server's Retry-After) before retrying."""


def most_telling(failures: Sequence[BaseException]) -> BaseException:
    """Of several failures, the one the user must act on: configuration first, retryable last."""
    for kind in (VerifierConfigError, UngradeableError, VerifierError, RateLimitError, RetryableVerifierError):
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    return failures[0]


# Images per verifier call when a verifier does not say (`batch_size` attribute).
DEFAULT_BATCH_SIZE = 8


def verifier_batch_size(verifier: "Verifier") -> int:
    """How many images a verifier takes per call: its `batch_size` when it declares one."""
    size = getattr(verifier, "batch_size", None)
    return size if isinstance(size, int) and size >= 1 else DEFAULT_BATCH_SIZE


@runtime_checkable
class Verifier(Protocol):
    """Grades images for one prompt. Returns one Grades per image, in INPUT order."""

    name: str

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]: ...


def grades_from_scores(scores: dict[str, float], explanation: str) -> Grades:
    """Build Grades from plain numbers (for verifiers that measure rather than explain)."""
    return Grades(**{m: AspectGrade(explanation=explanation, score=scores[m]) for m in METRIC_NAMES})


def parse_grades(text: str | None, image_index: int | None = None) -> Grades:
    """Parse a model's JSON answer into Grades, or raise VerifierError naming the image.

    Accepts the bare object, a ```json fenced block, or an object with chatter around it; each
    aspect as {"explanation": ..., "score": ...}. Anything else is an error, never a None.
    """
    where = f"image {image_index}" if image_index is not None else "image"
    if not text or not text.strip():
        raise VerifierError(f"verifier answer for {where} is empty", image_index)
    body = _json_object_text(text)
    if body is None:
        raise VerifierError(f"verifier answer for {where} holds no JSON object: {text[:200]!r}", image_index)
    try:
        return Grades.model_validate_json(body)
    except ValueError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in getattr(error, "errors", lambda: [])()
        ) or str(error)
        raise VerifierError(f"verifier answer for {where} does not fit the grading schema: {problems}", image_index) from None


def _json_object_text(text: str) -> str | None:
    """The largest JSON object in the text (chatter may hold braces of its own), re-serialised."""
    decoder = json.JSONDecoder()
    found = None
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict) and (found is None or len(value) > len(found)):
            found = value
        start = text.find("{", end)
    if found is None:
        start = text.find("{")
        return text[start : text.rfind("}") + 1] if start != -1 and text.rfind("}") > start else None
    return json.dumps(found)
