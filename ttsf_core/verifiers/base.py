"""The verifier protocol, the grades every verifier returns, and the one rubric schema of VLM graders.

A verifier declares the metrics it scores (`metrics`, and the one selection uses unless told
otherwise, `default_metric`). VLM graders (gemini, qwen, openai) score the six aspects of the rubric
(RUBRIC_METRICS, parsed through RubricGrades, each 0-10 with an explanation); scalar rewards
(clip, pickscore, image_reward, laion_aesthetic) score one metric of their own, on their own scale.
Either way the result for one image is a `Grades`: metric name -> (explanation, score).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import NamedTuple, Protocol, Sequence, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

RUBRIC_METRICS: tuple[str, ...] = (
    "accuracy_to_prompt",
    "creativity_and_originality",
    "visual_quality_and_realism",
    "consistency_and_cohesion",
    "emotional_or_thematic_resonance",
    "overall_score",
)
METRIC_NAMES = RUBRIC_METRICS  # the rubric's aspects (the metrics of every VLM grader)
RUBRIC_DEFAULT_METRIC = "overall_score"
SCORE_MIN = 0.0
SCORE_MAX = 10.0


class AspectGrade(BaseModel):
    """One metric: the reasoning or the measurement behind it, then the score (higher is better)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    explanation: str
    # Strict: a "high" or true is a broken answer, not a 1.0; NaN is no score at all.
    score: float = Field(strict=True, allow_inf_nan=False)


class Grades(RootModel[dict[str, AspectGrade]]):
    """A verifier's grades for one image: metric name -> AspectGrade (a rubric grader's six aspects,
    a scalar reward's one metric, an ensemble's every member's)."""

    model_config = ConfigDict(frozen=True)

    @field_validator("root")
    @classmethod
    def _not_empty(cls, value: dict[str, AspectGrade]) -> dict[str, AspectGrade]:
        if not value:
            raise ValueError("grades hold at least one metric")
        return value

    def score(self, metric: str) -> float:
        if metric not in self.root:
            raise ValueError(f"metric: received {metric!r}, allowed: {', '.join(self.root)}")
        return self.root[metric].score

    def scores(self) -> dict[str, float]:
        return {name: grade.score for name, grade in self.root.items()}

    def metrics(self) -> tuple[str, ...]:
        return tuple(self.root)


class RubricGrade(AspectGrade):
    """An aspect of the rubric, as a VLM must answer it: the explanation first, a score from 0 to 10."""

    score: float = Field(ge=SCORE_MIN, le=SCORE_MAX, strict=True, allow_inf_nan=False)


class RubricGrades(BaseModel):
    """The rubric's answer schema (structured output, and what a VLM's JSON answer must fit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    accuracy_to_prompt: RubricGrade
    creativity_and_originality: RubricGrade
    visual_quality_and_realism: RubricGrade
    consistency_and_cohesion: RubricGrade
    emotional_or_thematic_resonance: RubricGrade
    overall_score: RubricGrade

    def grades(self) -> Grades:
        return Grades({name: AspectGrade(**getattr(self, name).model_dump()) for name in RUBRIC_METRICS})


# The schema and the list must never drift apart.
if tuple(RubricGrades.model_fields) != RUBRIC_METRICS:  # pragma: no cover - import-time guard
    raise RuntimeError("RubricGrades fields and RUBRIC_METRICS disagree")


class Usage(BaseModel):
    """What verifier answers cost, as the API reported them: one entry per model that answered.

    `model` is the model asked, `model_version` the one the API says answered (an alias may move);
    `requests` the answers billed (an answer that did not fit the schema is billed too). Input tokens
    are `prompt_tokens` (text and media; `image_tokens` of them for images or video), output tokens are
    `output_tokens` (the answer) plus `thought_tokens` (thinking, billed as output)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    model_version: str | None = None
    requests: int = Field(1, ge=0)
    prompt_tokens: int = Field(0, ge=0)
    image_tokens: int = Field(0, ge=0)
    thought_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)

    @property
    def billed_model(self) -> str:
        """The model an answer is billed as: the one that answered, when the API said."""
        return self.model_version or self.model


