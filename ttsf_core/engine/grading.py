"""Grading a chunk of stored images: ask the verifier for those without a stored verdict, store each
verdict the moment it arrives (a kill loses no answer already paid for), ask again by ttsf_core.engine.retry's
policy, and count what it cost.

A video is graded through `export_args.grade_frames` evenly spaced frames (its grade is their mean per
metric, its usage their sum), or whole as its mp4 to a verifier that reads video. An answer that was
billed but could not be used (it did not fit the schema) is remembered and added to the usage of the
verdict its image finally gets, so a grade's usage is everything paid for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ttsf_core.config import DEFAULT_GRADE_FRAMES, RunConfig
from ttsf_core.progress import TALLY
from ttsf_core.engine.retry import backoff_delay, is_retryable, server_wait
from ttsf_core.storage.store import Store, StoredImage, Verdict
from ttsf_core.verifiers.base import (
    AspectGrade,
    Graded,
    Grades,
    RateLimitError,
    UngradeableError,
    Usage,
    Verifier,
    VerifierError,
    add_usage,
    grade_each,
    most_telling,
    usage_of,
    with_context,
)
from ttsf_core.video import grading_frames, is_video

LOGGER = logging.getLogger("ttsf.grade")
OnDone = Callable[[int, "Graded | BaseException"], None]


class GradeJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_index: int
    prompt: str
    search_round: int
    chunk: int
    images: list[StoredImage]
    by_path_verifier: bool = False  # intermediate images of a search on the denoising path (--path_verifier)


class GradeResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    verdicts: list[Verdict]
    asked: int  # images sent to the verifier by this job (the rest were already stored)
    attempts: int = 1
    rate_limited: int = 0  # attempts refused with a 429
    waited_s: float = 0.0  # time spent waiting between attempts
    usage: tuple[Usage, ...] = ()  # every answer this job was billed for (unusable ones included)
    cost_usd: float | None = None  # their price; None when a model has no price


@dataclass(frozen=True)
class RetryPolicy:
    """How often a grade job asks again (ttsf_core.engine.retry decides which failures qualify)."""

    retries: int = 6  # transient failures (429, 5xx, timeouts), after the first attempt
    backoff_s: float = 2.0  # the first wait; doubles, with jitter, never below Retry-After
    invalid_attempts: int = 4  # answers that do not fit the schema: then the image is ungradeable

    @classmethod
    def of(cls, config: RunConfig) -> "RetryPolicy":
        return cls(config.verifier_retries, config.verifier_retry_backoff_s, 1 + config.verifier_invalid_retries)


@dataclass
class _Spending:
    """What a job was billed for: in all, and per image still without a verdict."""

    paid: list[Usage]
    pending: dict[str, tuple[Usage, ...]]


def grade(store: Store, verifier: Verifier, job: GradeJob, policy: RetryPolicy = RetryPolicy(),
          sleep: Callable[[float], None] = time.sleep, logger: logging.Logger | logging.LoggerAdapter = LOGGER,
          pace: Callable[[int], None] | None = None) -> GradeResult:
    """Every image's verdict, in order, asking again (by ttsf_core.engine.retry's policy) until each has one
    or a failure is final. Between attempts only images still without a verdict are asked. `pace`, if
    given, is called before each attempt with the number of requests about to be sent (a shared
    requests-per-minute budget blocks there)."""
    attempt, refusals, waited = 1, [], 0.0
    spending = _Spending([], {})
    asked = sum(store.find_grade(job.prompt, image.sha256) is None for image in job.images)
    while True:
        before = len(refusals)
        if pace is not None:
            pace(sum(store.find_grade(job.prompt, image.sha256) is None for image in job.images))
        try:
            verdicts = grade_once(store, verifier, job, attempt >= policy.invalid_attempts, refusals, spending)
            usage = add_usage(spending.paid)
            return GradeResult(verdicts=verdicts, asked=asked, attempts=attempt, rate_limited=len(refusals),
                               waited_s=round(waited, 3), usage=usage, cost_usd=store.prices.cost(usage))
        except Exception as error:
            error.grading_stats = {"attempts": attempt, "rate_limited": len(refusals), "waited_s": round(waited, 3),
                                   "usage": add_usage(spending.paid)}
            if not is_retryable(error, attempt, policy.retries, policy.invalid_attempts):
                raise
            asked_for = max((server_wait(refusal) for refusal in refusals[before:]), default=server_wait(error))
            delay = max(backoff_delay(attempt, policy.backoff_s, error), asked_for)
            most = policy.invalid_attempts if type(error) is VerifierError else 1 + policy.retries
            logger.warning("%s%s; asking again in %.1f s%s (attempt %d of at most %d)", error,
                           _refused(refusals[before:]), delay, f" (the server asked for {asked_for:g} s)" if asked_for
                           else "", attempt + 1, most)
            sleep(delay)
            waited += delay
            attempt += 1


def _refused(refusals: list) -> str:
    return f" [{len(refusals)} requests of this chunk rate limited]" if len(refusals) > 1 else ""


def grade_once(store: Store, verifier: Verifier, job: GradeJob, final_invalid: bool = False,
               refusals: list | None = None, spending: _Spending | None = None) -> list[Verdict]:
    """One attempt: images without a stored verdict are sent to the verifier, each verdict stored as
    soon as its answer arrives. A safety block is a verdict (ungradeable) at once; an invalid answer
    becomes one when `final_invalid` (the last attempt). The answers that did arrive are kept even when
    another image of the chunk failed. Rate-limit refusals are appended to `refusals`."""
    spending = spending if spending is not None else _Spending([], {})
    verdicts = {image.sha256: store.find_grade(job.prompt, image.sha256) for image in job.images}
    missing = [image for image in job.images if verdicts[image.sha256] is None]
    failures: dict[int, BaseException] = {}

    def on_done(position: int, result: Graded | BaseException) -> None:
        image = missing[position]
        usage = usage_of(result)
        spending.paid.extend(usage)
        if isinstance(result, RateLimitError) and refusals is not None:
            refusals.append(result)
        verdict = _verdict(result, final_invalid, add_usage(spending.pending.get(image.sha256, ()), usage))
        if verdict is None:
            if usage:
                spending.pending[image.sha256] = add_usage(spending.pending.get(image.sha256, ()), usage)
            failures[position] = with_context(result, _describe(job), image.key, position)
            return
        verdicts[image.sha256] = store.write_grade(job.prompt, image.sha256, verdict)
        spending.pending.pop(image.sha256, None)
        TALLY.add(images_graded=1)

    if missing:
        score_media(verifier, job.prompt, missing, getattr(store, "grade_frames", DEFAULT_GRADE_FRAMES),
                    getattr(store, "whole_videos", False), on_done)
        if failures:
            raise most_telling([failures[position] for position in sorted(failures)])
    return [verdicts[image.sha256] for image in job.images]


def _verdict(result: Graded | BaseException, final_invalid: bool, usage: tuple[Usage, ...]) -> Verdict | None:
    if isinstance(result, Graded):
        return Verdict(grades=result.grades, usage=usage)
    if isinstance(result, UngradeableError) or (final_invalid and type(result) is VerifierError):
        return Verdict(ungradeable=f"{type(result).__name__}: {result}", usage=usage)
    return None


def _describe(job: GradeJob) -> str:
    return f"prompt {job.prompt_index} round {job.search_round}"


def score_media(verifier: Verifier, prompt: str, images: list[StoredImage], grade_frames: int,
                whole_videos: bool, on_done: OnDone) -> None:
    """Grade stored images and videos; `on_done(position, result)` is called once per item, as soon as
    its result is known. A video's frames are sent with the other images of the chunk; its result is
    their mean per metric (their usage summed), or the most telling error of a frame; or, with
    `whole_videos`, its mp4 goes to the verifier's `score_videos_partial`."""
    if whole_videos and any(is_video(image.path) for image in images):
        _score_whole_videos(verifier, prompt, images, grade_frames, on_done)
        return
    if not images:
        return
    flat: list[Image.Image] = []
    spans: list[tuple[int, list[int] | None]] = []
    for image in images:
        if is_video(image.path):
            indices, frames = grading_frames(image.path, grade_frames)
            spans.append((len(flat), indices))
            flat.extend(frames)
        else:
            spans.append((len(flat), None))
            flat.extend(load_images([image.path]))
    collector = _Frames(spans, on_done)
    results = grade_each(verifier, prompt, flat, collector.add)
    if len(results) != len(flat):
        raise VerifierError(f"verifier {verifier.name!r} returned {len(results)} results for {len(flat)} images")


