"""The three kinds of work the search engine hands to an executor: generate, grade, finish.

Each job is a small serialisable model (Prefect shows them as task parameters) and each function
below does the work for any executor: the thread-pool one calls them directly, the Prefect tasks are
thin wrappers around them. All three are idempotent: work already in the store is found, not redone,
so a retried or repeated job pays only for what is missing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ttsf_core.candidates import Candidate
from ttsf_core.config import DEFAULT_GRADE_FRAMES, RunConfig
from ttsf_core.records import CandidateRecord, RoundRecord, RunLayout, relative_image_path, write_round_record
from ttsf_core.search import GradedCandidate, Strategy
from ttsf_core.retry import backoff_delay, is_retryable, server_wait
from ttsf_core.store import Recipe, Store, StoredImage, Verdict
from ttsf_core.video import grading_frames, is_video
from ttsf_core.verifiers.base import (
    AspectGrade,
    Grades,
    RateLimitError,
    RetryableVerifierError,
    UngradeableError,
    Verifier,
    VerifierError,
    most_telling,
    score_each,
    with_context,
)

if TYPE_CHECKING:
    from ttsf_core.generate import CandidateGenerator

LOGGER = logging.getLogger("ttsf.grade")
PNG_WRITERS = 2  # PNG encoding runs beside the next pipeline call, not after it


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_index: int
    prompt: str
    search_round: int


class GenerateJob(_Job):
    candidates: list[Candidate]

    @property
    def stage(self) -> str:
        return self.candidates[0].stage if self.candidates else "final"


class GradeJob(_Job):
    chunk: int
    images: list[StoredImage]


class GradeResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    verdicts: list[Verdict]
    asked: int  # images sent to the verifier by this job (the rest were already stored)
    attempts: int = 1
    rate_limited: int = 0  # attempts refused with a 429
    waited_s: float = 0.0  # time spent waiting between attempts


class FinishJob(_Job):
    graded: list[GradedCandidate]
    nfe: int


def generate(store: Store, generator: "CandidateGenerator", job: GenerateJob) -> list[StoredImage]:
    """Every candidate's stored image, in order. The candidates are cut into pipeline calls the same
    way every time (batched float math depends on a call's batch), and a call runs again whole when
    any of its images is missing, so an image resumed after a kill is the image a clean run makes;
    only missing images are written, each call's as soon as it finishes."""
    from ttsf_core.generate import plan_batches

    found = {c.key(): store.find_image(job.prompt, c) for c in job.candidates}
    fps = generator.frames_per_second() if getattr(generator, "video", False) else None  # videos: mp4 frame rate
    with ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="ttsf-png") as writers:
        writes = []
        for batch in plan_batches(job.candidates, generator.batch_size):
            if all(found[c.key()] is not None for c in batch):
                continue
            images = generator.generate_batch(job.prompt, batch)
            noises = tuple(c.noise for c in batch)
            for position, (candidate, image) in enumerate(zip(batch, images, strict=True)):
                if found[candidate.key()] is None:
                    recipe = Recipe(noise=candidate.noise, steps=candidate.steps, batch=noises, batch_position=position)
                    writes.append(writers.submit(store.write_image, job.prompt, candidate, image, recipe, fps))
        for write in writes:
            stored = write.result()
            found[stored.key] = stored
    return [found[c.key()] for c in job.candidates]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a grade job asks again (ttsf_core.retry decides which failures qualify)."""

    retries: int = 6  # transient failures (429, 5xx, timeouts), after the first attempt
    backoff_s: float = 2.0  # the first wait; doubles, with jitter, never below Retry-After
    invalid_attempts: int = 4  # answers that do not fit the schema: then the image is ungradeable

    @classmethod
    def of(cls, config: RunConfig) -> "RetryPolicy":
        return cls(config.verifier_retries, config.verifier_retry_backoff_s, 1 + config.verifier_invalid_retries)


def grade(store: Store, verifier: Verifier, job: GradeJob, policy: RetryPolicy = RetryPolicy(),
          sleep: Callable[[float], None] = time.sleep, logger: logging.Logger | logging.LoggerAdapter = LOGGER,
          pace: Callable[[int], None] | None = None) -> GradeResult:
    """Every image's verdict, in order, asking again (by ttsf_core.retry's policy) until each has one
    or a failure is final. Between attempts only images still without a verdict are asked. `pace`, if
    given, is called before each attempt with the number of requests about to be sent (a shared
    requests-per-minute budget blocks there)."""
    attempt, refusals, waited = 1, [], 0.0
    asked = sum(store.find_grade(job.prompt, image.sha256) is None for image in job.images)
    while True:
        before = len(refusals)
        if pace is not None:
            pace(sum(store.find_grade(job.prompt, image.sha256) is None for image in job.images))
        try:
            verdicts = grade_once(store, verifier, job, attempt >= policy.invalid_attempts, refusals)
            return GradeResult(verdicts=verdicts, asked=asked, attempts=attempt, rate_limited=len(refusals),
                               waited_s=round(waited, 3))
        except Exception as error:
            error.grading_stats = {"attempts": attempt, "rate_limited": len(refusals), "waited_s": round(waited, 3)}
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
               refusals: list | None = None) -> list[Verdict]:
    """One attempt: images without a stored verdict are sent to the verifier, each verdict stored as it
    is known. A safety block is a verdict (ungradeable) at once; an invalid answer becomes one when
    `final_invalid` (the last attempt). A verifier may offer `score_partial` (a result or an error per
    image): then the answers that did arrive are kept even when another image of the chunk failed.
    Rate-limit refusals are appended to `refusals`."""
    verdicts = {image.sha256: store.find_grade(job.prompt, image.sha256) for image in job.images}
    missing = [image for image in job.images if verdicts[image.sha256] is None]
    if missing:
        results = _score_media(verifier, job.prompt, missing, getattr(store, "grade_frames", DEFAULT_GRADE_FRAMES),
                               getattr(store, "whole_videos", False))
        failures = []
        for position, (image, result) in enumerate(zip(missing, results, strict=True)):
            verdict = _verdict(result, final_invalid)
            if isinstance(result, RateLimitError) and refusals is not None:
                refusals.append(result)
            if verdict is None:
                failures.append(with_context(result, _describe(job), image.key, position))
                continue
            store.write_grade(job.prompt, image.sha256, verdict)
            verdicts[image.sha256] = verdict
        if failures:
            raise most_telling(failures)
    return [verdicts[image.sha256] for image in job.images]


def _verdict(result: Grades | BaseException, final_invalid: bool) -> Verdict | None:
    if isinstance(result, Grades):
        return Verdict(grades=result)
    if isinstance(result, UngradeableError) or (final_invalid and type(result) is VerifierError):
        return Verdict(ungradeable=f"{type(result).__name__}: {result}")
    return None


def _describe(job: _Job) -> str:
    return f"prompt {job.prompt_index} round {job.search_round}"


def _score(verifier: Verifier, prompt: str, images: list[Image.Image]) -> list[Grades | BaseException]:
    results = score_each(verifier, prompt, images)
    if len(results) != len(images):
        raise VerifierError(f"verifier {verifier.name!r} returned {len(results)} results for {len(images)} images")
    return results


def _score_media(verifier: Verifier, prompt: str, images: list[StoredImage], grade_frames: int,
                 whole_videos: bool = False) -> list[Grades | BaseException]:
    """One result per stored image or video. A video is graded through `grade_frames` evenly spaced
    frames, all sent with the other images of the chunk, and its grade is their mean per metric (an
    error on any frame is the video's, the most telling one first); or, `whole_videos`, as its mp4."""
    if whole_videos and any(is_video(image.path) for image in images):
        return _score_whole_videos(verifier, prompt, images, grade_frames)
    if not images:
        return []
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
    results = _score(verifier, prompt, flat)
    combined: list[Grades | BaseException] = []
    for position, (start, indices) in enumerate(spans):
        part = results[start : start + (len(indices) if indices is not None else 1)]
        errors = [_renumbered(result, start + offset, position, indices[offset] if indices is not None else None)
                  for offset, result in enumerate(part) if isinstance(result, BaseException)]
        if errors:
            combined.append(most_telling(errors))
        else:
            combined.append(part[0] if indices is None else average_grades(part, indices))
    return combined


def _score_whole_videos(verifier: Verifier, prompt: str, images: list[StoredImage],
                        grade_frames: int) -> list[Grades | BaseException]:
    """Videos sent as their mp4s in one `score_videos_partial` call, any image as usual; input order."""
    videos = [Path(image.path).read_bytes() for image in images if is_video(image.path)]
    graded = verifier.score_videos_partial(prompt, videos)
    if len(graded) != len(videos):
        raise VerifierError(f"verifier {verifier.name!r} returned {len(graded)} results for {len(videos)} videos")
    from_videos = iter(graded)
    others = iter(_score_media(verifier, prompt, [image for image in images if not is_video(image.path)], grade_frames))
    return [next(from_videos) if is_video(image.path) else next(others) for image in images]


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
    name = f"{position} (frame {frame})" if frame is not None else str(position)
    if flat_index == position and frame is None:
        return error
    message = re.sub(rf"\bimage {flat_index}\b", f"image {name}", str(error))
    if isinstance(error, VerifierError):
        renamed = type(error)(message, error.image_index)
    elif isinstance(error, RetryableVerifierError):
        renamed = type(error)(message, error.retry_after)
    else:
        return error
    renamed.__cause__ = error.__cause__ or error
    return renamed


def finish(config: RunConfig, layout: RunLayout, strategy: Strategy, job: FinishJob) -> RoundRecord:
    """Select the best gradeable final-stage candidate and write the round's record (last: it marks
    the round done). A round none of whose final images could be graded is recorded without a best."""
    metric = config.verifier_args.choice_of_metric
    final = [item for item in job.graded if item.candidate.stage == "final"]
    best_final = strategy.selector.best([item.grades for item in final])
    best = None if best_final is None else next(i for i, item in enumerate(job.graded) if item is final[best_final])
    record_path = layout.record_path(job.prompt, job.search_round)
    scores = _stage_scores(strategy, job.graded)
    candidates = [_candidate_record(index, item, record_path, score)
                  for index, (item, score) in enumerate(zip(job.graded, scores, strict=True))]
    chosen = candidates[best] if best is not None else None
    record = RoundRecord(
        prompt=job.prompt,
        prompt_index=job.prompt_index,
        search_round=job.search_round,
        num_noises=len({item.candidate.noise for item in job.graded}),
        best_noise_seed=chosen.seed if chosen else None,
        best_score=chosen.score if chosen else None,
        choice_of_metric=metric,
        best_img_path=chosen.img_path if chosen else None,
        best_index=best,
        config_hash=config.identity_hash(),
        candidates=candidates,
        search_method=strategy.name,
        best_noise=chosen.noise if chosen else None,
        nfe=job.nfe,
        ungradeable=sum(item.grades is None for item in job.graded),
        **strategy.round_fields(final, best_final),
    )
    write_round_record(record_path, record)
    return record


def _stage_scores(strategy: Strategy, graded: list[GradedCandidate]) -> list[float | None]:
    """Each candidate's score, compared within its own stage (an ensemble's ranks are relative)."""
    scores: list[float | None] = [None] * len(graded)
    for stage in ("draft", "final"):
        positions = [i for i, item in enumerate(graded) if item.candidate.stage == stage]
        for position, score in zip(positions, strategy.selector.scores([graded[i].grades for i in positions])):
            scores[position] = score
    return scores


def _candidate_record(index: int, item: GradedCandidate, record_path, score: float | None) -> CandidateRecord:
    candidate, recipe = item.candidate, item.image.recipe
    return CandidateRecord(
        index=index, seed=candidate.noise.seed, noise=candidate.noise, steps=candidate.steps,
        stage=candidate.stage, role=candidate.role, img_path=relative_image_path(record_path, item.image.path),
        image_sha256=item.image.sha256, score=score, grades=item.grades, ungradeable=item.ungradeable,
        batch=recipe.batch, batch_position=recipe.batch_position,
    )


def load_images(paths: Sequence[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
