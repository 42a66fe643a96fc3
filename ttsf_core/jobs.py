"""The three kinds of work the search engine hands to an executor: generate, grade, finish.

Each job is a small serialisable model (Prefect shows them as task parameters) and each function
below does the work for any executor: the thread-pool one calls them directly, the Prefect tasks are
thin wrappers around them. All three are idempotent: work already in the store is found, not redone,
so a retried or repeated job pays only for what is missing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ttsf_core.candidates import Candidate
from ttsf_core.config import RunConfig
from ttsf_core.generate import CandidateGenerator
from ttsf_core.records import CandidateRecord, RoundRecord, RunLayout, relative_image_path, write_round_record
from ttsf_core.search import GradedCandidate, Strategy, select_best
from ttsf_core.store import Recipe, Store, StoredImage
from ttsf_core.verifiers.base import Grades, Verifier, VerifierError, most_telling

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
    grades: list[Grades]
    asked: int  # images sent to the verifier by this job (the rest were already stored)


class FinishJob(_Job):
    graded: list[GradedCandidate]
    nfe: int


def generate(store: Store, generator: CandidateGenerator, job: GenerateJob) -> list[StoredImage]:
    """Every candidate's stored image, in order; missing ones generated, each batch written as it finishes."""
    found = {c.key(): store.find_image(job.prompt, c) for c in job.candidates}
    missing = [c for c in job.candidates if found[c.key()] is None]
    with ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="ttsf-png") as writers:
        writes = []
        for batch, images in generator.batches(job.prompt, missing):
            noises = tuple(c.noise for c in batch)
            for position, (candidate, image) in enumerate(zip(batch, images, strict=True)):
                recipe = Recipe(noise=candidate.noise, steps=candidate.steps, batch=noises, batch_position=position)
                writes.append(writers.submit(store.write_image, job.prompt, candidate, image, recipe))
        for write in writes:
            stored = write.result()
            found[stored.key] = stored
    return [found[c.key()] for c in job.candidates]


def grade(store: Store, verifier: Verifier, job: GradeJob) -> GradeResult:
    """Every image's grades, in order; those without a stored grade asked, each stored once it arrives.
    A verifier may offer `score_partial` (one result or error per image): then the grades that did
    arrive are kept even when another image of the chunk failed."""
    grades = {image.sha256: store.find_grade(job.prompt, image.sha256) for image in job.images}
    missing = [image for image in job.images if grades[image.sha256] is None]
    if missing:
        pictures = load_images([image.path for image in missing])
        results = _score(verifier, job.prompt, pictures)
        failures = []
        for image, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(result)
                continue
            store.write_grade(job.prompt, image.sha256, result)
            grades[image.sha256] = result
        if failures:
            raise most_telling(failures)
    return GradeResult(grades=[grades[image.sha256] for image in job.images], asked=len(missing))


def _score(verifier: Verifier, prompt: str, images: list[Image.Image]) -> list[Grades | BaseException]:
    partial = getattr(verifier, "score_partial", None)
    results = partial(prompt, images) if partial is not None else verifier.score(prompt, images)
    if len(results) != len(images):
        raise VerifierError(f"verifier {verifier.name!r} returned {len(results)} results for {len(images)} images")
    return list(results)


def finish(config: RunConfig, layout: RunLayout, strategy: Strategy, job: FinishJob) -> RoundRecord:
    """Select the best final-stage candidate and write the round's record (last: it marks the round done)."""
    metric = config.verifier_args.choice_of_metric
    final = [item for item in job.graded if item.candidate.stage == "final"]
    best_final = select_best([item.grades for item in final], metric)
    best = next(i for i, item in enumerate(job.graded) if item is final[best_final])
    record_path = layout.record_path(job.prompt, job.search_round)
    candidates = [_candidate_record(index, item, record_path, metric) for index, item in enumerate(job.graded)]
    record = RoundRecord(
        prompt=job.prompt,
        prompt_index=job.prompt_index,
        search_round=job.search_round,
        num_noises=len({item.candidate.noise for item in job.graded}),
        best_noise_seed=candidates[best].seed,
        best_score=candidates[best].score,
        choice_of_metric=metric,
        best_img_path=candidates[best].img_path,
        best_index=best,
        config_hash=config.identity_hash(),
        candidates=candidates,
        search_method=strategy.name,
        best_noise=candidates[best].noise,
        nfe=job.nfe,
        **strategy.round_fields(final, best_final),
    )
    write_round_record(record_path, record)
    return record


def _candidate_record(index: int, item: GradedCandidate, record_path, metric: str) -> CandidateRecord:
    candidate, recipe = item.candidate, item.image.recipe
    return CandidateRecord(
        index=index, seed=candidate.noise.seed, noise=candidate.noise, steps=candidate.steps,
        stage=candidate.stage, role=candidate.role, img_path=relative_image_path(record_path, item.image.path),
        image_sha256=item.image.sha256, score=item.grades.score(metric), grades=item.grades,
        batch=recipe.batch, batch_position=recipe.batch_position,
    )


def load_images(paths: Sequence[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