class _Frames:
    """Collects a flat call's results back into items (an image, or a video's frames) and reports each
    item once all of its results are in."""

    def __init__(self, spans: list[tuple[int, list[int] | None]], on_done: OnDone):
        self.on_done = on_done
        self.owner: dict[int, int] = {}
        self.slots: list[list] = []
        self.spans = spans
        for position, (start, indices) in enumerate(spans):
            size = len(indices) if indices is not None else 1
            self.owner.update({start + offset: position for offset in range(size)})
            self.slots.append([None] * size)

    def add(self, flat_index: int, result: Graded | BaseException) -> None:
        position = self.owner[flat_index]
        start, indices = self.spans[position]
        slots = self.slots[position]
        slots[flat_index - start] = result
        if all(slot is not None for slot in slots):
            self.on_done(position, _combined(slots, start, position, indices))


def _combined(results: list, start: int, position: int, indices: list[int] | None) -> Graded | BaseException:
    usage = add_usage(*(usage_of(result) for result in results))
    errors = [_renumbered(result, start + offset, position, indices[offset] if indices is not None else None)
              for offset, result in enumerate(results) if isinstance(result, BaseException)]
    if errors:
        error = most_telling(errors)
        if usage and indices is not None:
            error.usage = usage  # every frame's billed answer, counted once
        return error
    if indices is None:
        return results[0]
    return Graded(average_grades([result.grades for result in results], indices), usage)


