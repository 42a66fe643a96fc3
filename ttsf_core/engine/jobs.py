"""The three kinds of work the search engine hands to an executor: generate, grade, finish.

Each job is a small serialisable model (Prefect shows them as task parameters) and each function
below does the work for any executor: the thread-pool one calls them directly, the Prefect tasks are
thin wrappers around them. All three are idempotent: work already in the store is found, not redone,
so a retried or repeated job pays only for what is missing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ttsf_core.candidates import Candidate
from ttsf_core.engine.grading import GradeJob, GradeResult, RetryPolicy, grade, grade_once, load_images
from ttsf_core.progress import TALLY
from ttsf_core.resolved import ResolvedRun
from ttsf_core.storage.records import CandidateRecord, RoundRecord, RunLayout, relative_image_path, write_round_record
from ttsf_core.search import GradedCandidate, Strategy
from ttsf_core.storage.store import Recipe, Store, StoredImage

if TYPE_CHECKING:
    from ttsf_core.engine.generate import CandidateGenerator

__all__ = ["SelectJob", "GenerateJob", "GradeJob", "GradeResult", "RetryPolicy", "generate", "grade",
           "grade_once", "load_images", "select"]
PNG_WRITERS = 2  # PNG encoding runs beside the next pipeline call, not after it


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_index: int
    prompt: str
    search_round: int


class GenerateJob(_Job):
    candidates: list[Candidate]
    # Candidates on a denoising path: the round's stages before this one, to rebuild a parent's state
    # that is not stored (ttsf_core.engine.path_generation).
    earlier: list[list[Candidate]] = []
    # The most candidates a pipeline call holds (None: batch_size_for_img_gen; FK steering: its K), and
    # that of each earlier stage.
    batch_size: int | None = None
    earlier_batch_sizes: list[int] = []

    @property
    def stage(self) -> str:
        return self.candidates[0].stage if self.candidates else "final"


class SelectJob(_Job):
    graded: list[GradedCandidate]
    nfe: int


def generate(store: Store, generator: "CandidateGenerator", job: GenerateJob) -> list[StoredImage]:
    """Every candidate's stored image, in order. The candidates are cut into pipeline calls the same
    way every time (batched float math depends on a call's batch), and a call runs again whole when
    any of its images is missing, so an image resumed after a kill is the image a clean run makes;
    only missing images are written, each call's as soon as it finishes."""
    from ttsf_core.engine.generate import plan_batches

    found = {c.key(): store.find_image(job.prompt, c) for c in job.candidates}
    fps = generator.frames_per_second() if getattr(generator, "video", False) else None  # videos: mp4 frame rate
    on_path = bool(job.candidates) and job.candidates[0].path is not None
    batch_size = job.batch_size or generator.batch_size
    if on_path and any(image is None for image in found.values()):
        from ttsf_core.engine.path_generation import prepare_stage

        sizes = {_stage_key(stage): size for stage, size in zip(job.earlier, job.earlier_batch_sizes)}
        prepare_stage(generator, job.prompt, job.candidates, store, job.earlier,
                      lambda stage: sizes.get(_stage_key(stage)) or generator.batch_size)
    with ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="ttsf-png") as writers:
        writes = []
        for batch in plan_batches(job.candidates, batch_size):
            if all(found[c.key()] is not None for c in batch):
                continue
            images = generator.generate_batch(job.prompt, batch, store if on_path else None)
            noises = tuple(c.noise for c in batch)
            for position, (candidate, image) in enumerate(zip(batch, images, strict=True)):
                if found[candidate.key()] is None:
                    recipe = Recipe(noise=candidate.noise, steps=candidate.steps, batch=noises, batch_position=position,
                                    path=candidate.path)
                    writes.append(write := writers.submit(store.write_image, job.prompt, candidate, image, recipe, fps))
                    write.add_done_callback(_tally_written)
        for write in writes:
            stored = write.result()
            found[stored.key] = stored
    return [found[c.key()] for c in job.candidates]


def _stage_key(stage) -> tuple:
    return tuple(candidate.key() for candidate in stage)


def _tally_written(write) -> None:
    if write.exception() is None:
        TALLY.add(images_generated=1)


def select(run: ResolvedRun, layout: RunLayout, strategy: Strategy, job: SelectJob) -> RoundRecord:
    """Select the best gradeable final-stage candidate and write the round's record (last: it marks
    the round done). A round none of whose final images could be graded is recorded without a best."""
    metric = run.metric
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
        config_hash=run.identity_hash,
        candidates=candidates,
        search_method=strategy.name,
        best_noise=chosen.noise if chosen else None,
        nfe=job.nfe,
        ungradeable=sum(item.grades is None for item in job.graded),
        verifier_calls=sum(not _by_path_verifier(run, item) for item in job.graded),
        path_verifier_calls=sum(_by_path_verifier(run, item) for item in job.graded),
        **strategy.round_fields(final, best_final, job.graded),
    )
    write_round_record(record_path, record)
    if any(item.candidate.path is not None for item in job.graded):
        Store(run).remove_states(job.prompt, [item.candidate for item in job.graded])
    return record


def _by_path_verifier(run: ResolvedRun, item: GradedCandidate) -> bool:
    return item.candidate.stage == "path" and run.path_run is not None


def _stage_scores(strategy: Strategy, graded: list[GradedCandidate]) -> list[float | None]:
    """Each candidate's score, compared within its own stage (an ensemble's ranks are relative) by the
    grades that judged it (intermediate images: the path verifier's, when one is set)."""
    scores: list[float | None] = [None] * len(graded)
    stages: dict[tuple, list[int]] = {}
    for index, item in enumerate(graded):
        candidate = item.candidate
        stages.setdefault((candidate.stage, candidate.path.stop if candidate.path else None), []).append(index)
    for (stage, _), positions in stages.items():
        selector = strategy.selector_for_path() if stage == "path" else strategy.selector
        for position, score in zip(positions, selector.scores([graded[i].grades for i in positions])):
            scores[position] = score
    return scores


def _candidate_record(index: int, item: GradedCandidate, record_path, score: float | None) -> CandidateRecord:
    candidate, recipe = item.candidate, item.image.recipe
    return CandidateRecord(
        index=index, seed=candidate.noise.seed, noise=candidate.noise, steps=candidate.steps,
        stage=candidate.stage, role=candidate.role, path=candidate.path, parent=candidate.parent,
        weight=candidate.weight, img_path=relative_image_path(record_path, item.image.path),
        image_sha256=item.image.sha256, score=score, grades=item.grades, ungradeable=item.ungradeable,
        batch=recipe.batch, batch_position=recipe.batch_position, usage=item.usage, cost_usd=item.cost_usd,
    )
