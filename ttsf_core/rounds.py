"""One search round in three steps - generate, grade, finish - shared by every runner.

The direct runner (ttsf_core.runner) and the Prefect tasks call these same functions, so both
produce the same files, records and selections.
"""

from __future__ import annotations

from dataclasses import dataclass
from PIL import Image

from ttsf_core.config import RunConfig
from ttsf_core.generate import CandidateGenerator
from ttsf_core.records import CandidateRecord, file_sha256, RoundRecord, RunLayout, write_png, write_round_record
from ttsf_core.search import SEARCH_METHODS, select_best
from ttsf_core.verifiers.base import Grades, Verifier


@dataclass(frozen=True)
class WrittenImage:
    seed: int
    path: str
    sha256: str


def plan(config: RunConfig, prompt: str, search_round: int, previous: RoundRecord | None = None) -> list[int]:
    return SEARCH_METHODS[config.search_args.search_method](config, prompt, search_round, previous)


def generate_candidates(
    generator: CandidateGenerator, layout: RunLayout, prompt: str, search_round: int, seeds: list[int]
) -> tuple[list[WrittenImage], list[Image.Image]]:
    """Generate and atomically write one PNG per seed; return what was written and the images."""
    images = generator.generate(prompt, seeds)
    return write_candidates(layout, prompt, search_round, seeds, images), images


def write_candidates(
    layout: RunLayout, prompt: str, search_round: int, seeds: list[int], images: list[Image.Image]
) -> list[WrittenImage]:
    paths = layout.round_image_paths(prompt, search_round, seeds)
    return [
        WrittenImage(seed=seed, path=str(path), sha256=write_png(path, image))
        for seed, path, image in zip(seeds, paths, images, strict=True)
    ]


def reuse_candidates(
    layout: RunLayout, prompt: str, search_round: int, seeds: list[int]
) -> tuple[list[WrittenImage], list[Image.Image]] | None:
    """The round's images when every one is already on disk (written atomically, so complete)."""
    paths = layout.round_image_paths(prompt, search_round, seeds)
    if not all(path.is_file() for path in paths):
        return None
    written = [WrittenImage(seed=seed, path=str(path), sha256=file_sha256(path)) for seed, path in zip(seeds, paths)]
    return written, load_images(written)


def load_images(written: list[WrittenImage]) -> list[Image.Image]:
    images = []
    for item in written:
        with Image.open(item.path) as image:
            images.append(image.convert("RGB"))
    return images


def grade(verifier: Verifier, prompt: str, images: list[Image.Image]) -> list[Grades]:
    grades = verifier.score(prompt, images)
    if len(grades) != len(images):
        raise ValueError(f"verifier {verifier.name!r} returned {len(grades)} grades for {len(images)} images")
    return grades


def finish_round(
    config: RunConfig,
    layout: RunLayout,
    prompt_index: int,
    prompt: str,
    search_round: int,
    written: list[WrittenImage],
    grades: list[Grades],
) -> RoundRecord:
    """Select the best candidate and write the round's record (atomically, last: it marks the round done)."""
    metric = config.verifier_args.choice_of_metric
    best = select_best(grades, metric)
    candidates = [
        CandidateRecord(index=i, seed=w.seed, img_path=w.path, image_sha256=w.sha256, score=g.score(metric), grades=g)
        for i, (w, g) in enumerate(zip(written, grades, strict=True))
    ]
    record = RoundRecord(
        prompt=prompt,
        prompt_index=prompt_index,
        search_round=search_round,
        num_noises=len(written),
        best_noise_seed=written[best].seed,
        best_score=candidates[best].score,
        choice_of_metric=metric,
        best_img_path=written[best].path,
        best_index=best,
        config_hash=config.identity_hash(),
        candidates=candidates,
    )
    write_round_record(layout.record_path(prompt, search_round), record)
    return record