def _score_whole_videos(verifier: Verifier, prompt: str, images: list[StoredImage], grade_frames: int,
                        on_done: OnDone) -> None:
    """Videos sent as their mp4s in one `score_videos_partial` call, any image as usual."""
    video_positions = [position for position, image in enumerate(images) if is_video(image.path)]
    other_positions = [position for position, image in enumerate(images) if not is_video(image.path)]
    videos = [Path(images[position].path).read_bytes() for position in video_positions]
    graded = verifier.score_videos_partial(prompt, videos, lambda index, result: on_done(video_positions[index],
                                                                                          result))
    if len(graded) != len(videos):
        raise VerifierError(f"verifier {verifier.name!r} returned {len(graded)} results for {len(videos)} videos")
    score_media(verifier, prompt, [images[position] for position in other_positions], grade_frames, False,
                lambda index, result: on_done(other_positions[index], result))


def average_grades(grades: list[Grades], frames: list[int]) -> Grades:
    """A video's grades: each metric's mean over its graded frames, the explanations kept per frame."""
    metrics = [name for name in grades[0].metrics() if all(name in item.root for item in grades)]
    return Grades({name: AspectGrade(
        explanation=f"mean over frames {', '.join(map(str, frames))}: " + " | ".join(
            f"frame {frame}: {item.root[name].explanation}" for frame, item in zip(frames, grades, strict=True)),
        score=sum(item.root[name].score for item in grades) / len(grades),
    ) for name in metrics})


def _renumbered(error: BaseException, flat_index: int, position: int, frame: int | None) -> BaseException:
    """An error naming "image <flat index>" of the verifier call, renamed to the chunk's image (and frame)."""
    if flat_index == position and frame is None:
        return error
    return with_context(error, None, f"{position} (frame {frame})" if frame is not None else str(position), flat_index)


def load_images(paths: Sequence[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