_TOKEN_FIELDS = ("requests", "prompt_tokens", "image_tokens", "thought_tokens", "output_tokens")


def add_usage(*groups: Sequence[Usage]) -> tuple[Usage, ...]:
    """Several answers' usage as one: summed per (model asked, model that answered), in first-seen order."""
    totals: dict[tuple[str, str | None], dict[str, int]] = {}
    for group in groups:
        for usage in group:
            found = totals.setdefault((usage.model, usage.model_version), dict.fromkeys(_TOKEN_FIELDS, 0))
            for name in _TOKEN_FIELDS:
                found[name] += getattr(usage, name)
    return tuple(Usage(model=model, model_version=version, **counts) for (model, version), counts in totals.items())


def usage_of(result: object) -> tuple[Usage, ...]:
    """The usage a grading result carries: a Graded's, or a billed error's (`usage` attribute)."""
    if isinstance(result, Graded):
        return result.usage
    return tuple(getattr(result, "usage", ()) or ())


def with_usage(error: BaseException, usage: Sequence[Usage]) -> BaseException:
    """`error`, remembering that its answer was billed (an answer that did not fit the schema)."""
    error.usage = add_usage(usage_of(error), usage)
    return error


class Graded(NamedTuple):
    """One image's grades and what grading it cost (empty for verifiers that are not billed)."""

    grades: Grades
    usage: tuple[Usage, ...] = ()


def grades_from_scores(scores: dict[str, float], explanation: str) -> Grades:
    """Grades from plain numbers (for verifiers that measure rather than explain)."""
    for name, score in scores.items():
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"score of {name!r}: received {score!r}, allowed: a finite number")
    return Grades({name: AspectGrade(explanation=explanation, score=float(score)) for name, score in scores.items()})


def checked_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """The images a verifier is given, checked before anything is scored or sent: a list of PIL images
    of at least 1x1 pixels (ValueError naming the one that is not)."""
    if isinstance(images, (str, bytes, Image.Image)):
        raise ValueError(f"images: received {type(images).__name__}, allowed: a list of PIL images")
    found = list(images)
    for index, image in enumerate(found):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{index}]: received {type(image).__name__}, allowed: a PIL image")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"images[{index}]: received a {image.width}x{image.height} image, allowed: at least 1x1")
    return found


def verifier_metrics(verifier) -> tuple[str, ...]:
    """The metrics a verifier (class or instance) scores: its `metrics`, else the rubric's."""
    return tuple(getattr(verifier, "metrics", RUBRIC_METRICS))


def score_ceiling(verifier) -> float | None:
    """The highest score a verifier (class or instance) gives: its `score_max` (the rubric graders' and
    imagestats' 10), None for rewards without a top (CLIP, PickScore, ImageReward, aesthetics, ensembles)."""
    return getattr(verifier, "score_max", None)


def default_metric(verifier) -> str:
    """The metric that picks the best unless --choice_of_metric says otherwise."""
    found = getattr(verifier, "default_metric", None)
    if found:
        return found
    metrics = verifier_metrics(verifier)
    return RUBRIC_DEFAULT_METRIC if RUBRIC_DEFAULT_METRIC in metrics else metrics[0]


class VerifierError(Exception):
    """A verifier answer that cannot be used (malformed, out of range, missing). Not retryable."""

    def __init__(self, message: str, image_index: int | None = None):
        super().__init__(message)
        self.image_index = image_index


class VerifierConfigError(VerifierError):
    """The verifier cannot run as configured (missing key, wrong key, unknown model)."""


class UngradeableError(VerifierError):
    """The verifier will never grade this image (a safety block): asking again only spends quota."""


def with_context(error: BaseException, context: str | None, image_name: str | None = None,
                 index: int | None = None) -> BaseException:
    """The same kind of error (and usage), its message prefixed with `context` when one is given;
    "image <index>" (a verifier knows an image only by its place in its call) becomes
    "image <image_name>"."""
    message = str(error)
    if image_name is not None and index is not None:
        message = re.sub(rf"\bimage {index}\b", f"image {image_name}", message)
    if context:
        message = f"{context}: {message}"
    if isinstance(error, VerifierError):
        found = type(error)(message, error.image_index)
    elif isinstance(error, RetryableVerifierError):
        found = type(error)(message, error.retry_after)
    else:
        return error
    found.__cause__ = error.__cause__ or error
    if usage_of(error):
        found.usage = usage_of(error)
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


def all_graded(results: Sequence[Grades | BaseException]) -> list[Grades]:
    """A `score_partial` call's results as `score` returns them: every image's Grades, or the most
    telling of the failures raised."""
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        raise most_telling(failures)
    return list(results)


# Images per verifier call when a verifier does not say (`batch_size` attribute).
DEFAULT_BATCH_SIZE = 8


def verifier_batch_size(verifier: "Verifier") -> int:
    """How many images a verifier takes per call: its `batch_size` when it declares one."""
    size = getattr(verifier, "batch_size", None)
    return size if isinstance(size, int) and size >= 1 else DEFAULT_BATCH_SIZE


@runtime_checkable
class Verifier(Protocol):
    """Grades images for one prompt. Returns one Grades per image, in INPUT order. Optional class
    attributes: `metrics` (what it scores; the rubric's six aspects when absent), `default_metric`,
    `batch_size` (images per call), `reads_video` (then `score_videos_partial(prompt, mp4s)` grades
    videos whole: export_args.video_grading); optional methods `score_partial` (a result or an error per
    image) and `grade_partial(prompt, images, on_result)` (a Graded, grades with their usage, or an
    error per image, each passed to `on_result` as it arrives: billed graders)."""

    name: str

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]: ...


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
        return RubricGrades.model_validate_json(body).grades()
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


OnResult = Callable[[int, "Graded | BaseException"], None]


def grade_each(verifier: Verifier, prompt: str, images: list[Image.Image],
               on_result: OnResult | None = None) -> list[Graded | BaseException]:
    """One result per image, a Graded (grades and their usage) or an error. A verifier with
    `grade_partial(prompt, images, on_result)` reports usage and calls `on_result(index, result)` as
    each answer arrives (so it can be stored at once); any other verifier is scored as `score_each`
    does, without usage, and `on_result` is called for each result once they are all in."""
    partial = getattr(verifier, "grade_partial", None)
    if partial is not None:
        return list(partial(prompt, images, on_result))
    results = [result if isinstance(result, BaseException) else Graded(result)
               for result in score_each(verifier, prompt, images)]
    if on_result is not None:
        for index, result in enumerate(results):
            on_result(index, result)
    return results


def score_each(verifier: Verifier, prompt: str, images: list[Image.Image]) -> list[Grades | BaseException]:
    """One result per image, a Grades or an error. A verifier with `score_partial` says so itself; one
    without answers for all or fails for all, and then an invalid answer it names (image_index) is that
    image's alone: the others are only not graded yet (asked again)."""
    partial = getattr(verifier, "score_partial", None)
    if partial is not None:
        return list(partial(prompt, images))
    try:
        return list(verifier.score(prompt, images))
    except (VerifierError, RetryableVerifierError) as error:
        index = getattr(error, "image_index", None)
        named = isinstance(error, VerifierError) and not isinstance(error, VerifierConfigError)
        if not named or index is None or not 0 <= index < len(images):
            return [error] * len(images)
        bystander = RetryableVerifierError(f"not graded: image {index} of the same verifier call failed")
        return [error if i == index else bystander for i in range(len(images))]
